"""The same service as a Ray Serve deployment: N replicas behind Ray's HTTP proxy, sharing only the export folder.

    from runtime.serve.ray_app import build
    serve.run(build(ServeConfig("exports/gpt2"), replicas=2), route_prefix="/")

Each replica loads the folder itself (its own ONNX Runtime session and continuous batcher) and answers the same
OpenAI routes through the same ASGI app; Ray's proxy spreads requests over the replicas and streams responses.
On a multi-node cluster the folder must exist at the same path on every node (a shared file system, or a copy),
and the package must be installed in the nodes' Python (or shipped with a `runtime_env`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading

import ray
from ray import serve

from .app import create_app
from .config import ServeConfig
from .service import Service

log = logging.getLogger("runtime.serve")
APP_NAME = "gpt2-export"


class _ReplicaApp:
    """The ASGI app Ray's ingress wraps: it forwards to the app of this replica's Service.

    `serve.ingress` pickles the app it is given and every replica unpickles its own copy, but the Service
    (model, batcher) can only be built inside the replica, so the deployment's constructor installs it here.
    This works with every Ray that takes a generic ASGI app in `serve.ingress` (1.3 and later).
    """

    app = None  # per replica process: set by CompletionDeployment.__init__

    async def __call__(self, scope, receive, send) -> None:
        if _ReplicaApp.app is None:
            if scope["type"] == "lifespan":  # nothing to start before the constructor ran
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            raise RuntimeError("the replica's service is not built yet")
        await _ReplicaApp.app(scope, receive, send)


@serve.deployment(name="completions", health_check_period_s=5, health_check_timeout_s=30)
@serve.ingress(_ReplicaApp())
class CompletionDeployment:
    """One replica: its own Service (ONNX Runtime session and continuous batcher) over the shared export folder."""

    def __init__(self, config: dict):
        self.service = Service(ServeConfig(**config))
        self.service.load()
        _ReplicaApp.app = create_app(self.service)

    def check_health(self) -> None:
        if not self.service.ready:
            raise RuntimeError(f"replica is {self.service.status}: {self.service.error or ''}")

    def __del__(self) -> None:
        service = getattr(self, "service", None)  # absent when the constructor failed
        if service is not None:
            service.shutdown(drain=True, timeout=service.config.drain_timeout)


def _as_dict(config: ServeConfig) -> dict:
    data = dataclasses.asdict(config)
    data["folder"] = str(config.folder.resolve())
    return data


def build(config: ServeConfig, replicas: int = 1, num_cpus: float = 1.0):
    """The Ray Serve application: `replicas` copies of the service, each reserving `num_cpus` CPUs (and using
    that many ONNX Runtime threads unless config.threads says otherwise)."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas} must be >= 1")
    if config.threads is None:
        config = dataclasses.replace(config, threads=max(1, int(num_cpus)))
    return CompletionDeployment.options(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}).bind(
        _as_dict(config))


def start(config: ServeConfig, replicas: int, address: str | None = None, num_cpus: float = 1.0) -> None:
    """Connect to (address, e.g. "auto" on a cluster node) or start a local Ray, and deploy behind its proxy on
    config.host:config.port."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build(config, replicas, num_cpus), name=APP_NAME, route_prefix="/", blocking=False)


def run(config: ServeConfig, replicas: int, address: str | None = None, num_cpus: float = 1.0) -> int:
    """Deploy, serve until SIGTERM / SIGINT, then take the application down; returns the exit status."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    # After ray.init, which installs handlers of its own that would end the process without cleaning up.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        start(config, replicas, address, num_cpus)
        print(f"serving {config.served_name} with {replicas} Ray Serve replicas on http://{config.host}:{config.port}",
              flush=True)
        stop.wait()
        log.info("stopping: deleting the application and shutting Ray Serve down")
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()
    return 0
