"""Run the service on uvicorn: loopback by default, SIGTERM drains and exits 0.

SIGTERM (or Ctrl-C): /health turns 503 and new completions get 503 at once; uvicorn closes the listening
socket and idle connections, lets in-flight responses (streams included) finish for up to `drain_timeout`
seconds, cancels what is left, then the lifespan shutdown drains the batcher and the process exits 0. A model
that fails to load stops the server with exit status 1.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading

import uvicorn

from .app import create_app
from .config import ServeConfig
from .service import BatcherFactory, Service, default_batcher

log = logging.getLogger("runtime.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service to drain as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        self.service.begin_drain()
        super().handle_exit(sig, frame)


def _after_graceful_exit(signum, frame) -> None:
    """uvicorn re-raises the signal it shut down on; landing here instead of the default handler exits 0."""
    log.info("stopped on signal %d after draining", signum)


def serve(config: ServeConfig, log_level: str = "info", batcher_factory: BatcherFactory = default_batcher,
          engine_factory: BatcherFactory | None = None) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit status (0 after a clean drain, 1 if the model failed to load).

    `engine_factory` is batcher_factory's name before issue 17, still accepted.
    """
    service = Service(config, engine_factory or batcher_factory)  # a wrong folder fails here, before anything listens
    server: _Server | None = None

    def load_failed() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(service, load_on_startup=True, on_load_failure=load_failed)
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
                               timeout_graceful_shutdown=math.ceil(config.drain_timeout), access_log=False,
                               timeout_keep_alive=config.keep_alive_timeout)
    server = _Server(uv_config, service)
    print(f"serving {service.name} from {config.folder} on http://{config.host}:{config.port} "
          f"(max_batch {config.max_batch}, max_queue {config.max_queue}, "
          f"{'API key required' if config.api_key else 'no API key'})", file=sys.stderr, flush=True)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _after_graceful_exit) for sig in (signal.SIGTERM, signal.SIGINT)} if main \
        else {}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.status == "failed":
        print(f"error: {service.error}", file=sys.stderr)
        return 1
    return 0
