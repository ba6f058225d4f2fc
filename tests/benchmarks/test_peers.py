"""The peer backends of `gpt2-export bench` (llama.cpp, CTranslate2): finding them, converting, parsing, skipping.

llama-bench's output is parsed from text it printed here (build 0c1e570, llama-cpp-python 0.3.36's vendored
llama.cpp). CTranslate2 converts and runs the tiny checkpoints when it is installed (the `peers` extra); a
llama.cpp build is too slow to make in CI, so its conversion test runs only when $GPT2_EXPORT_LLAMA_CPP names
one (README "Performance (CPU)"), and says so when skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import BenchConfig, BenchConfigError, ctranslate2_peer, llama_cpp, peer_checkpoint
from benchmarks.config import PEERS, parse_peers

# `llama-bench -m model-q8_0.gguf -t 2 -p 0 -n 2 -d 0,8 -r 2 -o json`, trimmed to the fields it is read for.
BENCH_JSON = """main: some log line first
[
  {"build_commit": "0c1e570", "model_type": "gpt2 ?B Q8_0", "model_size": 3561860, "n_threads": 2,
   "type_k": "f16", "n_prompt": 0, "n_gen": 2, "n_depth": 0, "avg_ns": 835789,
   "samples_ns": [ 888888, 782690 ]},
  {"build_commit": "0c1e570", "model_type": "gpt2 ?B Q8_0", "model_size": 3561860, "n_threads": 2,
   "type_k": "f16", "n_prompt": 0, "n_gen": 2, "n_depth": 8, "avg_ns": 7031315,
   "samples_ns": [ 13140651, 921979 ]},
  {"build_commit": "0c1e570", "n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ns": 1000, "samples_ns": [1000]}
]
"""
# The same command's default markdown output (its column padding shortened).
BENCH_MARKDOWN = """\
| model   |   size |   params | backend   | threads |   test |   t/s |
| --- | ---: | ---: | --- | ---: | ---: | ---: |
| gpt2 ?B Q8_0   |   3.40 MiB |   3.32 M | CPU   |   2 |   pp512 |   5000.00 ± 1.00 |
| gpt2 ?B Q8_0   |   3.40 MiB |   3.32 M | CPU   |   2 |   tg2 |   3.94 ± 0.00 |
| gpt2 ?B Q8_0   |   3.40 MiB |   3.32 M | CPU   |   2 |   tg2 @ d8 |   4.12 ± 0.02 |

build: 0c1e570 (1)
"""
HAS_CT2 = importlib.util.find_spec("ctranslate2") is not None


def test_llama_bench_json_gives_seconds_per_step_per_sample_and_depth():
    rows = llama_cpp.parse_bench_json(BENCH_JSON)
    assert [row["depth"] for row in rows] == [0, 8]  # the prompt-processing test is not a decode test
    assert rows[0]["step_s"] == pytest.approx([888888 / 2e9, 782690 / 2e9])  # a sample times n_gen = 2 steps
    assert rows[1]["step_s"] == pytest.approx([13140651 / 2e9, 921979 / 2e9])
    assert rows[0]["type_k"] == "f16" and rows[0]["build_commit"] == "0c1e570" and rows[0]["n_threads"] == 2


def test_llama_bench_markdown_gives_one_mean_step_per_test():
    rows = llama_cpp.parse_bench_markdown(BENCH_MARKDOWN)
    assert [(row["depth"], row["n_gen"]) for row in rows] == [(0, 2), (8, 2)]
    assert rows[0]["step_s"] == pytest.approx([1 / 3.94]) and rows[1]["step_s"] == pytest.approx([1 / 4.12])


@pytest.mark.parametrize("text, message", [("error: failed to load model", "no JSON array"),
                                           ("[{broken", "does not parse")])
def test_llama_bench_output_that_is_not_json_names_what_it_printed(text, message):
    with pytest.raises(llama_cpp.LlamaCppError, match=message):
        llama_cpp.parse_bench_json(text)
    with pytest.raises(llama_cpp.LlamaCppError, match="no table"):
        llama_cpp.parse_bench_markdown(text)


def test_a_depth_llama_bench_did_not_report_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(llama_cpp, "_run", lambda *args, **kwargs: BENCH_JSON)
    tool = llama_cpp.LlamaCpp(tmp_path / "llama-bench", tmp_path / "llama-quantize", tmp_path / "convert.py")
    result = llama_cpp.decode_round(tool, tmp_path / "m.gguf", [0, 8], 2, 2)
    assert set(result["positions"]) == {"0", "8"} and result["info"]["model_type"] == "gpt2 ?B Q8_0"
    with pytest.raises(llama_cpp.LlamaCppError, match=r"no generation test at depth\(s\) \[32\]"):
        llama_cpp.decode_round(tool, tmp_path / "m.gguf", [0, 32], 2, 2)


def test_llama_bench_command_times_decode_after_each_depth(tmp_path):
    tool = llama_cpp.LlamaCpp(Path("/b/llama-bench"), Path("/b/llama-quantize"), Path("/s/convert_hf_to_gguf.py"))
    command = llama_cpp.bench_command(tool, Path("m.gguf"), [32, 900], 8, 2)  # 3 samples: a round's median
    assert command == ["/b/llama-bench", "-m", "m.gguf", "-t", "2", "-p", "0", "-n", "8", "-d", "32,900",
                       "-r", "3", "-o", "json"]


def _fake_llama_cpp(root: Path, tools_under: str = "build/bin") -> Path:
    """A source tree with a build folder: empty files where the tools and the converter would be."""
    (root / tools_under).mkdir(parents=True)
    for name in ("llama-bench", "llama-quantize"):
        (root / tools_under / name).write_text("")
    (root / "src" / "vendor" / "llama.cpp" / "gguf-py").mkdir(parents=True)
    (root / "src" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").write_text("")
    return root


def test_llama_cpp_is_found_from_a_build_folder_beside_its_source(tmp_path):
    root = _fake_llama_cpp(tmp_path / "peers")
    for given in (root, root / "build"):  # the whole tree, or the build folder (its source beside it)
        tool, reason = llama_cpp.find(given)
        assert reason is None and tool.bench == root / "build" / "bin" / "llama-bench"
        assert tool.quantize.name == "llama-quantize"
        assert tool.convert == root / "src" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"


def test_llama_cpp_skip_reasons_name_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(llama_cpp.ENV_VAR, raising=False)
    tool, reason = llama_cpp.find(None)
    assert tool is None and "no llama.cpp build given" in reason and "--llama-cpp DIR" in reason
    tool, reason = llama_cpp.find(tmp_path / "nowhere")
    assert tool is None and "does not exist" in reason
    (tmp_path / "empty").mkdir()
    tool, reason = llama_cpp.find(tmp_path / "empty")
    assert tool is None and "lacks llama-bench, llama-quantize, convert_hf_to_gguf.py" in reason
    assert "ninja -C build llama-bench llama-quantize" in reason
    monkeypatch.setenv(llama_cpp.ENV_VAR, str(_fake_llama_cpp(tmp_path / "from-env")))
    tool, reason = llama_cpp.find(None)
    assert reason is None and tool.bench.is_relative_to(tmp_path / "from-env")


def test_llama_cpp_search_is_bounded_and_wants_gguf_py(tmp_path):
    root = _fake_llama_cpp(tmp_path / "deep", tools_under="a/b/c/d/bin")  # 5 levels down: not searched
    tool, reason = llama_cpp.find(root)
    assert tool is None and "lacks llama-bench, llama-quantize" in reason and "3 folders deep" in reason
    root = _fake_llama_cpp(tmp_path / "no-gguf")
    (root / "src" / "vendor" / "llama.cpp" / "gguf-py").rmdir()
    tool, reason = llama_cpp.find(root)
    assert tool is None and "no gguf-py folder" in reason


def test_peers_option_parses_and_unknown_peers_are_refused():
    assert parse_peers(None) == parse_peers("all") == PEERS and parse_peers("none") == ()
    assert parse_peers("ct2-int8, llama-cpp-q4_0") == ("ct2-int8", "llama-cpp-q4_0")
    with pytest.raises(BenchConfigError, match="unknown peer.*llama-cpp-q5.*choose from"):
        BenchConfig(peers=("llama-cpp-q5",))


def test_ctranslate2_missing_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2" else real(name))
    reason = ctranslate2_peer.missing()
    assert "ctranslate2 is not installed" in reason and '.[peers]' in reason


def test_rebuilt_tokenizer_files_are_gpt2s_vocabulary():
    vocab, merges = peer_checkpoint.gpt2_tokenizer_files()
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256 and len(merges) == 50000
    assert vocab["Hello"] == 15496 and merges[0] == "Ġ t"  # GPT-2's first merge


def test_rebuilt_tokenizer_files_tokenize_as_tiktoken_does(tmp_path):
    from transformers import GPT2TokenizerFast

    from runtime.tokenizer import Tokenizer

    peer_checkpoint.write_tokenizer_files(tmp_path)
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\nĠ t\n")
    hf = GPT2TokenizerFast(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"))
    ours = Tokenizer.gpt2()
    text = "Hello world! GPT-2's byte-level BPE: naïve café, 12345 tokens\n\n  indented ✓ 日本語"
    assert hf.encode(text) == ours.encode(text)
    assert hf.encode("Hello world") == [15496, 995]


def test_a_smaller_vocabulary_keeps_a_prefix_of_gpt2s_ranks():
    vocab, merges = peer_checkpoint.gpt2_tokenizer_files(300)
    assert len(vocab) == 300 and vocab["<|endoftext|>"] == 299 and len(merges) == 299 - 256
    assert sorted(vocab.values()) == list(range(300))
    for merge in merges:  # every merge joins two tokens the vocabulary has
        left, right = merge.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    with pytest.raises(ValueError, match="vocab_size 256 cannot hold.*>= 257"):
        peer_checkpoint.gpt2_tokenizer_files(256)


def test_peer_checkpoint_copy_adds_n_ctx_and_keeps_or_rebuilds_the_tokenizer(hf_checkpoints, tmp_path):
    source = hf_checkpoints["lm"]  # has its own (tiny, trained) vocab.json + merges.txt
    before = (source / "config.json").read_text()
    copy = peer_checkpoint.prepare(source, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] and (source / "config.json").read_text() == before
    weights = next(copy.glob("*.safetensors"))
    assert weights.is_symlink() and weights.resolve() == next(source.glob("*.safetensors")).resolve()
    assert (copy / "vocab.json").resolve() == (source / "vocab.json").resolve()  # its own tokenizer, linked
    bare = tmp_path / "bare"  # the same weights, no tokenizer files: GPT-2's rebuilt, cut to vocab_size
    bare.mkdir()
    for path in source.iterdir():
        if path.name not in peer_checkpoint.TOKENIZER_FILES:
            os.symlink(path, bare / path.name)
    copy = peer_checkpoint.prepare(bare, tmp_path / "copy")  # the old copy is replaced
    vocab = json.loads((copy / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == config["vocab_size"] and not (copy / "vocab.json").is_symlink()


@pytest.mark.skipif(not HAS_CT2, reason='ctranslate2 is not installed (pip install -e ".[peers]")')
def test_ctranslate2_converts_and_decodes_transformers_greedy_tokens(hf_checkpoints, tmp_path):
    import torch
    import transformers

    checkpoint = hf_checkpoints["lm"]
    copy = peer_checkpoint.prepare(checkpoint, tmp_path / "copy")
    folder = ctranslate2_peer.convert(copy, tmp_path / "ct2-float32", "float32")
    assert (folder / "model.bin").is_file() and ctranslate2_peer.convert(copy, folder, "float32") == folder
    backend = ctranslate2_peer.CTranslate2Backend(folder, "float32", threads=1)
    model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    assert backend.vocab_size == model.config.vocab_size
    ids = np.random.default_rng(0).integers(0, backend.vocab_size, (3, 7))  # (B, T)
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(ids), attention_mask=torch.ones(3, 7, dtype=torch.long),
                                  max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(backend.greedy(ids, 6), expected[:, 7:].numpy())  # exact tokens, fp32
    steps = backend.decode_steps(ids, np.ones_like(ids), 5)
    assert len(steps) == 5 and all(0 < s < 10 for s in steps)
    with pytest.raises(ValueError, match="all-ones mask"):
        backend.decode_steps(ids, np.zeros_like(ids), 2)


@pytest.mark.skipif(not HAS_CT2, reason='ctranslate2 is not installed (pip install -e ".[peers]")')
def test_ctranslate2_converter_failure_quotes_its_output(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ctranslate2_peer.CTranslate2Error, match="--quantization int8 failed"):
        ctranslate2_peer.convert(tmp_path, tmp_path / "out", "int8", timeout_s=300)


LLAMA_CPP = os.environ.get(llama_cpp.ENV_VAR)


@pytest.mark.skipif(not LLAMA_CPP, reason=f"no llama.cpp build: set ${llama_cpp.ENV_VAR} to one (README "
                    "'Performance (CPU)', or .ci/build_llama_cpp, which CI runs: ~5 min on 2 cores)")
def test_llama_cpp_converts_quantizes_and_times_a_gpt2_vocabulary_checkpoint(tmp_path):
    import torch
    import transformers

    tool, reason = llama_cpp.find(LLAMA_CPP)
    assert reason is None, reason
    torch.manual_seed(0)  # GPT-2's vocabulary (its converter only knows that one), tiny everything else
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=50257)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "ckpt")
    copy = peer_checkpoint.prepare(tmp_path / "ckpt", tmp_path / "copy")
    sizes = {}
    for precision in ("F32", "Q8_0", "Q4_0"):
        gguf = llama_cpp.convert(tool, copy, tmp_path / "gguf", precision)
        sizes[precision] = gguf.stat().st_size
        result = llama_cpp.decode_round(tool, gguf, [1, 40], 2, 1)
        assert set(result["positions"]) == {"1", "40"} and all(s[0] > 0 for s in result["positions"].values())
        assert result["info"]["type_k"] == "f16"
    assert sizes["F32"] > 2.5 * sizes["Q8_0"] and sizes["Q8_0"] > sizes["Q4_0"]


def test_llama_cpp_conversion_of_a_retrained_vocabulary_names_the_fix(hf_checkpoints, tmp_path, monkeypatch):
    def refuse(command, what, timeout_s, env=None):
        raise llama_cpp.LlamaCppError(f"{what} failed (exit code 1): ... | NotImplementedError: BPE pre-tokenizer "
                                      "was not recognized - update get_vocab_base_pre()")

    monkeypatch.setattr(llama_cpp, "_run", refuse)
    tool = llama_cpp.LlamaCpp(tmp_path / "llama-bench", tmp_path / "llama-quantize", tmp_path / "convert.py")
    with pytest.raises(llama_cpp.LlamaCppError, match="vocab_size >= 50257 and GPT-2's vocab.json"):
        llama_cpp.convert(tool, hf_checkpoints["lm"], tmp_path / "gguf", "Q8_0")
    assert not (tmp_path / "gguf" / "model-f32.gguf").exists()
