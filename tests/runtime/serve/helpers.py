"""Clients and engine wrappers the service tests share (loopback only, every wait bounded)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from runtime.batching import ContinuousBatcher

from ..sessions import SlowSession

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = httpx.Timeout(60.0, connect=5.0)


def alone(model, prompt_ids, max_tokens: int) -> list[int]:
    """The greedy tokens of one prompt run alone through `runtime`, up to and including the first eos."""
    tokens = model.generate(np.array([list(prompt_ids)]), max_new_tokens=max_tokens)[0, len(prompt_ids) :].tolist()
    eos = model.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def post(url: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT, **kwargs)


def stream(url: str, body: dict, headers: dict | None = None) -> list[dict]:
    """The JSON events of a streamed completion; checks the SSE framing and the final [DONE]."""
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT,
                      headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", data[-3:]
    return [json.loads(item) for item in data[:-1]]


def joined(events: list[dict]) -> dict[int, dict]:
    """Per choice index: the streamed text and token ids joined, and the finish reason."""
    choices: dict[int, dict] = {}
    for event in events:
        for choice in event.get("choices", []):
            c = choices.setdefault(choice["index"], {"text": "", "token_ids": [], "finish_reason": None})
            c["text"] += choice["text"]
            c["token_ids"] += choice.get("token_ids", [])
            c["finish_reason"] = choice["finish_reason"] or c["finish_reason"]
    return choices


def slow_batcher(delay: float):
    """An engine factory whose decode steps each take at least `delay` seconds."""

    def factory(model, max_batch: int, max_queue: int) -> ContinuousBatcher:
        model.backend.session = SlowSession(model.backend.session, delay)
        return ContinuousBatcher(model, max_batch=max_batch, max_queue=max_queue)

    return factory


def raw_request(port: int, body: dict) -> socket.socket:
    """Send a completions request on a raw socket and return it unread (to hang up on it)."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def wait_until(predicate, timeout: float, interval: float = 0.01) -> float:
    """Seconds until predicate() held; AssertionError after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


class ServerProcess:
    """`python -m runtime.serve FOLDER` in a subprocess on a loopback port; stop() sends SIGTERM."""

    def __init__(self, folder: Path, port: int, *args: str, env: dict | None = None, cwd: Path = REPO,
                 command: list[str] | None = None):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by kill())
        command = command or [sys.executable, "-m", "runtime.serve", str(folder), "--port", str(port),
                              "--log-level", "warning", *args]
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server was not healthy within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
