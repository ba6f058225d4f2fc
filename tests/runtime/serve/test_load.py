"""Load and soak against a server process on loopback: nothing lost under mixed traffic, no memory growth.

Both tests talk to 127.0.0.1 only, run a fixed number of requests with timeouts, and stop the server with
SIGTERM (which must exit 0) when done.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from .deps import httpx  # first: skips this module without the serve extra
from .helpers import TIMEOUT, ServerProcess, alone
from .helpers_net import free_port

PROMPTS = [[5, 17, 42, 99, 7, 250], [80, 81, 82], [12, 13, 14, 15, 16, 17, 18, 19], [3], [200, 100, 50, 25]]


def _request(i: int) -> tuple[str, dict | bytes, bool]:
    """The i-th request of the mix: (kind, body, streamed)."""
    prompt = PROMPTS[i % len(PROMPTS)]
    max_tokens = 3 + i % 9
    greedy = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    kind = ("greedy", "greedy-stream", "sampled-n2", "too-long", "stop-stream", "batch", "malformed", "echo")[i % 8]
    return kind, {
        "greedy": greedy,
        "greedy-stream": greedy,
        "sampled-n2": {"prompt": "the cat", "max_tokens": max_tokens, "temperature": 1.2, "n": 2, "seed": i},
        "too-long": {"prompt": prompt, "max_tokens": 64},
        "stop-stream": {"prompt": "the dog", "max_tokens": max_tokens, "stop": ["t", "a"], "temperature": 0.7},
        "batch": {"prompt": [prompt, PROMPTS[0]], "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True},
        "malformed": b'{"prompt": [1, 2',
        "echo": {"prompt": "the mat", "max_tokens": max_tokens, "echo": True, "logprobs": 0},
    }[kind], kind.endswith("stream")


def _send(client: httpx.Client, body: dict | bytes, streamed: bool) -> tuple[int, dict, dict]:
    """(status, body or the joined stream, headers)."""
    content = body if isinstance(body, bytes) else json.dumps({**body, "stream": streamed}).encode()
    if not streamed:
        response = client.post("/v1/completions", content=content)
        return response.status_code, response.json(), response.headers
    with client.stream("POST", "/v1/completions", content=content) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.json(), response.headers
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    choices: dict = {}
    for event in map(json.loads, data[:-1]):
        for c in event["choices"]:
            slot = choices.setdefault(c["index"], {"index": c["index"], "text": "", "token_ids": [],
                                                   "finish_reason": None})
            slot["text"] += c["text"]
            slot["token_ids"] += c.get("token_ids", [])
            slot["finish_reason"] = c["finish_reason"] or slot["finish_reason"]
    return 200, {"choices": [choices[k] for k in sorted(choices)]}, response.headers


@pytest.mark.slow
def test_1000_mixed_requests_each_complete_or_get_a_clear_error(serve_exports, reference_model):
    server = ServerProcess(serve_exports["lm-shared"], free_port(), "--max-batch", "4", "--max-queue", "6")
    expected = {(tuple(p), n): alone(reference_model, p, n) for p in PROMPTS for n in range(3, 12)}
    try:
        server.wait_healthy()
        local, clients = threading.local(), []

        def run(i: int):
            if not hasattr(local, "client"):  # one keep-alive client per thread, as a real client pool would
                local.client = httpx.Client(base_url=server.url, timeout=TIMEOUT)
                clients.append(local.client)
            kind, body, streamed = _request(i)
            return i, kind, body, _send(local.client, body, streamed)

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(run, range(1000)))
        for client in clients:
            client.close()
        counts = {"completed": 0, "queue_full": 0, "invalid": 0}
        completed_by_kind = dict.fromkeys(("greedy", "greedy-stream", "sampled-n2", "stop-stream", "batch", "echo"), 0)
        for i, kind, body, (status, reply, headers) in outcomes:
            if status == 429:
                assert int(headers["retry-after"]) >= 1 and "--max-queue" in reply["error"]["message"], i
                counts["queue_full"] += 1
                continue
            if kind in ("too-long", "malformed"):
                assert status == 400, (i, reply)
                assert ("exceeds the context length" if kind == "too-long" else "not valid JSON") in \
                    reply["error"]["message"]
                counts["invalid"] += 1
                continue
            assert status == 200, (i, kind, reply)
            counts["completed"] += 1
            completed_by_kind[kind] += 1
            choices = reply["choices"]
            assert len(choices) == {"sampled-n2": 2, "batch": 2}.get(kind, 1), (i, kind)
            assert all(c["finish_reason"] in ("stop", "length") for c in choices), (i, choices)
            if kind in ("greedy", "greedy-stream"):
                assert choices[0]["token_ids"] == expected[(tuple(body["prompt"]), body["max_tokens"])], i
            if kind == "batch":
                for choice, prompt in zip(choices, body["prompt"], strict=True):
                    assert choice["token_ids"] == expected[(tuple(prompt), body["max_tokens"])], i
            if kind == "stop-stream":
                assert "t" not in choices[0]["text"] and "a" not in choices[0]["text"]
            if kind == "echo":
                assert choices[0]["text"].startswith("the mat")
        print(f"1000 mixed requests: {counts}, completed by kind {completed_by_kind}")  # shown with pytest -s
        assert sum(counts.values()) == 1000, counts
        assert counts["invalid"] == 250, counts
        # How many get 429 depends on the clients' pace against the server's, not on correctness; what must hold is
        # that every kind of request was answered in full often enough for the checks above to mean something.
        assert min(completed_by_kind.values()) >= 25, completed_by_kind
        metrics = httpx.get(f"{server.url}/metrics").text
        served = re.findall(r'^gpt2_serve_http_requests_total\{route="/v1/completions",status="(\d+)"\} (\d+)$',
                            metrics, re.M)
        assert sum(int(n) for _, n in served) == 1000, served
        assert server.stop() == 0, server.output()
    finally:
        server.kill()


@pytest.mark.slow
def test_a_10000_token_soak_grows_rss_by_less_than_5_percent(serve_exports):
    server = ServerProcess(serve_exports["lm-shared"], free_port(), "--max-batch", "8")
    body = {"prompt": [5, 17, 42], "max_tokens": 50, "temperature": 0.8, "ignore_eos": True}

    def burst(requests: int) -> int:
        def one(i: int) -> int:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
                status, reply, _ = _send(client, {**body, "seed": i, "return_token_ids": True}, streamed=i % 2 == 0)
            assert status == 200, reply
            return len(reply["choices"][0]["token_ids"])

        with ThreadPoolExecutor(8) as pool:
            return sum(pool.map(one, range(requests)))

    try:
        server.wait_healthy()
        assert burst(40) == 2_000  # warm-up: every code path has run and allocated once
        before = server.rss_bytes()
        assert burst(200) == 10_000
        after = server.rss_bytes()
        growth = (after - before) / before
        print(f"soak: RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB ({growth:+.2%}) over 10,000 tokens")
        assert growth < 0.05, f"RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB (+{growth:.1%})"
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
