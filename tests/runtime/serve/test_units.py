"""The pieces without a server: request parsing defaults, streamed text with stop strings, Prometheus text."""

from __future__ import annotations

import json

import pytest

from runtime.serve.config import ServeConfig
from runtime.serve.metrics import Counter, Histogram
from runtime.serve.schemas import APIError, parse_completion_request
from runtime.serve.streaming import ChoiceText, sse_event
from runtime.tokenizer import Tokenizer


def _parse(body: dict):
    return parse_completion_request(json.dumps(body).encode(), ServeConfig(folder="."))


def test_openai_defaults_and_extension_spellings():
    params = _parse({"prompt": "hi"})
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.n) == (16, 1.0, 1.0, 0, 1)
    assert (params.stream, params.echo, params.logprobs, params.return_token_ids, params.stop) == (
        False, False, None, False, ())
    assert _parse({"prompt": "hi", "top_k": -1}).top_k == 0  # vLLM's "off"
    assert _parse({"prompt": "hi", "logprobs": True}).logprobs == 0
    assert _parse({"prompt": "hi", "max_tokens": 5.0}).max_tokens == 5
    assert _parse({"prompt": "hi", "stop": "x"}).stop == ("x",)
    assert _parse({"prompt": ["a", "b"]}).batched and not _parse({"prompt": [1, 2]}).batched
    assert _parse({"prompt": "hi", "best_of": 2, "n": 2, "user": "me", "presence_penalty": 0}).n == 2


def test_bad_values_are_400_naming_the_parameter():
    with pytest.raises(APIError) as error:
        _parse({"prompt": "hi", "top_p": 1.5})
    assert (error.value.status, error.value.param) == (400, "top_p")
    assert error.value.body()["error"]["message"] == "top_p=1.5 is outside (0, 1]"


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.gpt2()


def _run(text: ChoiceText, ids: list[int]) -> list[str]:
    return [text.feed(i) for i in ids] + [text.finish()]


def test_choice_text_joins_to_the_decoded_text_and_drops_the_stop_token(gpt2):
    ids = gpt2.encode("Hello world, café 🙂!")
    pieces = _run(ChoiceText(gpt2, (), frozenset({gpt2.eos_token_id})), [*ids, gpt2.eos_token_id])
    assert "".join(pieces) == "Hello world, café 🙂!"
    assert all("\ufffd" not in p for p in pieces)  # the emoji's bytes are held until complete


def test_a_stop_string_is_held_back_while_it_may_start_and_cut_when_it_matches(gpt2):
    ids = gpt2.encode("one two three four")
    text = ChoiceText(gpt2, ("thr", "xyz"), frozenset())
    pieces = []
    for token in ids:
        pieces.append(text.feed(token))
        if text.stopped:
            break
    assert "".join(pieces) == "one two " and text.stopped and text.text == "one two "
    partial = ChoiceText(gpt2, ("two three!",), frozenset())
    assert "".join(partial.feed(t) for t in gpt2.encode("one two three")) == "one "  # "two three" may yet stop
    assert partial.feed(gpt2.encode(" four")[0]) == "two three four"  # it did not: released with the next token
    assert partial.finish() == "" and not partial.stopped


def test_without_a_tokenizer_there_is_no_text():
    text = ChoiceText(None, (), frozenset())
    assert _run(text, [1, 2, 3]) == ["", "", "", ""]


def test_prometheus_text_format():
    counter = Counter("c_total", "Help.", ("route",))
    counter.inc(2, 'a"b')
    assert list(counter.samples()) == ['c_total{route="a\\"b"} 2']
    histogram = Histogram("h_seconds", "Help.", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert list(histogram.samples()) == ['h_seconds_bucket{le="0.1"} 2', 'h_seconds_bucket{le="1"} 3',
                                         'h_seconds_bucket{le="+Inf"} 4', "h_seconds_sum 3.65",
                                         "h_seconds_count 4"]


def test_sse_events_are_one_data_line():
    assert sse_event({"a": "x\ny"}) == b'data: {"a":"x\\ny"}\n\n'


@pytest.mark.parametrize(("settings", "message"), [
    (dict(max_batch=0), "max_batch=0 must be an integer >= 1"),
    (dict(max_queue=-1), "max_queue=-1 must be an integer >= 0"),
    (dict(max_model_len=1), "max_model_len=1 must be an integer >= 2"),
    (dict(max_batch=True), "max_batch=True must be an integer >= 1"),
    (dict(port=70000), "port=70000 is not a TCP port"),
    (dict(port="8000"), "port='8000' is not a TCP port: use an integer"),
    (dict(port=True), "port=True is not a TCP port"),
    (dict(host=""), "host='' must be an address"),
    (dict(host="  "), "host='  ' must be an address"),
    (dict(drain_timeout=10**400), "drain_timeout=1000.* must be a number of seconds >= 0"),
    (dict(api_key=5), "the API key must be a string, got int"),
    (dict(keep_alive_timeout=float("nan")), "keep_alive_timeout=nan must be a number of seconds > 0"),
    (dict(drain_timeout=float("inf")), "drain_timeout=inf must be a number of seconds >= 0"),
    (dict(threads=0), "threads=0 must be an integer >= 1"),
    (dict(threads="2"), "threads='2' must be an integer >= 1"),
    (dict(drain_timeout=-1.0), "drain_timeout=-1.0 must be a number of seconds >= 0"),
    (dict(drain_timeout=None), "drain_timeout=None must be a number of seconds >= 0"),
    (dict(keep_alive_timeout=0.0), "keep_alive_timeout=0.0 must be a number of seconds > 0"),
    (dict(keep_alive_timeout="5"), "keep_alive_timeout='5' must be a number of seconds > 0"),
    (dict(max_model_len="64"), "max_model_len='64' must be an integer >= 2"),
    (dict(api_key="  "), "the API key is empty"),
])
def test_a_bad_setting_is_refused_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(folder=".", **settings)
