"""An OpenAI-compatible HTTP service over one export folder, with continuous batching (`runtime.batching`).

    python -m runtime.serve exports/gpt2 --port 8000          # or: gpt2-export serve exports/gpt2

    from runtime.serve import ServeConfig, Service, create_app
    service = Service(ServeConfig("exports/gpt2")); service.load()
    app = create_app(service)                                  # any ASGI server

Torch-free like the rest of `runtime`: it needs the `serve` extra (starlette, uvicorn) and, for
`--ray`, the `ray` extra.
"""

from runtime.serve.app import create_app
from runtime.serve.config import ServeConfig
from runtime.serve.schemas import APIError, CompletionParams, parse_completion_request
from runtime.serve.service import Service

__all__ = ["APIError", "CompletionParams", "ServeConfig", "Service", "create_app", "parse_completion_request"]
