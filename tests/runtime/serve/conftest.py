"""Fixtures of the service tests: exports whose greedy tokens depend on the whole prompt, and servers on loopback.

The shared tiny checkpoint (tests/conftest.py) mostly repeats its last token, so a batch that mixed up two
rows' caches could still produce the right tokens. These tests export a checkpoint with larger random weights
(initializer_range 0.4), whose greedy continuations vary with every token of the prompt. Nothing here imports
the serve extra at import time; the test modules that need it import `.deps` first, which skips them without it.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

import runtime
from tests.conftest import write_hf_checkpoint
from tests.runtime.serve.helpers_net import free_port


@pytest.fixture(scope="session")
def serve_exports(tmp_path_factory) -> dict[str, Path]:
    """lm-shared (the batched path), lm (growing cache: interleaved), and lm-shared without tokenizer files."""
    from gpt2_export.export import ExportOptions, export

    root = tmp_path_factory.mktemp("serve-exports")
    checkpoint = write_hf_checkpoint(root / "checkpoint", "lm", initializer_range=0.4)
    folders = {
        "lm-shared": export(checkpoint, root / "lm-shared", ExportOptions(kv_cache="shared")).folder,
        "lm": export(checkpoint, root / "lm", ExportOptions()).folder,
    }
    bare = root / "lm-shared-no-tokenizer"
    shutil.copytree(folders["lm-shared"], bare)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):  # the runtime reads tokenizer.json when alone
        (bare / name).unlink()
    folders["no-tokenizer"] = bare
    return folders


@pytest.fixture(scope="session")
def reference_model(serve_exports) -> runtime.Model:
    """The same export loaded on its own: the serial results every served completion must equal."""
    return runtime.load(serve_exports["lm-shared"])


class ThreadServer:
    """uvicorn serving a loaded Service on 127.0.0.1 in a background thread (stopped by the test)."""

    def __init__(self, service):
        import uvicorn

        from runtime.serve.app import create_app

        self.service = service
        self.port = service.config.port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(service), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.service.load()
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.shutdown(drain=False, timeout=5)


@pytest.fixture
def start_server():
    """start_server(folder, **config) -> a running ThreadServer; every one is stopped after the test."""
    servers = []

    def start(folder: Path, batcher_factory=None, **options) -> ThreadServer:
        from runtime.serve import ServeConfig, Service

        config = ServeConfig(folder=folder, port=free_port(), **options)
        service = Service(config) if batcher_factory is None else Service(config, batcher_factory)
        server = ThreadServer(service).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
