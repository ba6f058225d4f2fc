"""Every export variant validates against PyTorch: fused (default), plain, in-place cache, fp16, int8, int4."""

from __future__ import annotations

import onnx
import pytest

from gpt2_export.export import ExportError, ExportOptions, export
from runtime.manifest import Manifest

VARIANTS = {
    "fused (default)": dict(),
    "plain": dict(variant="plain"),
    "fused, in-place cache": dict(kv_cache="shared"),
    "fused fp16": dict(dtype="fp16"),
    "fused, in-place cache, fp16": dict(kv_cache="shared", dtype="fp16"),
    "int8 weights": dict(weights="int8"),
    "int4 weights": dict(weights="int4"),
    "int8 weights, blocks of 16": dict(weights="int8", block_size=16),
    "int4 weights, blocks of 32": dict(weights="int4", block_size=32),
    "int8 weights, in-place cache": dict(weights="int8", kv_cache="shared"),
    "int4 weights, in-place cache": dict(weights="int4", kv_cache="shared"),  # README's fastest quantized decode
}


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_validates_and_records_itself(hf_checkpoints, tmp_path, name):
    options = ExportOptions(**VARIANTS[name])
    result = export(hf_checkpoints["lm"], tmp_path, options)
    assert result.validation.passed
    manifest = Manifest.load(tmp_path)
    assert manifest.variant == ("plain" if options.variant == "plain" else "fused")
    assert (manifest.kv_cache, manifest.weights, manifest.dtype) == (options.kv_cache, options.weights, options.dtype)
    assert manifest.validation["greedy"]["argmax_agreement"] is not None


def test_the_fused_graph_has_one_attention_op_per_layer(hf_checkpoints, tmp_path):
    export(hf_checkpoints["lm"], tmp_path / "growing", ExportOptions(validate=False))
    export(hf_checkpoints["lm"], tmp_path / "shared", ExportOptions(validate=False, kv_cache="shared"))
    for folder, op in (("growing", "MultiHeadAttention"), ("shared", "GroupQueryAttention")):
        ops = [n.op_type for n in onnx.load(str(tmp_path / folder / "model.onnx")).graph.node]
        assert ops.count(op) == 2  # the tiny checkpoint has 2 layers
        assert ops.count("SkipLayerNormalization") == 5 and ops.count("FastGelu") == 2
        assert "Softmax" not in ops


@pytest.mark.parametrize("weights, block_size, bits, block", [
    ("int4", None, 4, 128), ("int8", None, 8, 128), ("int4", 64, 4, 64), ("int8", 16, 8, 16), ("int4", 256, 4, 256),
])
def test_quantized_weights_use_matmulnbits_with_the_recorded_block(hf_checkpoints, tmp_path, weights, block_size,
                                                                   bits, block):
    result = export(hf_checkpoints["lm"], tmp_path, ExportOptions(weights=weights, block_size=block_size,
                                                                  validate=False))
    nodes = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 9  # 4 per layer + the LM head
    for node in nodes:
        attributes = {a.name: a.i for a in node.attribute}
        # int4's default recipe keeps the LM head at 8 bits, blocks of 128 (gpt2_export/quantize.py); the quantizer
        # names each node after its MatMul plus _Q4 / _Q8.
        head8 = weights == "int4" and node.name == "lm_head_Q8"
        expected = (8, 128, 4) if head8 else (bits, block, 4)
        assert (attributes["bits"], attributes["block_size"], attributes["accuracy_level"]) == expected, node.name
    if weights == "int4":
        assert sorted(n.name for n in nodes if n.name.startswith("lm_head")) == ["lm_head_Q8"]
    assert result.manifest.weight_block_size == block
    assert Manifest.load(tmp_path).weight_block_size == block


def test_heads_without_a_fused_graph_export_plain(hf_checkpoints, tmp_path):
    result = export(hf_checkpoints["seq-cls"], tmp_path, ExportOptions(head="seq-cls"))
    assert result.manifest.variant == "plain" and result.validation.passed


@pytest.mark.parametrize("options, message", [
    (dict(variant="plain", kv_cache="shared"), "need the fused graph"),
    (dict(head="seq-cls", weights="int8"), "need the fused graph"),
    (dict(weights="int4", dtype="fp16"), "quantizes an fp32 graph"),
    (dict(kv_cache="paged"), "unknown kv_cache 'paged'"),
    (dict(head="base", kv_cache="shared"), "serves the lm head's decoding loop, not the base head"),
    (dict(weights="int2"), "unknown weights 'int2'"),
    (dict(block_size=32), "add --weights int8 or --weights int4"),
    (dict(weights="int4", block_size=48), "quantizer takes 16, 32, 64, 128, 256"),
    (dict(weights="int8", block_size=8), "quantizer takes 16, 32, 64, 128, 256"),
    (dict(weights="int8", block_size=512), "block size 512 is not supported"),
])
def test_impossible_combinations_are_refused(options, message):
    with pytest.raises(ExportError, match=message):
        ExportOptions(**options)


def test_a_model_the_fused_graph_cannot_express_falls_back_to_plain(tmp_path):
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "silu", "lm", activation_function="silu")
    result = export(checkpoint, tmp_path / "auto", ExportOptions())
    assert result.manifest.variant == "plain" and result.validation.passed
    with pytest.raises(ExportError, match="activation_function 'silu' has no fused kernel"):
        export(checkpoint, tmp_path / "forced", ExportOptions(variant="fused"))


@pytest.mark.parametrize("options, dropped", [
    (dict(kv_cache="shared"), "--kv-cache shared"),
    (dict(weights="int8"), "--weights int8"),
])
def test_a_fused_only_option_on_a_model_only_plain_can_take_says_to_drop_it(tmp_path, options, dropped):
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "silu", "lm", activation_function="silu")
    # "export with --plain" alone would lead to "--plain ... would need the fused graph: drop --plain".
    with pytest.raises(ExportError, match=f"no fused kernel: export with --plain, without {dropped}"):
        export(checkpoint, tmp_path / "refused", ExportOptions(**options))


def test_the_in_place_cache_refuses_a_head_dim_groupqueryattention_cannot_take(tmp_path):
    from tests.conftest import write_hf_checkpoint

    checkpoint = write_hf_checkpoint(tmp_path / "hd9", "lm", n_embd=36, n_head=4)  # head_dim 9
    with pytest.raises(ExportError, match="needs a head_dim that is a multiple of 8, got 9"):
        export(checkpoint, tmp_path / "shared", ExportOptions(kv_cache="shared"))
    assert export(checkpoint, tmp_path / "growing", ExportOptions()).validation.passed


def test_fp16_plain_graph_computes_softmax_in_fp32(hf_checkpoints, tmp_path):
    export(hf_checkpoints["lm"], tmp_path, ExportOptions(variant="plain", dtype="fp16", validate=False))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 2
    for node in softmaxes:
        cast = producers[node.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)  # topologically sorted


def test_logits_to_keep_is_optional_and_keeps_the_last_positions(hf_checkpoints, tmp_path):
    import numpy as np
    import onnxruntime as ort

    export(hf_checkpoints["lm"], tmp_path, ExportOptions(validate=False))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64),
             "position_ids": np.tile(np.arange(5), (2, 1))}
    feeds |= {name: np.zeros((2, 4, 0, 8), np.float32) for name in Manifest.load(tmp_path).io.input_names()[3:]}
    every = session.run(["logits"], feeds)[0]
    last = session.run(["logits"], {**feeds, "logits_to_keep": np.array([1], np.int64)})[0]
    assert every.shape == (2, 5, 317) and last.shape == (2, 1, 317)
    np.testing.assert_array_equal(last, every[:, -1:])
