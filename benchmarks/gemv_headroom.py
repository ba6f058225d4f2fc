"""How far ONNX Runtime's MatMulNBits is from the memory floor at batch 1, against a streaming VNNI GEMV.

    python -m benchmarks.gemv_headroom [--model DIR] [--rounds 7] [--threads 2] [--output DIR]

DIR is an int8 / int4 export (default: a GPT-2-small-shaped int4 export with random weights, made here). Every
MatMulNBits of the graph (symmetric, blocks of 128) is timed two ways at M = 1, in interleaved rounds in one process,
cold (all the step's weights, more than the last-level cache, streamed in graph order):
- stock: one ONNX Runtime session holding only those MatMulNBits nodes;
- ours: benchmarks/kernels/nbits_gemv.c (built here with the system C compiler; AVX-512 VNNI), same weights.
Both are checked against the exact dequantized product first. The floor is this machine's read bandwidth measured in
the same run (benchmarks/machine.py) over the same bytes. Issue 13's evidence for an own kernel, not a product path.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "nbits_gemv.c"
BLOCK = 128  # the only block size the prototype takes (the default int4 and int8 recipes' blocks)


class KernelUnavailable(RuntimeError):
    """The prototype kernel cannot run here; the message says why."""


@dataclass
class NbitsMatrix:
    """One MatMulNBits node's weights in its own layout."""

    name: str
    k: int
    n: int
    bits: int
    b: np.ndarray  # (N, K/128, 128*bits/8) uint8
    scales: np.ndarray  # (N * K/128,) float32

    @property
    def nbytes(self) -> int:
        """What one M = 1 product must read."""
        return self.b.nbytes + self.scales.nbytes

    def dequantized(self) -> np.ndarray:
        """W (N, K) float32 from the blocks (zero point 2^(bits-1), as MatMulNBits defaults it)."""
        if self.bits == 8:
            q = self.b.astype(np.int32) - 128
        else:
            low, high = self.b & 0x0F, self.b >> 4
            q = np.stack([low, high], axis=-1).reshape(self.n, -1, BLOCK).astype(np.int32) - 8  # (N, nb, 128)
        q = q.reshape(self.n, -1, BLOCK)
        return (q * self.scales.reshape(self.n, -1, 1)).reshape(self.n, self.k).astype(np.float32)


def matrices(model_path: Path) -> list[NbitsMatrix]:
    """Every MatMulNBits of the graph, in graph order; refuses the layouts the prototype does not take."""
    import onnx
    from onnx import numpy_helper

    if not model_path.is_file():
        raise KernelUnavailable(f"{model_path} does not exist: pass --model an export folder (gpt2-export export "
                                "--weights int4 --output DIR)")
    model = onnx.load(str(model_path))
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs["block_size"] != BLOCK or len([i for i in node.input if i]) > 3 or attrs["K"] % BLOCK:
            raise KernelUnavailable(f"{node.name}: the prototype takes symmetric blocks of {BLOCK} only "
                                    f"(block_size {attrs['block_size']}, inputs {list(node.input)})")
        b = numpy_helper.to_array(inits[node.input[1]])
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(-1).astype(np.float32)
        found.append(NbitsMatrix(node.name, attrs["K"], attrs["N"], attrs["bits"],
                                 b.reshape(attrs["N"], attrs["K"] // BLOCK, -1), scales))
    if not found:
        raise KernelUnavailable(f"{model_path} has no MatMulNBits: export with --weights int4 or int8")
    return found


def build_kernel(folder: Path) -> Path:
    """Compiles benchmarks/kernels/nbits_gemv.c into folder; returns the library."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise KernelUnavailable("no C compiler (cc / gcc) on PATH: install gcc to build the prototype kernel")
    library = folder / "nbits_gemv.so"
    cmd = [compiler, "-O3", "-fopenmp", "-shared", "-fPIC", str(KERNEL_SOURCE), "-o", str(library), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise KernelUnavailable(f"building the kernel failed ({' '.join(cmd)}): {done.stderr.strip()[:400]}")
    load_kernel(library)  # refuses a CPU without VNNI here, before any round
    return library


def load_kernel(library: Path) -> ctypes.CDLL:
    """The built library with its argument types declared."""
    lib = ctypes.CDLL(str(library))
    if not lib.nbits_supported():
        raise KernelUnavailable("this CPU lacks AVX-512 VNNI, which the prototype kernel needs")
    lib.nbits_packed_size.restype = ctypes.c_long
    lib.nbits_packed_size.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_int]
    pointer = ctypes.c_void_p
    lib.nbits_repack.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_int, pointer, pointer, pointer, pointer]
    lib.nbits_gemv_many.argtypes = [ctypes.c_int, pointer, pointer, pointer, pointer, pointer, pointer, pointer,
                                    pointer, ctypes.c_int]
    return lib


def aligned_empty(size: int, alignment: int = 64) -> np.ndarray:
    """A uint8 buffer whose start is `alignment`-aligned: a 64-byte load must not straddle two cache lines."""
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size]


class OurGemv:
    """The prototype kernel over a list of matrices (repacked once)."""

    def __init__(self, lib: ctypes.CDLL, mats: list[NbitsMatrix], threads: int):
        self.lib, self.mats, self.threads = lib, mats, threads
        self.packed = []
        for m in mats:
            size = lib.nbits_packed_size(m.k, m.n, m.bits)
            packed = aligned_empty(size)
            scales = np.empty(-(-m.n // 4) * 4 * (m.k // BLOCK), np.float32)
            lib.nbits_repack(m.k, m.n, m.bits, m.b.ctypes.data, m.scales.ctypes.data, packed.ctypes.data,
                             scales.ctypes.data)
            self.packed.append((packed, scales, np.empty(m.n, np.float32)))
        self.scratch = np.empty(max(m.k for m in mats) * 2, np.uint8)

    def bind(self, inputs: dict[int, np.ndarray]) -> None:
        """Fixes the inputs (one per width K) that run() multiplies: pointers are taken once, as an executor would."""
        def pointers(values, ctype):
            return (ctype * len(values))(*values)

        self.inputs = inputs  # the kernel reads them through the pointers below: keep them alive
        mats = self.mats
        self.args = (len(mats), pointers([m.k for m in mats], ctypes.c_long),
                     pointers([m.n for m in mats], ctypes.c_long), pointers([m.bits for m in mats], ctypes.c_int),
                     pointers([p.ctypes.data for p, _, _ in self.packed], ctypes.c_void_p),
                     pointers([s.ctypes.data for _, s, _ in self.packed], ctypes.c_void_p),
                     pointers([inputs[m.k].ctypes.data for m in mats], ctypes.c_void_p),
                     pointers([y.ctypes.data for _, _, y in self.packed], ctypes.c_void_p),
                     self.scratch.ctypes.data, self.threads)

    def run(self) -> list[np.ndarray]:
        """y_i = a_K @ W_i^T for every matrix, in graph order, in one call."""
        self.lib.nbits_gemv_many(*self.args)
        return [y for _, _, y in self.packed]


def stock_session(mats: list[NbitsMatrix], threads: int):
    """One ONNX Runtime session with the matrices as MatMulNBits nodes (accuracy level 4), inputs A_K."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outputs = [], [], []
    for i, m in enumerate(mats):
        inits += [numpy_helper.from_array(m.b, f"B{i}"), numpy_helper.from_array(m.scales, f"S{i}")]
        nodes.append(helper.make_node("MatMulNBits", [f"A{m.k}", f"B{i}", f"S{i}"], [f"Y{i}"], domain="com.microsoft",
                                      K=m.k, N=m.n, bits=m.bits, block_size=BLOCK, accuracy_level=4))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [1, m.n]))
    widths = sorted({m.k for m in mats})
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info(f"A{k}", TensorProto.FLOAT, [1, k])
                                               for k in widths], outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session, widths


def check(mats: list[NbitsMatrix], ours: list[np.ndarray], stock: list[np.ndarray], inputs: dict[int, np.ndarray]
          ) -> dict[str, float]:
    """Worst relative error (max |y - exact| / max |exact|) of each path against the dequantized product."""
    worst = {"ours": 0.0, "stock": 0.0}
    for m, y_ours, y_stock in zip(mats, ours, stock, strict=True):
        exact = m.dequantized() @ inputs[m.k]  # (N,)
        span = float(np.abs(exact).max()) or 1.0
        worst["ours"] = max(worst["ours"], float(np.abs(y_ours - exact).max()) / span)
        worst["stock"] = max(worst["stock"], float(np.abs(y_stock.reshape(-1) - exact).max()) / span)
    return worst


def default_export(folder: Path) -> Path:
    """A GPT-2-small-shaped int4 export (random weights, the default recipe)."""
    from gpt2_export.export import ExportOptions, export

    export(None, folder, ExportOptions(validate=False, overwrite=True, weights="int4", kv_cache="shared"))
    return folder / "model.onnx"


def inputs_for(mats: list[NbitsMatrix]) -> dict[int, np.ndarray]:
    """One random activation per width K (the same in every process: fixed seed)."""
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(k).astype(np.float32) for k in sorted({m.k for m in mats})}


def worker(path: str, model: Path, library: Path, threads: int, calls: int) -> dict:
    """One round of one path in this process: the best of `calls` runs over every matrix (seconds)."""
    mats = matrices(model)
    inputs = inputs_for(mats)
    if path == "ours":
        ours = OurGemv(load_kernel(library), mats, threads)
        ours.bind(inputs)
        call = ours.run
    else:
        session, widths = stock_session(mats, threads)
        feeds = {f"A{k}": inputs[k][None] for k in widths}
        def call():
            return session.run(None, feeds)
    for _ in range(3):  # warm
        call()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return {"path": path, "best_s": best}


def check_paths(mats: list[NbitsMatrix], library: Path, threads: int) -> dict[str, float]:
    """Both paths against the exact dequantized product, on the same inputs."""
    inputs = inputs_for(mats)
    ours = OurGemv(load_kernel(library), mats, threads)
    ours.bind(inputs)
    session, widths = stock_session(mats, threads)
    stock = session.run(None, {f"A{k}": inputs[k][None] for k in widths})
    return check(mats, [y.copy() for y in ours.run()], stock, inputs)


def measure(model: Path, rounds: int, threads: int, work: Path, calls: int = 10) -> dict:
    """Interleaved rounds of stock and ours over every matrix of `model`, plus the read floor.

    Each round of each path runs in a fresh process: ONNX Runtime's pool threads spin after a run and
    OpenMP's after a parallel region, so two pools in one process slow each other down (seen here: the
    prototype ran slower interleaved with ONNX Runtime in one process than alone).
    """
    from . import machine

    library = build_kernel(work)
    mats = matrices(model)
    errors = check_paths(mats, library, threads)
    nbytes = sum(m.nbytes for m in mats)
    times: dict[str, list[float]] = {"stock": [], "ours": []}
    floor = []
    for _ in range(rounds):
        for path in ("stock", "ours"):
            cmd = [sys.executable, "-m", "benchmarks.gemv_headroom", "--worker", path, "--model", str(model.parent),
                   "--library", str(library), "--threads", str(threads), "--calls", str(calls)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times[path].append(json.loads(done.stdout.strip().splitlines()[-1])["best_s"])
        floor.append(nbytes / (machine.read_bandwidth(mib=256, threads=threads, passes=3)["gbs"] * 1e9))
    summary = {name: {"best_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3} for name, v in times.items()}
    summary["floor"] = {"best_ms": min(floor) * 1e3, "median_ms": statistics.median(floor) * 1e3}
    return {"model": str(model), "matrices": len(mats), "bytes": nbytes, "threads": threads, "rounds": rounds,
            "relative_error": errors, "timing": summary, "machine": machine.describe(threads, 256, passes=1)}


def report(result: dict) -> str:
    """The markdown table of one run."""
    t = result["timing"]
    lines = [f"{result['matrices']} MatMulNBits, {result['bytes'] / 1e6:.1f} MB per M = 1 step, "
             f"{result['threads']} threads, best of {result['rounds']} interleaved rounds (median beside)", "",
             "| path | best ms | median ms | best / floor | GB/s (best) |", "|---|---|---|---|---|"]
    for name, label in (("floor", "read floor (numpy, same run)"), ("stock", "onnxruntime MatMulNBits"),
                        ("ours", "nbits_gemv.c prototype")):
        best = t[name]["best_ms"]
        lines.append(f"| {label} | {best:.3f} | {t[name]['median_ms']:.3f} | {best / t['floor']['best_ms']:.2f}x | "
                     f"{result['bytes'] / best / 1e6:.1f} |")
    e = result["relative_error"]
    lines += ["", f"ours / stock (best): {t['ours']['best_ms'] / t['stock']['best_ms']:.2f}x. Worst relative error "
              f"against the dequantized product: ours {e['ours']:.2e}, stock {e['stock']:.2e}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an int8 / int4 export folder (default: GPT-2 small int4)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write results.md and results.json here")
    parser.add_argument("--worker", choices=("stock", "ours"), help=argparse.SUPPRESS)  # one round, in its process
    parser.add_argument("--library", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model / "model.onnx", args.library, args.threads, args.calls)))
        return
    with tempfile.TemporaryDirectory(prefix="gemv-headroom-") as tmp:
        work = Path(tmp)
        model = args.model / "model.onnx" if args.model else default_export(work / "export")
        try:
            result = measure(model, args.rounds, args.threads, work)
        except KernelUnavailable as e:
            raise SystemExit(f"gemv_headroom: {e}") from None
    text = report(result)
    print(text)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.md").write_text(text)
        (args.output / "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
