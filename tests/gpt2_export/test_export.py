"""`gpt2-export export`: every head becomes a validated, self-describing ONNX folder."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gpt2_export import export as export_module
from gpt2_export.export import ExportError, ExportOptions, export, validate_folder
from gpt2_export.validate import ValidationError
from runtime.manifest import Manifest, ManifestError

HEADS = ["base", "lm", "double-heads", "seq-cls"]


@pytest.mark.parametrize("head", HEADS)
def test_every_head_exports_and_validates(hf_checkpoints, tmp_path, head):
    result = export(hf_checkpoints[head], tmp_path / head, ExportOptions(head=head))
    assert result.validation.passed
    names = {p.name for p in (tmp_path / head).iterdir()}
    assert {"model.onnx", "config.json", "export.json", "vocab.json", "merges.txt"} <= names
    manifest = Manifest.load(tmp_path / head)
    assert manifest.head == head and manifest.validation["passed"]
    cases = {c["case"] for c in manifest.validation["checks"]}
    assert cases == {"prefill (past 0)", "decode (past 7, 1 new token)", "left-padded prefill (batch 4)",
                     "decode after left-padded prefill"}
    assert set(manifest.tools) >= {"torch", "onnx", "onnxruntime", "gpt2_export"}


@pytest.mark.parametrize("head", HEADS)
def test_the_graph_follows_the_io_contract(hf_checkpoints, tmp_path, head):
    export(hf_checkpoints[head], tmp_path, ExportOptions(head=head, validate=False))
    manifest = Manifest.load(tmp_path)
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph

    def dims(value_info):
        return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)

    defaults = {init.name for init in graph.initializer}
    required = [i for i in graph.input if i.name not in defaults]  # others are optional, with a default value
    assert [i.name for i in required] == manifest.io.input_names()
    assert {i.name for i in graph.input} - {i.name for i in required} <= {"logits_to_keep"}
    assert [o.name for o in graph.output] == manifest.io.output_names()
    for spec, value in zip(manifest.io.inputs, required, strict=True):
        assert dims(value) == spec.shape, spec.name
    assert manifest.io.input_names()[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "past_key_values.1.value" in manifest.io.input_names()
    assert "present.1.value" in manifest.io.output_names()


def test_tied_lm_head_is_stored_once(hf_checkpoints, tmp_path):
    export(hf_checkpoints["lm"], tmp_path, ExportOptions(validate=False))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    big = [init.name for init in graph.initializer if np.prod(init.dims) == 317 * 32]
    assert len(big) == 1, big


def test_fp16_export_validates_with_fp16_cache(hf_checkpoints, tmp_path):
    result = export(hf_checkpoints["lm"], tmp_path, ExportOptions(dtype="fp16"))
    assert result.validation.passed and result.validation.greedy["passed"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in session.get_inputs()} | {o.name: o.type for o in session.get_outputs()}
    assert types["past_key_values.0.key"] == "tensor(float16)" and types["logits"] == "tensor(float16)"
    assert types["input_ids"] == "tensor(int64)"


def test_the_offline_default_exports_gpt2_small(tmp_path):
    result = export(None, tmp_path, ExportOptions())
    assert result.validation.passed
    manifest = Manifest.load(tmp_path)
    assert (manifest.shape.n_layer, manifest.shape.n_embd, manifest.shape.vocab_size) == (12, 768, 50257)
    assert "RANDOM weights" in manifest.source and manifest.checkpoint is None
    assert manifest.tokenizer_files == ["gpt2.tiktoken"]
    assert (tmp_path / "model.onnx").stat().st_size < 520e6  # tied head stored once: ~498 MB


def test_validate_reruns_on_an_existing_folder(hf_checkpoints, tmp_path):
    export(hf_checkpoints["lm"], tmp_path, ExportOptions(validate=False))
    report = validate_folder(tmp_path)
    assert report.passed
    assert Manifest.load(tmp_path).validation["passed"]


def test_validation_fails_against_other_weights_and_lists_outputs(hf_checkpoints, tmp_path):
    from tests.conftest import write_hf_checkpoint

    export(hf_checkpoints["lm"], tmp_path / "export", ExportOptions(validate=False))
    other = write_hf_checkpoint(tmp_path / "other", "lm", seed=1)
    with pytest.raises(ValidationError, match="check\\(s\\) failed:\n.*prefill \\(past 0\\) / logits"):
        validate_folder(tmp_path / "export", other)


def test_external_data_is_used_past_the_protobuf_limit(hf_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "PROTOBUF_LIMIT", 10_000)
    result = export(hf_checkpoints["lm"], tmp_path / "auto", ExportOptions())
    assert (tmp_path / "auto" / "model.onnx.data").is_file() and result.validation.passed
    with pytest.raises(ExportError, match="over protobuf's 2 GiB limit.*drop --no-external-data"):
        export(hf_checkpoints["lm"], tmp_path / "refused", ExportOptions(external_data=False))


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("summary_type", ["first", "mean"])
def test_double_heads_without_cls_index_keep_mc_token_ids_and_validate(tmp_path, summary_type):
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "ckpt", "double-heads", summary_type=summary_type)
    result = export(checkpoint, tmp_path / "onnx", ExportOptions(head="double-heads"))
    assert result.validation.passed
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == result.manifest.io.input_names()


@pytest.mark.parametrize("summary", [dict(summary_use_proj=False), dict(summary_proj_to_labels=False)])
def test_double_heads_without_one_logit_per_choice_are_refused(tmp_path, summary):
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "ckpt", "double-heads", **summary)
    with pytest.raises(ExportError, match="gives 32 values per choice.*export --head lm or --head base"):
        export(checkpoint, tmp_path / "onnx", ExportOptions(head="double-heads"))


@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_a_model_with_a_short_position_table_validates_within_it(tmp_path, variant):
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "ckpt", "lm", n_positions=6)
    result = export(checkpoint, tmp_path / "onnx", ExportOptions(variant=variant))
    assert result.validation.passed and result.validation.greedy["steps_equal"] == 1


def test_unknown_head_dtype_and_opsets_are_refused():
    with pytest.raises(ExportError, match="unknown head 'causal'"):
        ExportOptions(head="causal")
    with pytest.raises(ExportError, match="unknown dtype 'int4'"):
        ExportOptions(dtype="int4")
    with pytest.raises(ExportError, match="opset 11 is too old: the graph needs opset >= 14"):
        ExportOptions(opset=11)
    with pytest.raises(ExportError, match="opset 23 is newer"):
        ExportOptions(opset=23)


def test_a_head_the_checkpoint_was_not_trained_for_is_refused(hf_checkpoints, tmp_path):
    with pytest.raises(ExportError, match="no weights for the seq-cls head \\(score.weight\\).*GPT2LMHeadModel"):
        export(hf_checkpoints["lm"], tmp_path, ExportOptions(head="seq-cls"))


def test_an_existing_folder_needs_overwrite(hf_checkpoints, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists and is not empty: pass --overwrite"):
        export(hf_checkpoints["lm"], tmp_path, ExportOptions(validate=False))
    export(hf_checkpoints["lm"], tmp_path, ExportOptions(validate=False, overwrite=True))
    assert not (tmp_path / "keep.txt").exists()


def test_an_unwritable_output_is_named(hf_checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="is a file|cannot write"):
        export(hf_checkpoints["lm"], blocker, ExportOptions(validate=False))
    with pytest.raises(ExportError, match="cannot write to output folder"):
        export(hf_checkpoints["lm"], blocker / "sub", ExportOptions(validate=False))


def test_missing_checkpoint_and_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError):
        export(tmp_path / "nope", tmp_path / "out", ExportOptions())
    with pytest.raises(ManifestError, match="has no export.json"):
        validate_folder(tmp_path)


def test_the_manifest_records_the_validation_report(hf_checkpoints, tmp_path):
    export(hf_checkpoints["lm"], tmp_path, ExportOptions())
    data = json.loads((tmp_path / "export.json").read_text())
    assert data["format"] == "gpt2-export" and data["format_version"] == 1
    assert data["validation"]["atol"] == 1e-4
    assert all(check["max_abs_diff"] < 1e-4 for check in data["validation"]["checks"])


def test_a_checkpoint_without_eos_exports_without_a_genai_config_and_generates_like_transformers(tmp_path):
    import torch
    import transformers

    import runtime
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "ckpt", "lm", eos_token_id=None, bos_token_id=None)
    notes: list[str] = []
    export(checkpoint, tmp_path / "out", ExportOptions(head="lm"), report=notes.append)
    assert not (tmp_path / "out" / "genai_config.json").exists()
    assert any("no genai_config.json (the model has no eos_token_id" in note for note in notes), notes
    ids = np.array([[5, 17, 42, 8], [80, 81, 82, 83]])
    ours = runtime.load(tmp_path / "out").generate(ids, np.ones_like(ids), max_new_tokens=6)
    hf = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    theirs = hf.generate(torch.from_numpy(ids), attention_mask=torch.ones(2, 4, dtype=torch.long), max_new_tokens=6)
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_tokens_added_to_the_checkpoints_tokenizer_travel_with_the_export(tmp_path):
    import transformers

    import runtime
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "ckpt", "lm", vocab_size=319)
    hf = transformers.GPT2TokenizerFast.from_pretrained(checkpoint)
    hf.add_special_tokens({"pad_token": "<|pad|>"})
    hf.add_tokens(["hello_world"])
    hf.save_pretrained(checkpoint)  # ids 317 and 318, in added_tokens.json
    export(checkpoint, tmp_path / "out", ExportOptions(head="lm"))
    assert "added_tokens.json" in Manifest.load(tmp_path / "out").tokenizer_files
    model = runtime.load(tmp_path / "out")
    assert model.tokenizer.decode([317, 318]) == hf.decode([317, 318]) == "<|pad|>hello_world"


@pytest.mark.parametrize("options, message", [
    (dict(head="seq-cls", kv_cache="shared"), "drop --kv-cache shared (the seq-cls head has no fused graph)"),
    (dict(variant="plain", weights="int8"), "--weights int8 would need the fused graph, which covers the lm and "
                                            "base heads: drop --plain"),
])
def test_fused_only_options_name_only_what_was_asked(options, message):
    with pytest.raises(ExportError) as error:
        ExportOptions(**options)
    assert message in str(error.value)
    assert "--weights float" not in str(error.value) and "--kv-cache growing" not in str(error.value)
