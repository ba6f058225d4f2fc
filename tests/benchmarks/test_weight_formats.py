"""benchmarks.weight_formats as a specification: every format builds, computes the product, and is timed beside the
read floor of its own bytes. Tiny shapes; no speed is asserted."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import weight_formats
from benchmarks.analysis import step_products
from benchmarks.weight_formats import FORMATS, WeightFormat, measure, session

TINY = {"n_layer": 1, "n_embd": 256, "vocab_size": 512}


def test_the_step_is_the_four_products_of_each_block_and_the_head():
    assert step_products(TINY) == [(256, 768), (256, 256), (256, 1024), (1024, 256), (256, 512)]
    assert len(step_products(weight_formats.GPT2_SMALL)) == 49


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_each_format_builds_reads_its_bytes_and_computes_finite_products(fmt):
    sess, feeds, nbytes = session(fmt, TINY, threads=1)
    outputs = sess.run(None, feeds)
    assert [o.shape for o in outputs] == [(1, n) for _, n in step_products(TINY)]
    assert all(np.isfinite(o).all() for o in outputs)
    params = sum(k * n for k, n in step_products(TINY))
    if fmt.layers_bits == fmt.head_bits == 32:
        assert nbytes == 4 * params
    else:  # quantized: half a byte or one per weight, plus a 4-byte scale per block (of 32 at least) or column
        assert params / 2 < nbytes <= 1.125 * params


def test_matmulnbits_int4_dequantizes_as_its_layout_says():
    """The random bytes are real data: one 4-bit block's product equals the dequantized weights' product."""
    sess, feeds, _ = session(WeightFormat(4, block=128, accuracy_level=0, head_bits=4), TINY, threads=1)
    rng = np.random.default_rng(0)  # session() draws its weights first from the same seed: replay the first product
    k, n = step_products(TINY)[0]
    packed = rng.integers(0, 256, (n, k // 128, 64), dtype=np.uint8)
    scale = rng.random(n * (k // 128), dtype=np.float32) * 0.01 + 1e-3
    low, high = packed & 0x0F, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(n, k // 128, 128).astype(np.float32) - 8
    w = (q * scale.reshape(n, -1, 1)).reshape(n, k)  # (N, K)
    expected = feeds[f"A{k}"] @ w.T  # (1, N)
    np.testing.assert_allclose(sess.run(["Y0"], feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_a_run_reports_each_format_against_its_read_floor():
    result = measure((WeightFormat(32, head_bits=32), WeightFormat(4)), rounds=2, threads=1, config=TINY,
                     bandwidth_mib=8)
    assert len(result["bandwidth_gbs"]) == 2 and [r["format"] for r in result["formats"]] == [
        "layers fp32, head fp32", "layers nbits4-b128-acc4, head nbits8-b128-acc4"]
    for row in result["formats"]:
        assert row["best_ms"] <= row["median_ms"]
        assert row["read_floor_ms"] == pytest.approx(row["mb"] / max(result["bandwidth_gbs"]))
    assert "| layers fp32, head fp32 |" in weight_formats.report(result)
