"""An OpenAI-compatible HTTP service over one export folder, with continuous batching (`runtime.batching`).

    python -m runtime.serve exports/gpt2 --port 8000          # or: gpt2-export serve exports/gpt2

    from runtime.serve import ServeConfig, Service, create_app
    service = Service(ServeConfig("exports/gpt2")); service.load()
    app = create_app(service)                                  # any ASGI server

Torch-free like the rest of `runtime`: it needs the `serve` extra (starlette, uvicorn) and, for `--ray`, the
`ray` extra. Importing this package needs neither: the names below load on first use, so the command line
can say which extra is missing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "APIError": "runtime.serve.schemas",
    "CompletionParams": "runtime.serve.schemas",
    "parse_completion_request": "runtime.serve.schemas",
    "ServeConfig": "runtime.serve.config",
    "Service": "runtime.serve.service",
    "create_app": "runtime.serve.app",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runtime.serve' has no attribute {name!r}")
