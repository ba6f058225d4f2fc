"""ServeConfig: every setting of the service in one validated dataclass (the CLI, Ray and tests build it)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "GPT2_EXPORT_API_KEY"
DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: a model server is not public by accident


@dataclass(frozen=True)
class ServeConfig:
    """Where the model is, where to listen, and the bounds that keep the server answering under load."""

    folder: Path
    host: str = DEFAULT_HOST
    port: int = 8000
    max_batch: int = 8  # requests decoded together (cache slots)
    # Longest prompt + completion served; None: the model's n_positions. The batch cache holds max_batch rows of
    # this many positions from start, so a short-context service needs a fraction of the memory.
    max_model_len: int | None = None
    max_queue: int = 64  # requests waiting for a slot; past it, 429 with Retry-After
    api_key: str | None = None  # every route but /health needs `Authorization: Bearer <api_key>`
    model_name: str | None = None  # the id /v1/models lists and requests may name; default: the folder's name
    provider: str = "cpu"
    threads: int | None = None  # ONNX Runtime intra-op threads (default: every core)
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_n: int = 16  # completions per prompt (`n`)
    max_prompts: int = 32  # prompts per request (a list of texts or of token-id lists)
    default_max_tokens: int = 16  # OpenAI's default when a request gives no max_tokens
    drain_timeout: float = 30.0  # SIGTERM: seconds to let in-flight requests finish before cancelling them
    # Idle keep-alive connections close after this many seconds. Longer than the idle timeouts of common proxies and
    # load balancers (60 s on AWS ALB) so the client side closes first: a server closing a connection the client is
    # just reusing makes that request fail with "connection reset" (uvicorn's default of 5 s did, under load).
    keep_alive_timeout: float = 75.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        for name, minimum in (("max_batch", 1), ("max_queue", 0), ("max_body_bytes", 1024), ("max_n", 1),
                              ("max_prompts", 1), ("default_max_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} is not a TCP port: use an integer 0-65535 (0 picks a free one)")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host={self.host!r} must be an address such as 127.0.0.1 or 0.0.0.0")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int)
                                               or isinstance(self.max_model_len, bool) or self.max_model_len < 2):
            raise ValueError(f"max_model_len={self.max_model_len!r} must be an integer >= 2 (prompt + 1 token)")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            raise ValueError(f"threads={self.threads!r} must be an integer >= 1, or unset to use every core")
        for name, low, inclusive in (("drain_timeout", 0, True), ("keep_alive_timeout", 0, False)):
            value = getattr(self, name)
            if not _is_seconds(value) or value < low or (value == low and not inclusive):
                raise ValueError(f"{name}={value!r} must be a number of seconds {'>=' if inclusive else '>'} {low}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError(f"the API key must be a string, got {type(self.api_key).__name__}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty: pass a non-empty --api-key, or none to serve without one")

    @property
    def served_name(self) -> str:
        return self.model_name or self.folder.resolve().name

    @staticmethod
    def api_key_from_env(explicit: str | None) -> str | None:
        """--api-key wins; otherwise the environment variable, if set and non-empty."""
        return explicit if explicit is not None else (os.environ.get(API_KEY_ENV) or None)


def _is_seconds(value: object) -> bool:
    """A finite int or float (a bool is not a number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
