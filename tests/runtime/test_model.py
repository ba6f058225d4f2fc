"""runtime.load(folder): the torch-free runtime generates exactly transformers' tokens and embeds in services.

transformers 4.57 is the oracle: same checkpoint, same prompts, `generate()` with the same options.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import transformers

import runtime
from runtime.manifest import ManifestError
from runtime.providers import GraphMismatchError, ProviderUnavailableError

from .sessions import SlowSession


@pytest.fixture(scope="module")
def hf_lm(hf_checkpoints):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_checkpoints["lm"]).eval()


@pytest.fixture(scope="module", params=["lm", "lm-plain", "lm-shared"])
def lm(exports, request):
    """The LM export in each graph variant: fused (default), plain (traced), fused with the in-place cache."""
    return runtime.load(exports[request.param])


def _batch():
    ids = np.array([[5, 17, 42, 99, 7, 250], [316, 316, 316, 80, 81, 82], [316, 12, 13, 14, 15, 16]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    return ids, mask


def _hf_generate(hf, ids, mask, **options):
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pad_token_id=316, **options)
    return out.numpy()


def test_decoder_logits_follow_transformers_step_by_step(lm, hf_lm):
    ids, mask = _batch()
    decoder = lm.backend.decoder(3, 16)
    positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    step_ids, past = ids, None
    for step in range(6):
        logits = decoder.step(step_ids, mask, positions[:, -step_ids.shape[1] :])
        with torch.no_grad():
            out = hf_lm(
                torch.from_numpy(step_ids),
                attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(positions[:, -step_ids.shape[1] :]),
                past_key_values=past,
            )
        past = out.past_key_values
        np.testing.assert_allclose(logits, out.logits[:, -1].numpy(), atol=1e-4, rtol=1e-4, err_msg=f"step {step}")
        step_ids = logits.argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
        positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)


def test_a_step_returns_logits_that_the_next_step_does_not_overwrite(lm):
    # The decoders reuse one logits buffer across steps (and the in-place one a single binding): what a step
    # returned is the caller's.
    ids, mask = _batch()
    decoder = lm.backend.decoder(3, 16)
    positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    first = decoder.step(ids, mask, positions)
    kept = first.copy()
    token = first.argmax(-1)[:, None].astype(np.int64)
    mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    second = decoder.step(token, mask, (np.cumsum(mask, -1) - 1)[:, -1:])
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)


def test_greedy_equals_transformers_on_a_left_padded_batch(lm, hf_lm):
    ids, mask = _batch()
    ours = lm.generate(ids, mask, max_new_tokens=12)
    np.testing.assert_array_equal(ours, _hf_generate(hf_lm, ids, mask, max_new_tokens=12, do_sample=False))


def test_greedy_equals_transformers_with_eos_inside_the_generation(lm, hf_lm):
    ids, mask = _batch()
    free = lm.generate(ids, mask, max_new_tokens=10)
    eos = int(free[1, 8])  # a token greedy produces mid-way for row 1
    ours = lm.generate(ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=316)
    theirs = _hf_generate(hf_lm, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=eos)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[1, 9:] == 316).all()  # finished rows are padded


@pytest.mark.parametrize("with_mask", [True, False])
def test_eos_option_without_a_pad_id_pads_with_that_eos_as_transformers(lm, hf_lm, with_mask):
    # No pad id anywhere: transformers pads ended rows with the first eos id of this call (the option, not the
    # config's eos), and infers no mask when that pad is an eos id.
    ids, mask = _batch()
    eos = int(lm.generate(ids, mask, max_new_tokens=10)[1, 8])
    mask = mask if with_mask else None
    ours = lm.generate(ids, mask, max_new_tokens=10, eos_token_id=eos)
    with torch.no_grad():
        theirs = hf_lm.generate(
            torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask),
            max_new_tokens=10, do_sample=False, eos_token_id=eos,
        ).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "beams, returns, penalty, early", [(3, 1, 1.0, False), (4, 2, 0.5, True), (2, 2, 2.0, "never")]
)
def test_beam_search_equals_transformers(lm, hf_lm, beams, returns, penalty, early):
    ids, mask = _batch()
    options = dict(
        max_new_tokens=8, num_beams=beams, num_return_sequences=returns, length_penalty=penalty, early_stopping=early
    )
    np.testing.assert_array_equal(lm.generate(ids, mask, **options), _hf_generate(hf_lm, ids, mask, **options))


def test_single_prompt_without_mask(lm, hf_lm):
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    ours = lm.generate(ids, max_new_tokens=15)
    with torch.no_grad():
        theirs = hf_lm.generate(torch.from_numpy(ids), max_new_tokens=15, do_sample=False, pad_token_id=316).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_without_a_mask_pad_tokens_in_the_prompt_are_masked_as_transformers_does(lm, hf_lm, num_beams):
    # transformers infers attention_mask = ids != pad_token_id when pad is set, present and not an eos id:
    # a left-padded batch given without its mask, and a pad id inside a prompt, are both masked out.
    ids = np.array([[7, 7, 5, 17, 42, 99], [80, 7, 81, 82, 83, 84]])
    ours = lm.generate(ids, max_new_tokens=8, pad_token_id=7, num_beams=num_beams)
    masked = lm.generate(ids, (ids != 7).astype(np.int64), max_new_tokens=8, pad_token_id=7, num_beams=num_beams)
    with torch.no_grad():
        theirs = hf_lm.generate(torch.from_numpy(ids), max_new_tokens=8, do_sample=False, pad_token_id=7,
                                num_beams=num_beams).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, masked)


def test_seeded_sampling_is_reproducible(lm):
    ids, mask = _batch()
    options = dict(max_new_tokens=10, do_sample=True, top_k=40, top_p=0.95, temperature=5.0)
    first = lm.generate(ids, mask, seed=7, **options)
    np.testing.assert_array_equal(first, lm.generate(ids, mask, seed=7, **options))
    assert not np.array_equal(first, lm.generate(ids, mask, seed=8, **options))


def test_sampling_several_sequences_per_prompt(lm):
    ids, mask = _batch()
    out = lm.generate(ids, mask, max_new_tokens=5, do_sample=True, num_return_sequences=2, seed=3, temperature=5.0)
    assert out.shape == (6, 11)
    np.testing.assert_array_equal(out[::2, :6], ids)


def test_streaming_text_equals_the_full_decode(lm):
    prompt = "the cat sat on the"
    pieces = list(lm.stream(prompt, max_new_tokens=16))
    assert len(pieces) > 1
    assert "".join(pieces) == lm.generate_text(prompt, max_new_tokens=16)


def test_a_stream_left_early_stops_decoding(lm, monkeypatch):
    session = SlowSession(lm.backend.session, 0.01)  # counts decode steps, paced so 41 take 0.4 s
    monkeypatch.setattr(lm.backend, "session", session)
    stream = lm.stream("the cat", max_new_tokens=40, eos_token_id=None, min_new_tokens=40)
    next(stream)
    stream.close()  # as `break` does; returns once the decoding thread has stopped
    assert 1 <= session.runs < 20, session.runs  # 41 (prefill + 40) had it run to the end
    assert not any(t.name == "runtime-stream" for t in threading.enumerate())


def test_generate_text_ends_at_the_eos_option_like_stream(lm):
    prompts = ["the dog sat", "héllo wörld, café and the dog"]
    ids = lm.tokenizer.encode(prompts[0])
    tokens = lm.generate(np.array([ids]), max_new_tokens=8)[0, len(ids) :].tolist()
    eos = tokens[1]  # ends the first prompt's continuation after one token; the other row runs on, padded
    texts = lm.generate_text(prompts, max_new_tokens=8, eos_token_id=eos, pad_token_id=65)
    assert texts[0] == lm.tokenizer.decode(tokens[: tokens.index(eos)])
    assert texts[0] == "".join(lm.stream(prompts[0], max_new_tokens=8, eos_token_id=eos, pad_token_id=65))


def test_generate_text_batches_prompts_like_single_calls(lm):
    prompts = ["the cat", "héllo wörld, café and the dog", "🙂"]
    batched = lm.generate_text(prompts, max_new_tokens=8)
    assert batched == [lm.generate_text(p, max_new_tokens=8) for p in prompts]


def test_threads_share_one_model_and_match_serial_calls(lm):
    ids, mask = _batch()
    jobs = [dict(max_new_tokens=6 + i % 4, num_beams=1 + i % 3) for i in range(12)]
    serial = [lm.generate(ids, mask, **job) for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(lambda job: lm.generate(ids, mask, **job), jobs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fp16_export_generates_like_fp32_on_clear_choices(exports, lm):
    half = runtime.load(exports["lm-fp16"])
    ids, mask = _batch()
    assert half.generate(ids, mask, max_new_tokens=6).shape == (3, 12)
    agree = (half.generate(ids, mask, max_new_tokens=6) == lm.generate(ids, mask, max_new_tokens=6)).mean()
    assert agree > 0.8


def test_forward_returns_every_position_of_a_left_padded_batch_as_transformers(lm, hf_lm):
    ids, mask = _batch()
    positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    logits = lm.forward({"input_ids": ids, "attention_mask": mask, "position_ids": positions})["logits"]
    with torch.no_grad():
        expected = hf_lm(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         position_ids=torch.from_numpy(positions)).logits.numpy()
    assert logits.shape == expected.shape  # the fused session decodes with logits_to_keep 1; forward keeps every one
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-4)


def test_classify_matches_transformers(exports, hf_checkpoints):
    model = runtime.load(exports["seq-cls"])
    texts = ["the cat sat", "a much longer sentence about the dog on the log", "🙂"]
    result = model.classify(texts)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(hf_checkpoints["seq-cls"]).eval()
    for text, probabilities in zip(texts, result.probabilities, strict=True):
        ids = torch.tensor([model.tokenizer.encode(text)])
        with torch.no_grad():
            expected = hf(ids).logits.softmax(-1)[0].numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert result.labels[0].startswith("LABEL_") and result.probabilities.shape == (3, 3)


def test_score_choices_matches_transformers(exports, hf_checkpoints):
    model = runtime.load(exports["double-heads"])
    context, choices = "the cat sat on the", [" mat", " log of the dog"]
    scores = model.score_choices(context, choices)
    hf = transformers.GPT2DoubleHeadsModel.from_pretrained(hf_checkpoints["double-heads"]).eval()
    for choice, score in zip(choices, scores, strict=True):
        ids = torch.tensor([[model.tokenizer.encode(context + choice)]])
        with torch.no_grad():
            expected = hf(ids, mc_token_ids=torch.tensor([[ids.shape[-1] - 1]])).mc_logits[0, 0].item()
        assert abs(score - expected) < 1e-4


def test_the_runtime_never_imports_torch(exports):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import runtime
        model = runtime.load({str(exports["lm"])!r})
        print(model.generate_text("the cat", max_new_tokens=5))
        assert "models" not in sys.modules and "transformers" not in sys.modules
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr


# ---- bad input ---------------------------------------------------------------------------------


def test_prompt_plus_new_tokens_beyond_n_positions_names_both(lm):
    with pytest.raises(ValueError, match="prompt of 60 tokens \\+ max_new_tokens 10 = 70 exceeds n_positions 64"):
        lm.generate(np.ones((1, 60), dtype=np.int64), max_new_tokens=10)


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.zeros((1, 0), dtype=np.int64), "the prompt is empty"),
        (np.array([[1, 317]]), "token id 317 is out of range for vocab_size 317"),
        (np.array([[1, -2]]), "token id -2 is out of range"),
        (np.array([[1.0, 2.0]]), "integer token ids, got dtype float64"),
        (np.ones((1, 2, 3), dtype=np.int64), "expected \\(batch, sequence\\)"),
        ([], "the prompt is empty"),
        ([[1, 2], [3]], "input_ids rows have different lengths: pad every prompt on the left"),
    ],
)
def test_bad_input_ids(lm, ids, message):
    with pytest.raises(ValueError, match=message):
        lm.generate(ids, max_new_tokens=2)


def test_bad_attention_masks(lm):
    with pytest.raises(ValueError, match="attention_mask has shape \\(1, 2\\), expected \\(1, 3\\)"):
        lm.generate(np.array([[1, 2, 3]]), np.array([[1, 1]]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        lm.generate(np.array([[1, 2, 3]]), np.array([[1, 2, 1]]))
    with pytest.raises(ValueError, match="all zeros"):
        lm.generate(np.array([[1, 2, 3]]), np.array([[0, 0, 0]]))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(do_sample=True, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_invalid_options(lm, options, message):
    with pytest.raises(ValueError, match=message):
        lm.generate(np.array([[1, 2]]), **options)


def test_text_methods_name_bad_arguments(exports):
    lm = runtime.load(exports["lm"])
    with pytest.raises(TypeError, match="prompts must be a string or a list of strings, got int"):
        lm.generate_text(5)
    with pytest.raises(TypeError, match="each prompt must be str, got int"):
        lm.generate_text(["the cat", 5])
    with pytest.raises(ValueError, match="num_return_sequences=1"):
        next(lm.stream("the cat", do_sample=True, num_return_sequences=2))
    with pytest.raises(TypeError, match="prompts must be str, got list"):
        next(lm.stream(["the cat"]))
    classifier = runtime.load(exports["seq-cls"])
    with pytest.raises(ValueError, match="no texts given"):
        classifier.classify([])
    with pytest.raises(ValueError, match="a text of 121 tokens exceeds n_positions 64"):
        classifier.classify(["the cat", "the cat " * 40])
    scorer = runtime.load(exports["double-heads"])
    with pytest.raises(TypeError, match="choices must be a list of strings, got str"):
        scorer.score_choices("the cat", " sat")  # not three one-letter choices
    with pytest.raises(ValueError, match="context \\+ choice of 122 tokens exceeds n_positions 64"):
        scorer.score_choices("the cat " * 40, [" sat"])


def test_unknown_option_lists_the_valid_ones(lm):
    with pytest.raises((TypeError, ValueError), match="max_new_tokens"):
        lm.generate(np.array([[1, 2]]), max_tokens=3)


@pytest.mark.parametrize("threads", [0, "2", 1.5, True])
def test_a_bad_thread_count_is_refused_by_name(exports, threads):
    with pytest.raises(ValueError, match=f"threads must be an integer >= 1, got {threads!r}"):
        runtime.load(exports["lm"], threads=threads)


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ManifestError, match="has no export.json"):
        runtime.load(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{oops", "export.json is not valid JSON"),
    ("[1, 2]", r"is not a gpt2-export manifest \(format 'list'\)"),
    ('{"format": "gpt2-export", "format_version": 9}', "format_version 9, this runtime reads version 1: re-export"),
])
def test_unreadable_manifests_name_the_file_and_the_fix(tmp_path, text, message):
    (tmp_path / "export.json").write_text(text)
    with pytest.raises(ManifestError, match=message):
        runtime.load(tmp_path)


def test_corrupt_model_file(exports, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exports["lm"], broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(GraphMismatchError, match="cannot load .*model.onnx.*re-export"):
        runtime.load(broken)


def test_model_file_from_another_export(exports, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(exports["lm"], mixed)
    shutil.copyfile(exports["double-heads"] / "model.onnx", mixed / "model.onnx")
    with pytest.raises(GraphMismatchError, match="does not match its export.json"):
        runtime.load(mixed)


def test_heads_that_cannot_generate(exports):
    with pytest.raises(ValueError, match="generate\\(\\) needs an export of head lm.*'seq-cls' head"):
        runtime.load(exports["seq-cls"]).generate(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="classify\\(\\) needs an export of head seq-cls"):
        runtime.load(exports["lm"]).classify("x")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="checks the message on a machine without CUDA",
)
def test_unavailable_provider_lists_the_available_ones(exports):
    with pytest.raises(ProviderUnavailableError, match="available: .*CPUExecutionProvider"):
        runtime.load(exports["lm"], provider="cuda")
    with pytest.raises(ValueError, match="unknown provider 'gpu'"):
        runtime.load(exports["lm"], provider="gpu")


def test_missing_tokenizer_is_reported_only_when_text_is_used(exports, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(exports["lm"], bare)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):  # tokenizer.json (genai's) is read when alone
        (bare / name).unlink()
    model = runtime.load(bare)
    assert model.generate(np.array([[1, 2, 3]]), max_new_tokens=2).shape == (1, 5)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        model.generate_text("hello")


def test_the_default_length_stops_at_the_position_table_as_in_transformers(lm, hf_lm):
    ids = np.random.default_rng(4).integers(0, 316, (1, 55))
    ours = lm.generate(ids, np.ones_like(ids), eos_token_id=None)
    with torch.no_grad():
        theirs = hf_lm.generate(torch.from_numpy(ids), attention_mask=torch.ones(1, 55, dtype=torch.long),
                                eos_token_id=None).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape[1] == 64  # 9 new tokens, not 20


def test_a_profiled_load_writes_onnx_runtimes_trace_of_every_run_and_the_tokens_are_unchanged(exports, tmp_path):
    import json

    plain = runtime.load(exports["lm"])
    profiled = runtime.load(exports["lm"], profile=tmp_path / "trace")
    ids = np.array([[5, 17, 42, 99]])
    tokens = profiled.generate(ids, max_new_tokens=3)
    assert np.array_equal(tokens, plain.generate(ids, max_new_tokens=3))
    trace = json.loads(profiled.end_profiling().read_text())
    assert sum(e["name"] == "model_run" for e in trace) == 3  # the prompt, then one run per token after the first
    assert any(e["cat"] == "Node" and e["args"].get("op_name") == "MultiHeadAttention" for e in trace)
    with pytest.raises(RuntimeError, match=r"loaded without profiling: load it with runtime.load\(folder, profile="):
        plain.end_profiling()


def test_profiling_a_tensorrt_engine_folder_is_refused_with_the_tools_that_can(tmp_path):
    (tmp_path / "engine.json").write_text("{}")
    with pytest.raises(ValueError, match="TensorRT engine folder: profile an engine with trtexec"):
        runtime.load(tmp_path, profile=tmp_path / "trace")
