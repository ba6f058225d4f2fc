"""The prototype GEMV of benchmarks/gemv_headroom.py as a specification: it reads MatMulNBits' own layout and
computes what MatMulNBits computes (the dequantized product, with the activation quantized to int8 per block).

Speed is never asserted. The kernel needs a C compiler and AVX-512 VNNI; elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.gemv_headroom import (
    BLOCK,
    KernelUnavailable,
    NbitsMatrix,
    OurGemv,
    build_kernel,
    check,
    load_kernel,
    matrices,
    measure,
    report,
    stock_session,
)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    try:
        return load_kernel(build_kernel(tmp_path_factory.mktemp("kernel")))
    except KernelUnavailable as e:
        pytest.skip(str(e))


def random_matrix(k: int, n: int, bits: int, seed: int) -> NbitsMatrix:
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (n, k // BLOCK, BLOCK * bits // 8), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.02, n * (k // BLOCK)).astype(np.float32)
    return NbitsMatrix(f"m{seed}", k, n, bits, b, scales)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [4, 10, 257])  # a multiple of the 4-row groups, and two with a ragged last group
def test_the_kernel_equals_the_dequantized_product_and_onnxruntime(kernel, bits, n):
    mats = [random_matrix(256, n, bits, 0), random_matrix(384, n, bits, 1)]
    ours = OurGemv(kernel, mats, threads=2)
    rng = np.random.default_rng(2)
    inputs = {k: rng.standard_normal(k).astype(np.float32) for k in (256, 384)}
    ours.bind(inputs)
    got = [y.copy() for y in ours.run()]
    session, widths = stock_session(mats, threads=2)
    stock = session.run(None, {f"A{k}": inputs[k][None] for k in widths})
    errors = check(mats, got, stock, inputs)
    # Both quantize the activation to int8 per block of 128, so both miss the exact product by the same few percent.
    assert errors["ours"] < 0.05 and errors["ours"] <= 1.05 * errors["stock"] + 1e-6, errors
    for mine, theirs in zip(got, stock, strict=True):
        np.testing.assert_allclose(mine, theirs.reshape(-1), rtol=0, atol=2e-3 * float(np.abs(theirs).max()))


def test_the_dequantized_reference_reads_nibbles_low_first():
    m = NbitsMatrix("m", BLOCK, 1, 4, np.full((1, 1, BLOCK // 2), 0x9A, np.uint8), np.ones(1, np.float32))
    w = m.dequantized()[0]
    assert w[0] == 0xA - 8 and w[1] == 0x9 - 8  # element 2j is byte j's low nibble, zero point 8


def _nbits_model(path, block_size: int) -> None:
    m = random_matrix(BLOCK, 8, 4, 3) if block_size == BLOCK else None
    b = m.b if m else np.zeros((8, 4, 16), np.uint8)
    scales = m.scales if m else np.ones(32, np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=BLOCK, N=8, bits=4,
                            block_size=block_size, accuracy_level=4, name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, BLOCK])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("com.microsoft", 1)]), str(path))


def test_matrices_refuses_the_blocks_the_prototype_does_not_take(tmp_path):
    _nbits_model(tmp_path / "model.onnx", 32)
    with pytest.raises(KernelUnavailable, match="blocks of 128"):
        matrices(tmp_path / "model.onnx")


def test_a_missing_export_is_named_with_the_fix(tmp_path):
    with pytest.raises(KernelUnavailable, match="does not exist: pass --model an export folder"):
        matrices(tmp_path / "model.onnx")


def test_a_run_reports_both_paths_against_the_floor(kernel, tmp_path):
    _nbits_model(tmp_path / "model.onnx", BLOCK)
    result = measure(tmp_path / "model.onnx", rounds=1, threads=1, work=tmp_path, calls=2)
    assert set(result["timing"]) == {"stock", "ours", "floor"}
    assert result["relative_error"]["ours"] < 0.05
    text = report(result)
    assert "onnxruntime MatMulNBits" in text and "nbits_gemv.c prototype" in text
