"""How fast ONNX Runtime streams a decode step's weights in each format it offers, on this host.

    python -m benchmarks.weight_formats [--rounds 5] [--threads 2] [--output DIR]

The 49 weight products of one GPT-2-small batch-1 decode step (12 x [768x2304, 768x768, 768x3072, 3072x768] and the
768x50257 LM head), random weights, in one ONNX Runtime session per format: fp32 MatMul; MatMulNBits 4-bit and
8-bit at each block size and accuracy level; DynamicQuantizeMatMul (int8, one scale per column, ONNX Runtime's
u8s8 GEMM); and our int4 export's mix (4-bit layers, 8-bit head) with the head in either int8 op. Each round runs
every format in its own process (two spinning thread pools in one process slow each other), the rounds rotate
the order, and each round samples the read bandwidth first; the report gives each format's best and median
against the read floor of its bytes. The quantized formats' speed is a property of the host's instructions, not
only its bandwidth (measured 2026-12-07: MatMulNBits at 1.01-1.03x its read floor with AVX-512 VNNI, 2.0-2.4x on a
Zen 2 core with AVX2 only, where DynamicQuantizeMatMul took 0.72x MatMulNBits' 8-bit time): run this on the
machine you deploy to before choosing `--weights`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import step_products

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "vocab_size": 50257}


@dataclass(frozen=True)
class WeightFormat:
    """How the layers' and the head's products are stored: bits 32 (MatMul), 4 / 8 (MatMulNBits), -8 (int8
    DynamicQuantizeMatMul, one scale per column); block and accuracy level apply to MatMulNBits."""

    layers_bits: int
    block: int = 128
    accuracy_level: int = 4
    head_bits: int = 8

    @property
    def name(self) -> str:
        def part(bits: int, block: int) -> str:
            return {32: "fp32", -8: "int8-per-column"}.get(bits, f"nbits{bits}-b{block}-acc{self.accuracy_level}")
        return f"layers {part(self.layers_bits, self.block)}, head {part(self.head_bits, 128)}"


FORMATS = (WeightFormat(32, head_bits=32), WeightFormat(8), WeightFormat(8, block=32), WeightFormat(-8, head_bits=-8),
           WeightFormat(4), WeightFormat(4, block=32), WeightFormat(4, block=256), WeightFormat(4, head_bits=4),
           WeightFormat(4, head_bits=-8))


def _product(i: int, k: int, n: int, bits: int, block: int, accuracy_level: int, rng: np.random.Generator):
    """(node, initializers, bytes a step reads) of one product y_i = A_k @ W_i in the given format."""
    from onnx import helper, numpy_helper

    if bits == 32:
        w = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", [f"A{k}", f"W{i}"], [f"Y{i}"])
        return node, [numpy_helper.from_array(w, f"W{i}")], w.nbytes
    if bits == -8:
        w = rng.integers(-127, 128, (k, n), dtype=np.int8)
        scale = rng.random(n, dtype=np.float32) * 0.01 + 1e-3
        inits = [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(scale, f"S{i}"),
                 numpy_helper.from_array(np.zeros(n, dtype=np.int8), f"Z{i}")]
        node = helper.make_node("DynamicQuantizeMatMul", [f"A{k}", f"W{i}", f"S{i}", f"Z{i}"], [f"Y{i}"],
                                domain="com.microsoft")
        return node, inits, w.nbytes + scale.nbytes
    if k % block:
        raise ValueError(f"K {k} is not a multiple of block {block}")
    packed = rng.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)  # any byte is valid data
    scale = rng.random(n * (k // block), dtype=np.float32) * 0.01 + 1e-3
    node = helper.make_node("MatMulNBits", [f"A{k}", f"B{i}", f"S{i}"], [f"Y{i}"], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block, accuracy_level=accuracy_level)
    inits = [numpy_helper.from_array(packed, f"B{i}"), numpy_helper.from_array(scale, f"S{i}")]
    return node, inits, packed.nbytes + scale.nbytes


def session(fmt: WeightFormat, config: dict[str, int], threads: int) -> tuple[Any, dict[str, np.ndarray], int]:
    """One ONNX Runtime session of every product in `fmt`, its feeds, and the bytes one run reads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    products = step_products(config)
    nodes, inits, outputs, total = [], [], [], 0
    for i, (k, n) in enumerate(products):
        bits, block = (fmt.head_bits, 128) if i == len(products) - 1 else (fmt.layers_bits, fmt.block)
        node, tensors, nbytes = _product(i, k, n, bits, block, fmt.accuracy_level, rng)
        nodes.append(node)
        inits += tensors
        total += nbytes
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [1, n]))
    widths = sorted({k for k, _ in products})
    inputs = [helper.make_tensor_value_info(f"A{k}", TensorProto.FLOAT, [1, k]) for k in widths]
    graph = helper.make_graph(nodes, "weight_products", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    feeds = {f"A{k}": rng.standard_normal((1, k), dtype=np.float32) for k in widths}  # (1, K)
    return ort.InferenceSession(model.SerializeToString(), options), feeds, total


def time_format(fmt: WeightFormat, config: dict[str, int], threads: int, calls: int = 10) -> dict[str, float]:
    """Median and best ms of `calls` runs after 3 warm-ups, and the MB one run reads."""
    from .measure import now_ns

    sess, feeds, nbytes = session(fmt, config, threads)
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(calls):
        start = now_ns()
        sess.run(None, feeds)
        times.append((now_ns() - start) / 1e6)
    return {"ms": float(np.median(times)), "best_ms": float(min(times)), "mb": nbytes / 1e6}


def measure(formats: tuple[WeightFormat, ...], rounds: int, threads: int, config: dict[str, int],
            bandwidth_mib: int = 1024) -> dict[str, Any]:
    """Interleaved rounds: the read bandwidth, then each format in its own process, each round one later."""
    from .machine import read_bandwidth
    from .measure import progress, worker_env

    samples: dict[str, list[dict[str, float]]] = {f.name: [] for f in formats}
    bandwidth = []
    for r in range(rounds):
        bandwidth.append(read_bandwidth(bandwidth_mib, threads, passes=3)["gbs"])
        for fmt in formats[r % len(formats):] + formats[:r % len(formats)]:
            spec = json.dumps({"format": asdict(fmt), "config": config, "threads": threads})
            done = subprocess.run([sys.executable, "-m", "benchmarks.weight_formats", "--worker", spec],
                                  capture_output=True, text=True, env=worker_env(threads), check=False)
            if done.returncode:
                raise RuntimeError(f"{fmt.name} failed: {done.stderr.strip().splitlines()[-1:]}")
            samples[fmt.name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        progress(f"round {r + 1} of {rounds}: {bandwidth[-1]:.1f} GB/s")
    best_gbs = max(bandwidth)
    rows = []
    for name, runs in samples.items():
        best, median, mb = min(s["ms"] for s in runs), float(np.median([s["ms"] for s in runs])), runs[0]["mb"]
        rows.append({"format": name, "mb": mb, "best_ms": best, "median_ms": median, "gbs": mb / best,
                     "read_floor_ms": mb / best_gbs, "vs_read_floor": best / (mb / best_gbs)})
    return {"config": config, "threads": threads, "rounds": rounds, "bandwidth_gbs": bandwidth, "formats": rows}


def report(result: dict[str, Any]) -> str:
    """The formats as a markdown table, fastest first."""
    bw = result["bandwidth_gbs"]
    lines = [f"Weight products of one batch-1 decode step, {result['threads']} threads, best of {result['rounds']} "
             f"rounds (median beside); read bandwidth best {max(bw):.1f} GB/s, median {np.median(bw):.1f} "
             "(the floor uses the best).", "",
             "| format | MB read | best ms | median ms | GB/s | read floor ms | x floor |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(result["formats"], key=lambda r: r["best_ms"]):
        lines.append(f"| {row['format']} | {row['mb']:.1f} | {row['best_ms']:.2f} | {row['median_ms']:.2f} | "
                     f"{row['gbs']:.1f} | {row['read_floor_ms']:.2f} | {row['vs_read_floor']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write results.md and results.json here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one format, timed in this process
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(time_format(WeightFormat(**spec["format"]), spec["config"], spec["threads"])))
        return 0
    if args.rounds < 1 or args.threads < 1:
        print("weight_formats: --rounds and --threads must be >= 1", file=sys.stderr)
        return 2
    result = measure(FORMATS, args.rounds, args.threads, GPT2_SMALL)
    text = report(result)
    print(text)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.md").write_text(text, encoding="utf-8")
        (args.output / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
