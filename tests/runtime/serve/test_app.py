"""The OpenAI-compatible service over HTTP on loopback: tokens, streaming, prompt forms, limits, auth, metrics.

The oracle is `runtime` itself: a greedy completion served next to any other traffic has exactly the tokens
of the same prompt run alone through `model.generate` (which tests/runtime/test_model.py ties to transformers).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .deps import httpx  # first: skips this module without the serve extra
from .helpers import TIMEOUT, alone, joined, post, raw_request, slow_batcher, stream, wait_until

PROMPTS = [[5, 17, 42, 99, 7, 250], [80, 81, 82], [12, 13, 14, 15, 16, 17, 18, 19], [3], [200, 100, 50, 25],
           [7, 7, 7, 150, 151], [310, 2, 90, 44, 61, 9, 9]]


@pytest.fixture(scope="module")
def texts(reference_model):
    """Text prompts of the tiny vocabulary and their greedy continuations' text."""
    return ["the cat sat on the mat.", "héllo wörld", "日本語の", "it's 1234 🎉", " the dog"]


@pytest.fixture
def server(start_server, serve_exports):
    return start_server(serve_exports["lm-shared"], max_batch=4, max_queue=32)


# ---- routes ---------------------------------------------------------------------------------------------------


def test_health_models_and_unknown_routes(server):
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["lm-shared"]
    assert models["data"][0]["max_model_len"] == 64
    assert httpx.get(f"{server.url}/v1/models/lm-shared").json()["id"] == "lm-shared"
    missing = httpx.get(f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and "no route /v1/nothing" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{server.url}/v1/completions")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]
    chat = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404
    assert "without a chat template: send a prompt to /v1/completions" in chat.json()["error"]["message"]


def test_health_is_503_until_the_model_is_loaded(serve_exports):
    from starlette.testclient import TestClient

    from runtime.serve import ServeConfig, Service, create_app

    service = Service(ServeConfig(serve_exports["lm-shared"]))
    with TestClient(create_app(service)) as client:
        assert client.get("/health").status_code == 503
        assert client.get("/health").json()["status"] == "loading"
        early = client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert "still loading" in early.json()["error"]["message"]
        service.load()
        assert client.get("/health").status_code == 200
        assert client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}).status_code == 200
        service.shutdown()
        assert client.get("/health").status_code == 503


# ---- tokens: concurrency, streaming, prompt forms ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lm-shared", "lm"])
def test_concurrent_greedy_clients_get_the_tokens_of_serial_runtime(variant, start_server, serve_exports):
    """16 clients at once on 4 slots, mixed lengths, streaming and not: each gets exactly its serial tokens."""
    import runtime

    model = runtime.load(serve_exports[variant])
    server = start_server(serve_exports[variant], max_batch=4, max_queue=32)
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + (5 * i) % 23, i % 2 == 0) for i in range(16)]

    def run(job):
        prompt, max_tokens, streamed = job
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
        if streamed:
            return joined(stream(server.url, body))[0]["token_ids"]
        response = post(server.url, body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["token_ids"]

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(run, jobs))
    for (prompt, max_tokens, _), tokens in zip(jobs, served, strict=True):
        assert tokens == alone(model, prompt, max_tokens), (prompt, max_tokens)
    if variant == "lm-shared":
        text = httpx.get(f"{server.url}/metrics").text
        assert float(re.search(r"^gpt2_serve_engine_steps_total (\S+)$", text, re.M).group(1)) < sum(j[1] for j in jobs)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "the cat sat on", "max_tokens": 20, "temperature": 0},
        {"prompt": "héllo wörld", "max_tokens": 30, "temperature": 0, "logprobs": 1, "echo": True},
        {"prompt": ["the dog", "日本語の"], "max_tokens": 12, "temperature": 0.9, "seed": 5, "n": 2, "top_k": 20},
        {"prompt": [[5, 17, 42], [80, 81]], "max_tokens": 15, "temperature": 0, "return_token_ids": True},
        {"prompt": "it's 1234", "max_tokens": 25, "temperature": 1.3, "top_p": 0.8, "seed": 3, "ignore_eos": True},
    ],
    ids=["greedy", "echo-logprobs", "sampled-n2-batch", "token-ids-batch", "top-p-ignore-eos"],
)
def test_streaming_equals_non_streaming(server, body):
    whole = post(server.url, {**body, "return_token_ids": True})
    assert whole.status_code == 200, whole.text
    streamed = joined(stream(server.url, {**body, "return_token_ids": True}))
    choices = whole.json()["choices"]
    assert sorted(streamed) == [c["index"] for c in choices]
    for choice in choices:
        got = streamed[choice["index"]]
        assert (got["text"], got["token_ids"], got["finish_reason"]) == (
            choice["text"], choice["token_ids"], choice["finish_reason"]), choice["index"]


def test_streaming_sends_each_token_as_it_is_decoded(start_server, serve_exports):
    """With 40 ms decode steps, chunks arrive spread over the generation, not all at the end."""
    server = start_server(serve_exports["lm-shared"], batcher_factory=slow_batcher(0.04))
    arrivals = []
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=TIMEOUT,
                      json={"prompt": [1, 2, 3], "max_tokens": 10, "temperature": 0, "stream": True,
                            "ignore_eos": True, "return_token_ids": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append((time.monotonic(), json.loads(line[6:])["choices"][0]["token_ids"]))
    assert [len(ids) for _, ids in arrivals] == [1] * 10  # one event per token
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0.02, gaps


def test_prompt_forms_and_return_token_ids(server, reference_model):
    tokenizer = reference_model.tokenizer
    text_ids = tokenizer.encode("the cat")
    single = post(server.url, {"prompt": "the cat", "max_tokens": 5, "temperature": 0, "return_token_ids": True})
    body = single.json()
    assert body["prompt_token_ids"] == text_ids
    assert body["choices"][0]["prompt_token_ids"] == text_ids
    assert body["choices"][0]["token_ids"] == alone(reference_model, text_ids, 5)
    assert body["choices"][0]["text"] == tokenizer.decode(
        [t for t in body["choices"][0]["token_ids"] if t != reference_model.eos_token_id])
    assert body["usage"] == {"prompt_tokens": len(text_ids), "completion_tokens": len(body["choices"][0]["token_ids"]),
                             "total_tokens": len(text_ids) + len(body["choices"][0]["token_ids"])}
    batch = post(server.url, {"prompt": [[5, 17], [80, 81, 82]], "max_tokens": 4, "temperature": 0, "n": 2,
                              "return_token_ids": True}).json()
    assert batch["prompt_token_ids"] == [[5, 17], [80, 81, 82]]
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    assert [c["prompt_token_ids"] for c in batch["choices"]] == [[5, 17], [5, 17], [80, 81, 82], [80, 81, 82]]
    assert batch["choices"][0]["token_ids"] == batch["choices"][1]["token_ids"] == alone(reference_model, [5, 17], 4)
    plain = post(server.url, {"prompt": [5, 17], "max_tokens": 3}).json()
    assert "token_ids" not in plain["choices"][0] and "prompt_token_ids" not in plain
    empty = post(server.url, {"prompt": "", "max_tokens": 3, "temperature": 0, "return_token_ids": True}).json()
    assert empty["prompt_token_ids"] == [reference_model.manifest.shape.bos_token_id]  # OpenAI: <|endoftext|>


def test_stop_strings_cut_the_text_in_both_modes(server, reference_model):
    full = post(server.url, {"prompt": "the cat", "max_tokens": 30, "temperature": 0, "ignore_eos": True}).json()
    text = full["choices"][0]["text"]
    stop = text[5:8]
    assert len(stop) == 3 and text.index(stop) == 5
    body = {"prompt": "the cat", "max_tokens": 30, "temperature": 0, "ignore_eos": True, "stop": ["zzzz", stop]}
    cut = post(server.url, body).json()["choices"][0]
    assert cut["text"] == text[:5] and cut["finish_reason"] == "stop"
    streamed = joined(stream(server.url, body))[0]
    assert streamed["text"] == text[:5] and streamed["finish_reason"] == "stop"


def test_stop_token_ids_and_seeded_sampling(server):
    greedy = post(server.url, {"prompt": [5, 17, 42], "max_tokens": 10, "temperature": 0, "ignore_eos": True,
                               "return_token_ids": True}).json()["choices"][0]["token_ids"]
    stopped = post(server.url, {"prompt": [5, 17, 42], "max_tokens": 10, "temperature": 0, "ignore_eos": True,
                                "stop_token_ids": [greedy[3]], "return_token_ids": True}).json()["choices"][0]
    assert stopped["token_ids"] == greedy[: greedy.index(greedy[3]) + 1] and stopped["finish_reason"] == "stop"
    body = {"prompt": [5, 17, 42], "max_tokens": 12, "temperature": 1.5, "seed": 9, "return_token_ids": True}
    first, second = (post(server.url, body).json()["choices"][0]["token_ids"] for _ in range(2))
    assert first == second


def test_logprobs_are_reported_for_each_token(server):
    choice = post(server.url, {"prompt": "the cat", "max_tokens": 6, "temperature": 0, "logprobs": 0,
                               "ignore_eos": True}).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 6
    assert all(v <= 0 for v in logprobs["token_logprobs"])
    assert _token_bytes(logprobs["tokens"]).decode("utf-8", "replace") == choice["text"]
    assert logprobs["top_logprobs"] is None


def _token_bytes(tokens: list[str]) -> bytes:
    """The bytes logprobs' token strings stand for: text, or OpenAI's `bytes:\\xNN` for pieces of a character."""
    return b"".join(bytes.fromhex(t[6:].replace("\\x", "")) if t.startswith("bytes:") else t.encode()
                    for t in tokens)


def test_top_logprobs_hold_the_most_likely_tokens_and_the_chosen_one(server):
    body = {"prompt": "the cat", "max_tokens": 6, "temperature": 0, "logprobs": 3, "ignore_eos": True}
    logprobs = post(server.url, body).json()["choices"][0]["logprobs"]
    assert len(logprobs["top_logprobs"]) == len(logprobs["tokens"]) == 6
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"],
                                 strict=True):
        assert 1 <= len(top) <= 4 and top[token] == value  # OpenAI: up to logprobs + 1, the chosen one included
        assert max(top.values()) == value  # greedy chose the most likely
        assert list(top.values()) == sorted(top.values(), reverse=True)
    streamed = [c["logprobs"]["top_logprobs"] for e in stream(server.url, body) for c in e["choices"]]
    assert [t for chunk in streamed for t in chunk] == logprobs["top_logprobs"]


def test_echoed_prompt_offsets_count_characters_as_the_completion_does(server, reference_model):
    """A character split over byte tokens adds its length once, not once per token's U+FFFD."""
    prompt = "日本語の"
    choice = post(server.url, {"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": True,
                               "logprobs": 0}).json()["choices"][0]
    ids = reference_model.tokenizer.encode(prompt)
    decoder, expected, length = reference_model.tokenizer.stream_decoder(), [], 0
    for token in ids:  # where each token's text starts once its character is complete
        expected.append(length)
        length += len(decoder.feed(token))
    assert length == len(prompt) and len(ids) > len(prompt)  # some characters span several byte tokens
    offsets = choice["logprobs"]["text_offset"]
    assert offsets[: len(ids)] == expected and offsets[len(ids)] == len(prompt), offsets
    tokens = choice["logprobs"]["tokens"][: len(ids)]
    assert any(t.startswith("bytes:\\x") for t in tokens), tokens  # pieces of a character, as OpenAI writes them
    assert _token_bytes(tokens).decode("utf-8") == prompt


@pytest.mark.parametrize("export", ["lm-shared", "lm"])
def test_echo_with_logprobs_scores_the_prompt_as_decoding_scored_those_tokens(start_server, serve_exports, export):
    """lm-evaluation-harness' loglikelihood request (echo, logprobs, max_tokens 1): prompt tokens get their
    log-probabilities too, equal to what decoding reported when it produced the same tokens."""
    server = start_server(serve_exports[export], max_batch=2)
    decoded = post(server.url, {"prompt": [5, 17, 42], "max_tokens": 4, "temperature": 0, "logprobs": 2,
                                "ignore_eos": True, "return_token_ids": True}).json()["choices"][0]
    prompt = [5, 17, 42, *decoded["token_ids"][:3]]
    for stream_it in (False, True):
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 2}
        if stream_it:
            events = stream(server.url, body)
            logprobs = events[0]["choices"][0]["logprobs"]  # the echo chunk comes first
        else:
            logprobs = post(server.url, body).json()["choices"][0]["logprobs"]
        values, tops = logprobs["token_logprobs"], logprobs["top_logprobs"]
        assert values[0] is None and tops[0] is None  # nothing comes before the first token
        np.testing.assert_allclose(values[3:6], decoded["logprobs"]["token_logprobs"][:3], atol=1e-4)
        for got, want in zip(tops[3:6], decoded["logprobs"]["top_logprobs"][:3], strict=True):
            assert got.keys() == want.keys()
            np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-4)
        assert all(v is not None and v <= 0 for v in values[1:len(prompt)])
    one = post(server.url, {"prompt": [7], "max_tokens": 1, "echo": True, "logprobs": 1}).json()["choices"][0]
    assert one["logprobs"]["token_logprobs"][0] is None and one["logprobs"]["top_logprobs"][0] is None


def test_max_tokens_0_with_echo_returns_the_scored_prompt_and_generates_nothing(server):
    # OpenAI allowed it with echo, and older lm-evaluation-harness versions score prompts this way.
    body = {"prompt": ["the cat sat", "a dog"], "max_tokens": 0, "echo": True, "logprobs": 1, "n": 2}
    reply = post(server.url, body).json()
    assert [c["text"] for c in reply["choices"]] == ["the cat sat", "the cat sat", "a dog", "a dog"]
    assert all(c["finish_reason"] == "length" for c in reply["choices"])
    assert reply["usage"]["completion_tokens"] == 0
    with_one = post(server.url, {**body, "max_tokens": 1, "n": 1}).json()["choices"][0]["logprobs"]
    scored = reply["choices"][0]["logprobs"]
    assert scored["token_logprobs"] == with_one["token_logprobs"][:-1]  # the same prompt scores
    assert len(scored["tokens"]) == len(scored["top_logprobs"]) == len(scored["text_offset"])
    streamed = joined(stream(server.url, body))
    assert [streamed[i]["finish_reason"] for i in range(4)] == ["length"] * 4
    refused = post(server.url, {"prompt": "the cat", "max_tokens": 0})
    assert refused.status_code == 400 and "max_tokens=0 is below the minimum 1" in refused.json()["error"]["message"]


def test_a_harness_style_loglikelihood_batch_parses_as_lm_evaluation_harness_reads_it(server):
    # Several contexts + continuations in one request, n=2, streamed or not: every list is prompt + 1 long and
    # the harness's reading (token_logprobs[ctxlen:-1], greedy = the continuation is each position's argmax) works.
    requests = [([5, 17, 42], [99, 7]), ([80, 81], [82, 83, 84]), ([3, 9, 27, 81], [243])]
    body = {"prompt": [ctx + cont for ctx, cont in requests], "max_tokens": 1, "temperature": 0, "echo": True,
            "logprobs": 1, "n": 2, "seed": 0}
    plain = post(server.url, body).json()["choices"]
    streamed = joined(stream(server.url, body))
    assert [c["index"] for c in plain] == list(range(6))
    for choice in plain:
        ctx, cont = requests[choice["index"] // 2]
        logprobs = choice["logprobs"]
        lengths = {len(logprobs[key]) for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        assert lengths == {len(ctx) + len(cont) + 1}, lengths
        continuation = logprobs["token_logprobs"][len(ctx) : -1]
        assert len(continuation) == len(cont) and all(v is not None and v <= 0 for v in continuation)
        for top, value in zip(logprobs["top_logprobs"][len(ctx) : -1], continuation, strict=True):
            assert max(top.values()) >= value  # the actual token is in the dict; greedy iff it is the max
        assert choice["index"] in streamed


def test_stream_usage_is_null_in_every_chunk_but_the_last(server):
    events = stream(server.url, {"prompt": ["the cat", "a dog"], "n": 2, "max_tokens": 4, "temperature": 0,
                                 "echo": True, "stream_options": {"include_usage": True}})
    assert all("usage" in e and e["usage"] is None for e in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    assert all("usage" not in e for e in stream(server.url, {"prompt": "the cat", "max_tokens": 2}))


def test_a_lone_surrogate_in_the_prompt_echoes_as_a_replacement_character(server):
    """JSON allows "\\ud83d" alone; UTF-8 cannot encode it, so echoing it raw failed the response with a 500."""
    body = b'{"prompt": "ab \\ud83d cd", "max_tokens": 2, "echo": true'
    whole = httpx.post(f"{server.url}/v1/completions", content=body + b"}", timeout=TIMEOUT)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["text"].startswith("ab \ufffd cd")
    streamed = httpx.post(f"{server.url}/v1/completions", content=body + b', "stream": true}', timeout=TIMEOUT)
    lines = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]" and json.loads(lines[0])["choices"][0]["text"] == "ab \ufffd cd"


def test_a_tiny_temperature_decodes_greedily_not_token_0(server, reference_model):
    """Logits / 1e-300 overflow float32 to inf and NaN probabilities, which drew token 0 every step."""
    ids = reference_model.tokenizer.encode("the cat")
    body = {"prompt": "the cat", "max_tokens": 5, "temperature": 1e-300, "return_token_ids": True}
    assert post(server.url, body).json()["choices"][0]["token_ids"] == alone(reference_model, ids, 5)


# ---- bad requests -----------------------------------------------------------------------------------------------


BAD_REQUESTS = [
    (b'{"prompt": "x", ', 400, "not valid JSON"),
    (b'["prompt"]', 400, "must be a JSON object"),
    ({"max_tokens": 4}, 400, "prompt is required"),
    ({"prompt": 5}, 400, "prompt must be a string or an array, got int"),
    ({"prompt": []}, 400, "empty array"),
    ({"prompt": [1, "a"]}, 400, "prompt mixes"),
    ({"prompt": [[1, 2], []]}, 400, "prompt[1] is an empty list"),
    ({"prompt": [1, 2, 400]}, 400, "token id 400 is out of range for vocab_size 317"),
    ({"prompt": [[1], [2, -1]]}, 400, "prompt[1]: token id -1 is out of range"),
    ({"prompt": [1] * 60, "max_tokens": 10}, 400, "prompt of 60 tokens + max_tokens 10 = 70 exceeds the context "
                                                  "length n_positions 64: set max_tokens <= 4"),
    ({"prompt": [1] * 70, "max_tokens": 1}, 400, "shorten it to 63 tokens or fewer, or lower max_tokens"),
    ({"prompt": [1] * 70, "max_tokens": 3}, 400, "shorten it to 61 tokens or fewer"),
    ({"prompt": [1] * 70, "max_tokens": 64}, 400, "shorten it and set max_tokens below 64"),
    ({"prompt": [1], "max_tokens": 0}, 400, "max_tokens=0 is below the minimum 1"),
    ({"prompt": [1], "max_tokens": "5"}, 400, "max_tokens must be an integer, got string '5'"),
    ({"prompt": [1], "max_tokens": True}, 400, "max_tokens must be an integer, got boolean"),
    ({"prompt": [1], "n": 17}, 400, "n=17 is above the limit 16 (--max-n)"),
    ({"prompt": [1], "n": 0}, 400, "n=0 is below the minimum 1"),
    ({"prompt": [[1]] * 33}, 400, "33 prompts, above the limit 32"),
    ({"prompt": [[1]] * 8, "n": 8}, 400, "64 completions (8 prompts x n=8) exceed what this server holds at once, "
                                         "max_batch 4 + max_queue 32 = 36"),
    ({"prompt": [1], "temperature": 3}, 400, "temperature=3 is outside [0, 2]"),
    ({"prompt": [1], "temperature": "hot"}, 400, "temperature must be a number, got string"),
    ({"prompt": [1], "top_p": 0}, 400, "top_p=0 is outside (0, 1]"),
    ({"prompt": [1], "top_k": -2}, 400, "top_k=-2 is below the minimum -1"),
    ({"prompt": [1], "seed": -1}, 400, "seed=-1 is below the minimum 0"),
    ({"prompt": [1], "stream": "yes"}, 400, "stream must be true or false"),
    ({"prompt": [1], "stop": 5}, 400, "stop must be a string or an array of strings"),
    ({"prompt": [1], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop holds 5 sequences, above the limit 4"),
    ({"prompt": [1], "stop": [""]}, 400, "stop holds an empty string"),
    ({"prompt": [1], "stop_token_ids": [1000]}, 400, "stop token id 1000 is out of range"),
    ({"prompt": [1], "logprobs": 6}, 400, "logprobs=6 is above the limit 5"),
    ({"prompt": [1], "best_of": 3}, 400, "best_of=3 differs from n=1"),
    ({"prompt": [1], "presence_penalty": 0.5}, 400, "presence_penalty=0.5 is not supported"),
    ({"prompt": [1], "logit_bias": {"5": 1}}, 400, "logit_bias is not supported"),
    ({"prompt": [1], "stream_options": {"include_usage": True}}, 400, "stream_options needs stream: true"),
    ({"prompt": [1], "model": "gpt-4"}, 404, "model 'gpt-4' does not exist: this server serves 'lm-shared'"),
]


def test_every_bad_request_gets_its_status_and_message_and_the_server_keeps_serving(server, reference_model):
    for body, status, message in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(f"{server.url}/v1/completions", content=content, timeout=TIMEOUT,
                              headers={"content-type": "application/json"})
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert message in error["message"], (body, error["message"])
        assert error["type"] in ("invalid_request_error", "not_found_error")
    good = post(server.url, {"prompt": [5, 17], "max_tokens": 5, "temperature": 0, "return_token_ids": True})
    assert good.json()["choices"][0]["token_ids"] == alone(reference_model, [5, 17], 5)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'gpt2_serve_rejected_requests_total{{reason="invalid_request"}} {len(BAD_REQUESTS)}' in metrics


def test_oversized_bodies_get_413_whether_or_not_they_declare_a_length(start_server, serve_exports):
    server = start_server(serve_exports["lm-shared"], max_body_bytes=4096)
    big = json.dumps({"prompt": "x" * 5000}).encode()
    declared = httpx.post(f"{server.url}/v1/completions", content=big, timeout=TIMEOUT)
    assert declared.status_code == 413
    assert f"request body of {len(big)} bytes exceeds the limit of 4096 bytes" in declared.json()["error"]["message"]

    def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    chunked = httpx.post(f"{server.url}/v1/completions", content=chunks(), timeout=TIMEOUT)
    assert chunked.status_code == 413 and "exceeds the limit of 4096 bytes" in chunked.json()["error"]["message"]
    assert post(server.url, {"prompt": [1, 2], "max_tokens": 2}).status_code == 200


def test_max_model_len_bounds_prompt_plus_completion_and_the_batch_cache(start_server, serve_exports,
                                                                         reference_model):
    server = start_server(serve_exports["lm-shared"], max_batch=2, max_model_len=24)
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["max_model_len"] == 24
    over = post(server.url, {"prompt": [1] * 20, "max_tokens": 5})
    assert over.status_code == 400
    assert ("prompt of 20 tokens + max_tokens 5 = 25 exceeds the context length --max-model-len 24: set "
            "max_tokens <= 4") in over.json()["error"]["message"]
    fits = post(server.url, {"prompt": [5, 17, 42], "max_tokens": 21, "temperature": 0, "return_token_ids": True})
    assert fits.json()["choices"][0]["token_ids"] == alone(reference_model, [5, 17, 42], 21)
    assert server.service.batcher._cache.max_length == 24  # 2 rows x 24 positions, not 2 x n_positions 64
    custom = start_server(serve_exports["lm-shared"], batcher_factory=slow_batcher(0.0), max_batch=2, max_model_len=24)
    assert custom.service.batcher._cache.max_length == 24  # an engine factory of one's own is capped the same way


def test_a_max_model_len_beyond_n_positions_is_refused_at_start(serve_exports):
    from runtime.serve import ServeConfig, Service

    with pytest.raises(ValueError, match="--max-model-len 65 exceeds the model's n_positions 64: lower it"):
        Service(ServeConfig(serve_exports["lm-shared"], max_model_len=65))


def test_an_export_without_tokenizer_takes_token_ids_only(start_server, serve_exports, reference_model):
    server = start_server(serve_exports["no-tokenizer"])
    response = post(server.url, {"prompt": "the cat", "max_tokens": 3})
    assert response.status_code == 400
    assert "has no tokenizer files" in response.json()["error"]["message"]
    assert "send token ids" in response.json()["error"]["message"]
    stop = post(server.url, {"prompt": [1, 2], "stop": "x"})
    assert stop.status_code == 400 and "use stop_token_ids" in stop.json()["error"]["message"]
    ids = post(server.url, {"prompt": [5, 17, 42], "max_tokens": 6, "temperature": 0}).json()
    assert ids["choices"][0]["token_ids"] == alone(reference_model, [5, 17, 42], 6)  # always returned
    assert ids["choices"][0]["text"] == ""
    streamed = joined(stream(server.url, {"prompt": [5, 17, 42], "max_tokens": 6, "temperature": 0}))
    assert streamed[0]["token_ids"] == ids["choices"][0]["token_ids"]


def test_an_unexpected_failure_is_a_json_500_not_plain_text(serve_exports):
    from starlette.testclient import TestClient

    from runtime.serve import ServeConfig, Service, create_app

    service = Service(ServeConfig(serve_exports["lm-shared"]))

    def broken():
        raise RuntimeError("boom")

    service.unavailable = broken
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        response = client.post("/v1/completions", json={"prompt": [1, 2]})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in response.json()["error"]["message"]


# ---- auth -------------------------------------------------------------------------------------------------------


def test_an_api_key_guards_every_route_but_health(start_server, serve_exports):
    server = start_server(serve_exports["lm-shared"], api_key="s3cret-key")
    assert httpx.get(f"{server.url}/health").status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions"),
                         ("GET", "/nowhere")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}, {"Authorization": "Bearer s3cret-key-longer"}):
            response = httpx.request(method, f"{server.url}{path}", headers=headers, json={"prompt": [1]})
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
    good = {"Authorization": "Bearer s3cret-key"}
    assert httpx.get(f"{server.url}/v1/models", headers=good).status_code == 200
    assert post(server.url, {"prompt": [1, 2], "max_tokens": 2}, headers=good).status_code == 200
    assert stream(server.url, {"prompt": [1, 2], "max_tokens": 2}, headers=good)
    metrics = httpx.get(f"{server.url}/metrics", headers=good).text  # refused keys are counted too
    assert 'gpt2_serve_http_requests_total{route="/v1/models",status="401"} 5' in metrics


def test_the_api_key_comes_from_the_environment_too(monkeypatch):
    from runtime.serve.config import API_KEY_ENV, ServeConfig

    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeConfig.api_key_from_env(None) == "from-env"
    assert ServeConfig.api_key_from_env("explicit") == "explicit"
    monkeypatch.setenv(API_KEY_ENV, "")
    assert ServeConfig.api_key_from_env(None) is None


# ---- load: queue bound, disconnects ---------------------------------------------------------------------------------


def test_past_max_queue_requests_get_429_with_retry_after(start_server, serve_exports):
    server = start_server(serve_exports["lm-shared"], batcher_factory=slow_batcher(0.05), max_batch=1, max_queue=1)
    engine = server.service.batcher
    long = {"prompt": [1, 2, 3], "max_tokens": 40, "ignore_eos": True}
    first = raw_request(server.port, long)
    wait_until(lambda: engine.stats().active == 1, 5)
    second = raw_request(server.port, long)
    wait_until(lambda: engine.stats().queue_depth == 1, 5)
    refused = post(server.url, {"prompt": [1, 2], "max_tokens": 2})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "at capacity (1 requests waiting, --max-queue)" in refused.json()["error"]["message"]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    first.close()
    second.close()
    wait_until(lambda: engine.stats().active == 0 and engine.stats().queue_depth == 0, 5)
    assert post(server.url, {"prompt": [1, 2], "max_tokens": 2}).status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_slot_within_a_step(start_server, serve_exports):
    delay = 0.05
    server = start_server(serve_exports["lm-shared"], batcher_factory=slow_batcher(delay), max_batch=2)
    engine = server.service.batcher
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=TIMEOUT,
                      json={"prompt": [1, 2, 3], "max_tokens": 50, "ignore_eos": True, "stream": True}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert engine.stats().active == 1
    # Closing the response hangs up; the engine must drop the request at its next step boundary.
    freed = wait_until(lambda: engine.stats().active == 0, 2)
    assert freed < 4 * delay + 0.1, freed
    generated = engine.stats().tokens_generated
    time.sleep(5 * delay)
    assert engine.stats().tokens_generated == generated < 50


def test_a_queued_non_streaming_client_that_hangs_up_never_runs(start_server, serve_exports):
    server = start_server(serve_exports["lm-shared"], batcher_factory=slow_batcher(0.03), max_batch=1)
    engine = server.service.batcher
    running = raw_request(server.port, {"prompt": [1, 2, 3], "max_tokens": 20, "ignore_eos": True})
    wait_until(lambda: engine.stats().active == 1, 5)
    queued = raw_request(server.port, {"prompt": [4, 5, 6], "max_tokens": 20, "ignore_eos": True})
    wait_until(lambda: engine.stats().queue_depth == 1, 5)
    queued.close()
    reply = running.recv(65536)
    while b'"finish_reason"' not in reply:
        reply += running.recv(65536)
    running.close()
    wait_until(lambda: engine.stats().active == 0 and engine.stats().queue_depth == 0, 5)
    assert engine.stats().tokens_generated == 20  # the hung-up request never generated a token
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'gpt2_serve_rejected_requests_total{reason="client_disconnected"} 1' in metrics


# ---- metrics ----------------------------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_and_latencies(server):
    for i in range(3):
        post(server.url, {"prompt": [1, 2, i], "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    stream(server.url, {"prompt": [4, 5], "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    post(server.url, {"prompt": 7})
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text

    def value(sample: str) -> float:
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        assert match, sample
        return float(match.group(1))

    assert value('gpt2_serve_http_requests_total{route="/v1/completions",status="200"}') == 4
    assert value('gpt2_serve_http_requests_total{route="/v1/completions",status="400"}') == 1
    assert value('gpt2_serve_completions_total{finish_reason="length"}') == 4
    assert value("gpt2_serve_generated_tokens_total") == 20
    assert value("gpt2_serve_prompt_tokens_total") == 11
    assert value("gpt2_serve_time_to_first_token_seconds_count") == 4
    assert value("gpt2_serve_inter_token_latency_seconds_count") == 16
    assert value('gpt2_serve_inter_token_latency_seconds_bucket{le="+Inf"}') == 16
    assert value("gpt2_serve_queue_depth") == 0 and value("gpt2_serve_max_batch") == 4
    assert value("gpt2_serve_batch_size") >= 1 and value("gpt2_serve_engine_tokens_total") >= 20
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "request_duration_seconds"):
        assert f"# TYPE gpt2_serve_{name} histogram" in text


# ---- an unmodified OpenAI client ----------------------------------------------------------------------------------


def test_the_openai_client_works_unchanged(server, reference_model):
    openai = pytest.importorskip("openai", reason="the openai package is not installed (optional)")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["lm-shared"]
    completion = client.completions.create(model="lm-shared", prompt="the cat", max_tokens=8, temperature=0)
    expected = alone(reference_model, reference_model.tokenizer.encode("the cat"), 8)
    eos = reference_model.eos_token_id
    assert completion.choices[0].text == reference_model.tokenizer.decode([t for t in expected if t != eos])
    assert completion.usage.completion_tokens == len(expected)
    pieces = client.completions.create(model="lm-shared", prompt="the cat", max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == completion.choices[0].text
    with pytest.raises(openai.BadRequestError, match="exceeds the context length"):
        client.completions.create(model="lm-shared", prompt="the cat", max_tokens=100)
