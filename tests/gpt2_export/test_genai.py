"""genai_config.json and tokenizer.json: onnxruntime-genai runs our LM exports with our greedy tokens.

The config is checked field by field everywhere; the run through onnxruntime-genai happens where the package
is installed (`pip install onnxruntime-genai`), on a checkpoint with large random weights whose greedy
continuations depend on the whole prompt (the shared tiny checkpoint mostly repeats its last token).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources

import numpy as np
import pytest

import runtime
from gpt2_export.genai import GENAI_CONFIG, genai_config, tokenizer_files, write_genai_config
from runtime.manifest import Manifest
from runtime.tokenizer import ENDOFTEXT
from tests.conftest import write_hf_checkpoint

TEXTS = ["the cat sat on the mat.", "héllo wörld 日本語 🙂🎉 it's 1234", "  spaces   and\n\nnew lines\tTab", "Hello"]


@pytest.mark.parametrize("variant, shared", [("lm", False), ("lm-shared", True), ("lm-plain", False)])
def test_the_config_is_the_generic_decoder_with_our_names(exports, tmp_path, variant, shared):
    folder = tmp_path / variant
    shutil.copytree(exports[variant], folder)
    written = write_genai_config(folder)
    assert written == [GENAI_CONFIG, "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / GENAI_CONFIG).read_text())
    model, decoder = config["model"], config["model"]["decoder"]
    assert model["type"] == "decoder"
    assert (model["context_length"], model["vocab_size"], model["eos_token_id"], model["bos_token_id"]) == (64, 317,
                                                                                                           316, 316)
    assert model["pad_token_id"] == 316  # no pad id: the eos, as transformers falls back to
    assert (decoder["num_hidden_layers"], decoder["num_attention_heads"], decoder["num_key_value_heads"],
            decoder["head_size"], decoder["hidden_size"]) == (2, 4, 4, 8, 32)
    assert decoder["filename"] == "model.onnx"
    assert decoder["inputs"] == {"input_ids": "input_ids", "attention_mask": "attention_mask",
                                 "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                                 "past_value_names": "past_key_values.%d.value"}
    assert decoder["outputs"] == {"logits": "logits", "present_key_names": "present.%d.key",
                                  "present_value_names": "present.%d.value"}
    names = set(Manifest.load(folder).io.input_names()) | set(Manifest.load(folder).io.output_names())
    for i in range(2):
        assert {f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key"} <= names
    assert config["search"]["past_present_share_buffer"] is shared
    assert config["search"]["max_length"] == 64 and config["search"]["do_sample"] is False


def test_heads_other_than_lm_are_refused_with_the_reason(exports):
    with pytest.raises(ValueError, match="generates text from lm exports only; this folder holds the 'seq-cls' head"):
        genai_config(Manifest.load(exports["seq-cls"]))


def test_tokenizer_json_encodes_like_our_tokenizer(exports, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed")
    folder = tmp_path / "lm"
    shutil.copytree(exports["lm"], folder)
    write_genai_config(folder)
    ours = runtime.Tokenizer.from_folder(folder)
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert theirs.encode(text).ids == ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "GPT2Tokenizer" and config["eos_token"] == "<|endoftext|>"


def test_a_tiktoken_vocabulary_becomes_gpt2s_merges(exports, tmp_path):
    """The default export ships GPT-2's ranks as gpt2.tiktoken; tokenizer.json recovers GPT-2's merges from them."""
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed")
    folder = tmp_path / "tiktoken"
    folder.mkdir()
    (folder / "gpt2.tiktoken").write_bytes((resources.files("runtime") / "assets" / "gpt2.tiktoken").read_bytes())
    files = tokenizer_files(folder, Manifest.load(exports["lm"]))
    model = files["tokenizer.json"]["model"]
    assert len(model["merges"]) == 50_000 and model["merges"][:4] == ["Ġ t", "Ġ a", "h e", "i n"]
    assert files["tokenizer.json"]["added_tokens"][0]["id"] == 50256
    (folder / "tokenizer.json").write_text(json.dumps(files["tokenizer.json"]))
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ours = runtime.Tokenizer.gpt2()
    for text in [*TEXTS, "Hello world"]:
        assert theirs.encode(text).ids == ours.encode(text), text
    assert ours.encode("Hello world") == [15496, 995]


# ---- onnxruntime-genai runs the folders ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def varied_exports(tmp_path_factory):
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed: pip install onnxruntime-genai")
    from gpt2_export.export import ExportOptions, export

    root = tmp_path_factory.mktemp("genai")
    checkpoint = write_hf_checkpoint(root / "checkpoint", "lm", initializer_range=0.4)
    folders = {}
    for name, options in (("lm", ExportOptions()), ("lm-shared", ExportOptions(kv_cache="shared"))):
        folders[name] = export(checkpoint, root / name, options).folder
        write_genai_config(folders[name])
    return folders


def _genai_greedy(og, model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens of equal-length prompts in one generator (batch_size set, as genai needs for batches)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompts[0]) + max_new_tokens, do_sample=False, batch_size=len(prompts))
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompts, dtype=np.int32))
    out: list[list[int]] = [[] for _ in prompts]
    while not generator.is_done():
        generator.generate_next_token()
        for row, token in enumerate(generator.get_next_tokens()):
            out[row].append(int(token))
    return out


def _ours(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    tokens = model.generate(np.array([prompt]), max_new_tokens=max_new_tokens)[0, len(prompt) :].tolist()
    eos = model.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("variant", ["lm", "lm-shared"])
def test_onnxruntime_genai_greedy_tokens_equal_ours(varied_exports, variant):
    og = pytest.importorskip("onnxruntime_genai")
    ours = runtime.load(varied_exports[variant])
    theirs = og.Model(str(varied_exports[variant]))
    rng = np.random.default_rng(0)
    for length in (1, 3, 7, 12):
        prompt = rng.integers(0, 316, size=length).tolist()
        expected = _ours(ours, prompt, 20)
        assert _genai_greedy(og, theirs, [prompt], 20)[0][: len(expected)] == expected, prompt
        assert len(set(expected)) > 3  # the continuation depends on the prompt, not just its last token
    pair = rng.integers(0, 316, size=(2, 6)).tolist()  # equal lengths: no padding, so batches agree too
    for row, tokens in zip(pair, _genai_greedy(og, theirs, pair, 12), strict=True):
        expected = _ours(ours, row, 12)
        assert tokens[: len(expected)] == expected
    tokenizer = og.Tokenizer(theirs)
    for text in TEXTS:
        assert tokenizer.encode(text).tolist() == ours.tokenizer.encode(text), text


def test_added_tokens_reach_tokenizer_json_through_the_runtimes_checks(exports, tmp_path):
    folder = tmp_path / "lm"
    shutil.copytree(exports["lm"], folder)
    (folder / "added_tokens.json").write_text(json.dumps({"<|pad|>": 317}))
    assert [t["content"] for t in json.loads(_tokenizer_json(folder))["added_tokens"]] == [ENDOFTEXT, "<|pad|>"]
    (folder / "added_tokens.json").write_text(json.dumps({"<|pad|>": 5}))
    with pytest.raises(ValueError, match="added_tokens.json: added token '<\\|pad\\|>' has id 5; added ids must be"):
        write_genai_config(folder)


def _tokenizer_json(folder) -> str:
    write_genai_config(folder)
    return (folder / "tokenizer.json").read_text(encoding="utf-8")
