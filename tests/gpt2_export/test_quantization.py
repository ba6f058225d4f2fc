"""int8 / int4 weights keep a trained model's answers: next-token agreement with the fp32 reference on held-out text.

The model is tests/fixtures/gpt2_8k_pydoc: 4 layers, 256 wide, an 8k GPT-2 vocabulary, trained on Python's
reference documentation (tests/fixtures/trained_gpt2.py rebuilds it). Agreement is teacher-forced argmax over
HELD_OUT_POSITIONS positions of topics it never saw, against our transformers-faithful fp32 model (itself
checked against transformers 4.57.6 below).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from gpt2_export.cli import main
from gpt2_export.export import ExportError, ExportOptions, export
from gpt2_export.quantize import DEFAULT_RECIPES, QuantizationError, WeightRecipe, recipe_for
from gpt2_export.validate import measure_text_agreement
from runtime.manifest import Manifest
from runtime.tokenizer import Tokenizer
from tests.fixtures import trained_gpt2

HELD_OUT_POSITIONS = 4096  # 32 windows of 128 tokens; the 200 positions leave +-1.5% of sampling noise
INT8_FLOOR, INT4_FLOOR = 0.98, 0.95


@pytest.fixture(scope="session")
def trained():
    """The trained checkpoint folder, its fp32 reference model and the held-out token ids."""
    import models

    folder = trained_gpt2.FIXTURE
    return folder, models.GPT2LMHeadModel.from_pretrained(folder).float().eval(), trained_gpt2.held_out_ids(folder)


@pytest.fixture(scope="session")
def quantized_exports(trained, tmp_path_factory):
    """int8 and default-int4 exports of the trained checkpoint (validated as every export is)."""
    folder = trained[0]
    root = tmp_path_factory.mktemp("quantized")
    return {weights: export(folder, root / weights, ExportOptions(weights=weights)) for weights in ("int8", "int4")}


def agreement(trained, result) -> float:
    _, reference, ids = trained
    return measure_text_agreement(reference, result.manifest, result.folder / "model.onnx", ids,
                                  max_positions=HELD_OUT_POSITIONS).rate


def test_the_fixture_is_a_trained_model_that_matches_transformers(trained):
    from transformers import GPT2LMHeadModel

    folder, reference, ids = trained
    oracle = GPT2LMHeadModel.from_pretrained(folder).float().eval()
    ours, theirs, losses = [], [], []
    with torch.no_grad():
        for start in range(0, 1024, 128):
            window = torch.from_numpy(ids[start : start + 128])[None]  # (1, T)
            mine, oracle_out = reference(window).logits, oracle(window, labels=window)  # (1, T, V)
            torch.testing.assert_close(mine, oracle_out.logits, atol=1e-4, rtol=1e-4)
            ours.append(mine.argmax(-1)), theirs.append(oracle_out.logits.argmax(-1)), losses.append(oracle_out.loss)
    # The agreement below is measured against our fp32 model: on held-out text it is transformers' argmax.
    assert (torch.cat(ours, 1) == torch.cat(theirs, 1)).float().mean().item() >= 0.999
    # Uniform guessing over 8192 tokens scores ln 8192 = 9.0; the trained model reads unseen documentation
    # (~5.2 on these windows; 3.7 on its training text).
    assert torch.stack(losses).mean().item() < 6.0


def test_the_fixture_vocabulary_is_gpt2s_first_ranks():
    small = Tokenizer.from_folder(trained_gpt2.FIXTURE)
    assert small.vocab_size == trained_gpt2.VOCAB_SIZE and small.eos_token_id == trained_gpt2.VOCAB_SIZE - 1
    gpt2 = Tokenizer.gpt2()
    common = "The with statement is used for a block of code"
    assert small.encode(common) == gpt2.encode(common)  # common words: the same ids as GPT-2
    rare = " execution"  # GPT-2 rank 9706, past the kept ranks: split into kept ones, decoded back exactly
    assert gpt2.encode(rare) == [9706] and max(small.encode(rare)) < trained_gpt2.VOCAB_SIZE - 1
    assert small.decode(small.encode(rare)) == rare


def test_int8_keeps_the_trained_models_answers(trained, quantized_exports):
    assert agreement(trained, quantized_exports["int8"]) >= INT8_FLOOR


def test_int4_keeps_the_trained_models_answers(trained, quantized_exports):
    result = quantized_exports["int4"]
    assert result.validation.passed
    assert agreement(trained, result) >= INT4_FLOOR


def test_the_default_int4_recipe_beats_the_old_one(trained, quantized_exports, tmp_path):
    # Symmetric 4-bit blocks everywhere, LM head included (the recipe before this one), on the same positions:
    # 0.947 here (0.935 on the model) against the default's 0.980 (0.975 with blocks of 32; 2026-12-07).
    # Both are asked for: the floor, and a third fewer disagreements than the old recipe (the old one as default
    # fails that).
    old = export(trained[0], tmp_path, ExportOptions(weights="int4", int4_recipe="rtn-sym", validate=False))
    old_rate, new_rate = agreement(trained, old), agreement(trained, quantized_exports["int4"])
    assert new_rate >= INT4_FLOOR
    assert 1 - new_rate <= 2 / 3 * (1 - old_rate), (old_rate, new_rate)


def test_the_runtime_generates_from_the_int4_export(trained, quantized_exports):
    import runtime

    folder, reference, ids = trained
    model = runtime.load(quantized_exports["int4"].folder)
    assert model.tokenizer.vocab_size == trained_gpt2.VOCAB_SIZE  # the export's copy of the fixture's *.tiktoken
    prompt = ids[:48][None]  # (1, T) held-out documentation
    tokens = model.generate(prompt, max_new_tokens=24)  # (1, T + 24)
    assert tokens.shape == (1, 72) and np.array_equal(tokens[:, :48], prompt)
    # Teacher-forced on the runtime's own continuation, fp32 transformers picks the same next token almost always.
    with torch.no_grad():
        logits = reference(torch.from_numpy(tokens)).logits[0, 47:-1]  # (24, V)
    assert (logits.argmax(-1).numpy() == tokens[0, 48:]).mean() >= 0.9
    text = model.generate_text(model.tokenizer.decode(ids[:48].tolist()), max_new_tokens=8)
    assert isinstance(text, str) and text


def test_the_default_int4_recipe_is_recorded_and_is_what_the_graph_holds(quantized_exports):
    result = quantized_exports["int4"]
    recipe = recipe_for("int4", None, None)
    recorded = Manifest.load(result.folder).weight_recipe
    assert recorded == {"name": DEFAULT_RECIPES["int4"], **recipe.to_dict()}
    assert Manifest.load(result.folder).weight_block_size == recipe.block_size
    nodes = {n.name: n for n in onnx.load(str(result.folder / "model.onnx")).graph.node if n.op_type == "MatMulNBits"}
    assert len(nodes) == 4 * 4 + 1  # four MatMuls per layer + the LM head
    for name, node in nodes.items():
        attributes = {a.name: a.i for a in node.attribute}
        eight = recipe.eight_bit != "none" and name.rsplit("_Q", 1)[0] == "lm_head"  # the quantizer appends _Q4/_Q8
        assert attributes["bits"] == (8 if eight else recipe.bits), name
        assert attributes["block_size"] == (recipe.eight_bit_block_size if eight else recipe.block_size), name
        assert attributes["accuracy_level"] == recipe.accuracy_level
        has_zero_points = len(node.input) > 3 and node.input[3] != ""
        assert has_zero_points == (not eight and not recipe.symmetric), name


@pytest.mark.parametrize("recipe", ["rtn-asym", "hqq"])
def test_other_int4_recipes_export_validate_and_record_themselves(trained, tmp_path, recipe):
    result = export(trained[0], tmp_path, ExportOptions(weights="int4", int4_recipe=recipe))
    assert result.validation.passed
    assert Manifest.load(tmp_path).weight_recipe["name"] == recipe
    assert agreement(trained, result) >= 0.90


def test_gptq_calibrates_on_the_users_text(trained, tmp_path):
    calibration = tmp_path / "calibration.txt"
    # 3.7k tokens of the training topics (never the held-out ones): 28 windows of 128.
    calibration.write_text(trained_gpt2.topics_text(held_out=False)[:12_000], encoding="utf-8")
    result = export(trained[0], tmp_path / "gptq", ExportOptions(weights="int4", int4_recipe="gptq-head8",
                                                                 calibration=str(calibration)))
    assert result.validation.passed
    nodes = [n for n in onnx.load(str(tmp_path / "gptq" / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    bits = sorted({a.i for n in nodes for a in n.attribute if a.name == "bits"})
    assert len(nodes) == 17 and bits == [4, 8]
    assert agreement(trained, result) >= INT4_FLOOR


def test_the_fp32_export_agrees_everywhere_and_a_quantized_one_reports_its_rate(trained, quantized_exports, tmp_path):
    folder, reference, ids = trained
    fp32 = export(folder, tmp_path, ExportOptions(validate=False))
    full = measure_text_agreement(reference, fp32.manifest, tmp_path / "model.onnx", ids, max_positions=300)
    assert (full.rate, full.positions, full.window) == (1.0, 300, 128)
    assert full.to_dict()["rate"] == 1.0


@pytest.mark.parametrize("ids, message", [
    (np.array([5]), "encodes to 1 token"),
    (np.array([1, 2, 9000]), "token id 9000, out of range for vocab_size 8192"),
])
def test_text_agreement_refuses_text_it_cannot_score(trained, quantized_exports, ids, message):
    result = quantized_exports["int8"]
    with pytest.raises(ValueError, match=message):
        measure_text_agreement(trained[1], result.manifest, result.folder / "model.onnx", ids)


def test_validate_text_reports_agreement_and_stores_it(trained, quantized_exports, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text(trained_gpt2.held_out_text()[:8000], encoding="utf-8")
    folder = quantized_exports["int4"].folder
    result = CliRunner().invoke(main, ["validate", str(folder), "--text", str(text)])
    assert result.exit_code == 0, result.output
    assert "next-token agreement with the fp32 reference on the text:" in result.output
    stored = json.loads((folder / "export.json").read_text())["validation"]["text_agreement"]
    assert stored["positions"] == len(Tokenizer.from_folder(folder).encode(text.read_text()))
    assert stored["rate"] >= INT4_FLOOR and f"next-token agreement {stored['rate']:.1%}" in result.output
    failing = CliRunner().invoke(main, ["validate", str(folder), "--text", str(text), "--min-agreement", "1"])
    assert failing.exit_code != 0 and "below the --min-agreement 100.0%" in failing.output


def test_min_agreement_needs_text(quantized_exports):
    result = CliRunner().invoke(main, ["validate", str(quantized_exports["int8"].folder), "--min-agreement", "0.9"])
    assert result.exit_code != 0 and "--min-agreement needs --text FILE" in result.output


@pytest.mark.parametrize("options, message", [
    (dict(weights="int4", int4_recipe="gptq"), "calibrates on text: add --calibration FILE"),
    (dict(weights="int4", calibration="x.txt"), "read by the gptq recipes only"),
    (dict(weights="int8", int4_recipe="hqq"), "add --weights int4"),
    (dict(int4_recipe="hqq"), "add --weights int4"),
    (dict(weights="int4", int4_recipe="awq"), "unknown int4 recipe 'awq'"),
    (dict(weights="int4", int4_recipe="gptq", calibration="/no/such/file.txt"), "does not exist"),
])
def test_recipe_options_that_cannot_work_are_refused(options, message):
    with pytest.raises((ExportError, QuantizationError), match=message):
        ExportOptions(**options)


@pytest.mark.parametrize("fields, message", [
    (dict(bits=3, block_size=32), "3-bit weights are not supported"),
    (dict(bits=8, block_size=32, algorithm="hqq"), "makes 4-bit weights only"),
    (dict(bits=4, block_size=32, eight_bit="first"), "unknown 8-bit set 'first'"),
])
def test_impossible_recipes_are_refused(fields, message):
    with pytest.raises(QuantizationError, match=message):
        WeightRecipe(**fields)


def test_export_cli_takes_a_recipe(trained, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["export", "--model", str(trained[0]), "--output", str(out), "--weights", "int4",
                                       "--int4-recipe", "rtn-asym", "--no-validate"])
    assert result.exit_code == 0, result.output
    assert "quantize weights to int4 (rtn-asym)" in result.output
    assert Manifest.load(out).weight_recipe["symmetric"] is False
