"""The OpenAI completions request, parsed and checked: every bad value is a 400 that names it, its limit and the fix.

Reference: OpenAI's legacy Completions API (`POST /v1/completions`: prompt, max_tokens, temperature, top_p, n,
stream, stream_options, logprobs, echo, stop, seed, best_of, presence/frequency penalties, logit_bias, suffix,
user) and the extensions other OpenAI-compatible servers (vLLM) accept: top_k, stop_token_ids, ignore_eos,
return_token_ids. Fields this server cannot honour are refused when set to anything but their neutral value,
never silently ignored; unknown fields are ignored, as OpenAI's own clients send a few.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .config import ServeConfig

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_LOGPROBS = 5  # OpenAI's limit on the legacy completions' `logprobs`


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class CompletionParams:
    """A checked /v1/completions request. Prompts are texts or token-id lists, not yet tokenized or range-checked
    (that needs the model)."""

    prompts: tuple[str | tuple[int, ...], ...]
    batched: bool  # the request's prompt was a list of prompts (the response's prompt_token_ids is then nested)
    model: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    seed: int | None
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None
    return_token_ids: bool


def _type_name(value: Any) -> str:
    return "null" if value is None else {bool: "boolean", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(data: dict, name: str, default: int | None, low: int, high: int | None = None, limit_hint: str = "") -> Any:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        value = int(value)
    if not _is_int(value):
        raise bad(name, f"{name} must be an integer, got {_type_name(value)} {value!r}")
    if value < low:
        raise bad(name, f"{name}={value} is below the minimum {low}")
    if high is not None and value > high:
        raise bad(name, f"{name}={value} is above the limit {high}{limit_hint}")
    return value


def _number(data: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"{name} must be a number, got {_type_name(value)} {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise bad(name, f"{name}={value} is outside {interval}")
    return float(value)


def _bool(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"{name} must be true or false, got {_type_name(value)} {value!r}")
    return value


def _token_ids(value: list, where: str) -> tuple[int, ...]:
    if not value:
        raise bad("prompt", f"{where} is an empty list of token ids: give at least one token")
    for i, token in enumerate(value):
        if not _is_int(token):
            raise bad("prompt", f"{where}[{i}] must be an integer token id, got {_type_name(token)} {token!r}")
    return tuple(value)


def _prompts(data: dict, config: ServeConfig) -> tuple[tuple[str | tuple[int, ...], ...], bool]:
    """OpenAI's four prompt forms: a text, a list of texts, a token-id list, a list of token-id lists."""
    if "prompt" not in data or data["prompt"] is None:
        raise bad("prompt", "prompt is required: a string, a list of strings, a list of token ids or a list of "
                            "token-id lists")
    prompt = data["prompt"]
    if isinstance(prompt, str):
        return (prompt,), False
    if not isinstance(prompt, list):
        raise bad("prompt", f"prompt must be a string or an array, got {_type_name(prompt)}")
    if not prompt:
        raise bad("prompt", "prompt is an empty array: give a string, token ids, or a non-empty list of prompts")
    if all(_is_int(t) for t in prompt):
        return (_token_ids(prompt, "prompt"),), False
    if len(prompt) > config.max_prompts:
        raise bad("prompt", f"prompt holds {len(prompt)} prompts, above the limit {config.max_prompts} "
                            "(--max-prompts): split them over several requests")
    if all(isinstance(p, str) for p in prompt):
        return tuple(prompt), True
    if all(isinstance(p, list) for p in prompt):
        return tuple(_token_ids(p, f"prompt[{i}]") for i, p in enumerate(prompt)), True
    kinds = sorted({_type_name(p) for p in prompt})
    raise bad("prompt", f"prompt mixes {', '.join(kinds)}: give one string, a list of strings, a list of token ids "
                        "or a list of token-id lists")


def _stop(data: dict) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", f"stop must be a string or an array of strings, got {_type_name(stop)}")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad("stop", f"stop holds {len(stops)} sequences, above the limit {MAX_STOP_STRINGS}")
    if any(not s for s in stops):
        raise bad("stop", "stop holds an empty string, which would match at once: remove it")
    return tuple(stops)


def _unsupported(data: dict) -> None:
    """Fields with a meaning this server does not implement: fine at their neutral value, a 400 otherwise."""
    for name in ("presence_penalty", "frequency_penalty"):
        value = data.get(name)
        if value not in (None, 0, 0.0) or isinstance(value, bool):
            raise bad(name, f"{name}={value!r} is not supported by this server: leave it at 0")
    if data.get("logit_bias") not in (None, {}):
        raise bad("logit_bias", "logit_bias is not supported by this server: leave it out")
    if data.get("suffix") not in (None, ""):
        raise bad("suffix", "suffix (insertion) is not supported by GPT-2 completions: leave it out")


def parse_completion_request(body: bytes, config: ServeConfig) -> CompletionParams:
    """Parse and check a /v1/completions body; raises APIError (400) naming the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e}): send a JSON object",
                       code="invalid_json") from e
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_type_name(data)}", code="invalid_json")
    prompts, batched = _prompts(data, config)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", f"model must be a string, got {_type_name(model)}")
    n = _int(data, "n", 1, 1, config.max_n, " (--max-n)")
    best_of = _int(data, "best_of", None, 1)
    if best_of is not None and best_of != n:
        raise bad("best_of", f"best_of={best_of} differs from n={n}: this server returns every completion it "
                             "generates, so leave best_of out or equal to n")
    if n * len(prompts) > config.max_n * config.max_prompts:
        raise bad("n", f"n={n} x {len(prompts)} prompts = {n * len(prompts)} completions, above the limit "
                       f"{config.max_n * config.max_prompts}")
    logprobs = data.get("logprobs")
    if logprobs is not None:
        if isinstance(logprobs, bool):  # the chat API's boolean form
            logprobs = 0 if logprobs else None
        else:
            logprobs = _int(data, "logprobs", None, 0, MAX_LOGPROBS)
    stream_options = data.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise bad("stream_options", f"stream_options must be an object, got {_type_name(stream_options)}")
    stream = _bool(data, "stream", False)
    include_usage = _bool(stream_options or {}, "include_usage", False)
    if stream_options and not stream:
        raise bad("stream_options", "stream_options needs stream: true")
    stop_token_ids = data.get("stop_token_ids")
    if stop_token_ids is None:
        stop_token_ids = []
    if not isinstance(stop_token_ids, list) or not all(_is_int(t) and t >= 0 for t in stop_token_ids):
        raise bad("stop_token_ids", f"stop_token_ids must be an array of token ids, got {stop_token_ids!r}")
    _unsupported(data)
    top_k = _int(data, "top_k", 0, -1)
    echo = _bool(data, "echo", False)
    return CompletionParams(
        prompts=prompts,
        batched=batched,
        model=model,
        # 0 only with echo: the prompt (scored, with logprobs) and nothing generated, as OpenAI allowed
        max_tokens=_int(data, "max_tokens", config.default_max_tokens, 0 if echo else 1),
        temperature=_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(data, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k, 0),  # -1 (vLLM's "off") and 0 both disable top-k
        n=n,
        stop=_stop(data),
        stop_token_ids=tuple(stop_token_ids),
        ignore_eos=_bool(data, "ignore_eos", False),
        seed=_int(data, "seed", None, 0, 2**63 - 1),
        stream=stream,
        include_usage=include_usage,
        echo=echo,
        logprobs=logprobs,
        return_token_ids=_bool(data, "return_token_ids", False),
    )
