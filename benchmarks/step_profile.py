"""Where a decode step's time goes: ONNX Runtime's per-node profile of our backend's steps, beside their bytes.

    python -m benchmarks.step_profile --model EXPORT [--positions 32,900] [--steps 16] [--threads 2]

One process per (export, position): the export is loaded with ONNX Runtime's profiler on, a prompt of P tokens is
filled, `steps` greedy decode steps are timed around `decoder.step` (as the rounds time them), and the trace is
read back; the same steps are first timed on the export loaded without the profiler (that step time is reported
too). Per step (medians over the steps): the step's wall time, the part inside `session.run`, the Python around it
(runtime.onnx_decoder: inputs, binding, logits), ONNX Runtime's time between kernels, and each op type's kernel time
beside the bytes it must read: the weights of the weight products (their initializers; see WEIGHT_OPS) and the KV
cache of P + 1 positions for the attention ops. Its read floor is those
bytes over the memory read bandwidth sampled right before and right after (the better one): an op at 1.0x its
floor streams its bytes as fast as numpy reads memory. `gpt2-export bench` runs this for every floor target's
backend after the interleaved rounds (`--profile-steps`), so a missed target comes with where its time went.
Shares are of the profiled step's wall time. The profiler slows the kernels as well as the gaps between them
(measured 9.6 -> 12.4 ms per int4 step on a 2-core Zen 2 VM): read the kernels' shares, not their sum, and let the
rounds' times, not these, rank backends.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .config import BenchConfigError, parse_ints

ATTENTION_OPS = ("MultiHeadAttention", "GroupQueryAttention", "Attention")
# The ops whose bytes set a decode step's floor: the weight products (their initializers) and attention (the KV
# cache). The others read activations and a few hundred bytes of parameters; an embedding Gather reads one row.
WEIGHT_OPS = ("MatMul", "MatMulNBits", "Gemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul")
KERNEL_SUFFIX = "_kernel_time"


class ProfileError(RuntimeError):
    """The profile could not be taken (missing export, a trace without the expected runs); the message says why."""


def node_weight_bytes(model_path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Per node of the graph: bytes of its initializer inputs (weight products only, see WEIGHT_OPS), its op type."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(model_path), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
             for t in graph.initializer}
    weights, ops = {}, {}
    for node in graph.node:
        ops[node.name] = node.op_type
        weights[node.name] = sum(sizes.get(name, 0) for name in node.input) if node.op_type in WEIGHT_OPS else 0
    return weights, ops


def trace_runs(trace: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """The last `runs` session runs of a trace: each one's µs and its kernels' (node name, op type, µs)."""
    model_runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(model_runs) < runs:
        raise ProfileError(f"the trace holds {len(model_runs)} session runs, fewer than the {runs} decode steps")
    kernels = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith(KERNEL_SUFFIX)]
    out = []
    for run in model_runs[-runs:]:
        start, end = run["ts"], run["ts"] + run["dur"]
        inside = [(e["name"][:-len(KERNEL_SUFFIX)], e["args"]["op_name"], e["dur"]) for e in kernels
                  if start <= e["ts"] <= end]
        out.append({"us": run["dur"], "kernels": inside})
    return out


def summarize(runs: list[dict[str, Any]], step_s: list[float], weights: dict[str, int], kv_bytes: int,
              bandwidth_gbs: float) -> dict[str, Any]:
    """Medians over the steps: wall, run, Python, between kernels, and each op type's time against its bytes."""
    nodes: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        for name, op, _ in run["kernels"]:
            nodes[op].add(name)
    per_op_us: dict[str, list[float]] = {op: [] for op in nodes}
    for run in runs:
        totals: dict[str, float] = defaultdict(float)
        for _, op, us in run["kernels"]:
            totals[op] += us
        for op, samples in per_op_us.items():  # an op absent from a run counts 0 there
            samples.append(totals[op])
    run_ms = [r["us"] / 1e3 for r in runs]
    kernel_ms = [sum(us for _, _, us in r["kernels"]) / 1e3 for r in runs]
    floor_per_byte_ms = 1e3 / (bandwidth_gbs * 1e9)
    ops = []
    for op, samples in per_op_us.items():
        read = sum(weights.get(name, 0) for name in nodes[op]) + (kv_bytes if op in ATTENTION_OPS else 0)
        ms = float(np.median(samples)) / 1e3
        ops.append({"op": op, "nodes": len(nodes[op]), "ms": ms, "bytes": read,
                    "gbs": read / (ms * 1e6) if read and ms else None,
                    "vs_read_floor": ms / (read * floor_per_byte_ms) if read else None})
    ops.sort(key=lambda o: -o["ms"])
    step_bytes = sum(o["bytes"] for o in ops)
    step_ms = float(np.median(step_s)) * 1e3
    streaming = [o for o in ops if o["bytes"]]
    return {
        "step_ms": step_ms,
        "run_ms": float(np.median(run_ms)),
        "python_ms": float(np.median([s * 1e3 - r for s, r in zip(step_s, run_ms, strict=True)])),
        "kernels_ms": float(np.median(kernel_ms)),
        "between_kernels_ms": float(np.median([r - k for r, k in zip(run_ms, kernel_ms, strict=True)])),
        "step_bytes": step_bytes,
        "read_floor_ms": step_bytes * floor_per_byte_ms,
        "streaming_ms": sum(o["ms"] for o in streaming),
        "streaming_read_floor_ms": sum(o["bytes"] for o in streaming) * floor_per_byte_ms,
        "other_kernels_ms": sum(o["ms"] for o in ops if not o["bytes"]),
        "ops": ops,
    }


def profile_export(folder: Path, position: int, steps: int, threads: int, work: Path, seed: int = 0,
                   bandwidth_mib: int = 1024) -> dict[str, Any]:
    """One profile: load `folder` profiled, fill `position` tokens, time and trace `steps` decode steps."""
    from .backends import RuntimeBackend
    from .machine import read_bandwidth
    from .round_analysis import kv_bytes
    from .suite import prompt

    model_path = folder / "model.onnx"
    if not model_path.is_file():
        raise ProfileError(f"{model_path} is missing: pass an export folder (gpt2-export export --output DIR)")
    work.mkdir(parents=True, exist_ok=True)
    plain = RuntimeBackend(str(folder), "cpu", threads)
    shape = plain.model.manifest.shape
    if position + steps > shape.n_positions:
        raise ProfileError(f"position {position} + {steps} steps passes n_positions {shape.n_positions}: use a "
                           f"position <= {shape.n_positions - steps}")
    ids, mask = prompt(1, position, seed, plain.vocab_size)
    plain.decode_steps(ids[:, :8], mask[:, :8], 2)  # warm-up: page the weights in, wake the threads
    unprofiled_s = plain.decode_steps(ids, mask, steps)  # the profiler slows kernels too: the step without it
    del plain
    backend = RuntimeBackend(str(folder), "cpu", threads, profile=str(work / f"trace-p{position}"))
    backend.decode_steps(ids[:, :8], mask[:, :8], 2)
    before = read_bandwidth(bandwidth_mib, threads, passes=3)["gbs"]
    step_s = backend.decode_steps(ids, mask, steps)
    after = read_bandwidth(bandwidth_mib, threads, passes=3)["gbs"]
    trace_path = backend.model.end_profiling()
    trace = json.loads(trace_path.read_text(encoding="utf-8"))
    trace_path.unlink()  # ~1 MB per step: the summary is what is kept
    weights, _ = node_weight_bytes(model_path)
    config = {"n_layer": shape.n_layer, "n_embd": shape.n_embd}
    summary = summarize(trace_runs(trace, steps), step_s, weights, kv_bytes(config, position), max(before, after))
    return {"export": str(folder), "position": position, "steps": steps, "threads": threads,
            "bandwidth_gbs": {"before": before, "after": after},
            "unprofiled_step_ms": float(np.median(unprofiled_s)) * 1e3, **summary}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def lines(profile: dict[str, Any], title: str) -> list[str]:
    """A profile as markdown: the step's split, then one row per op type (most time first)."""
    if "error" in profile:
        return [f"### {title}", "", f"- not profiled: {profile['error']}", ""]
    bw = profile["bandwidth_gbs"]
    plain = profile["unprofiled_step_ms"]
    streaming = profile["streaming_ms"] / profile["streaming_read_floor_ms"]
    out = [f"### {title}", "",
           f"Prompt {profile['position']}, median of {profile['steps']} decode steps, {profile['threads']} threads; "
           f"read bandwidth {bw['before']:.1f} GB/s before, {bw['after']:.1f} after (floor at the better). Step "
           f"{plain:.2f} ms without the profiler (the same export loaded without it, just before), reading "
           f"{profile['step_bytes'] / 1e6:.1f} MB: read floor {profile['read_floor_ms']:.2f} ms "
           f"({plain / profile['read_floor_ms']:.2f}x of it). Profiled: {profile['step_ms']:.2f} ms, inside "
           f"`session.run` {profile['run_ms']:.2f} (kernels {profile['kernels_ms']:.2f}, between kernels "
           f"{profile['between_kernels_ms']:.2f}), Python around it {profile['python_ms']:.2f}; the weight products "
           f"and attention {profile['streaming_ms']:.2f} ms ({streaming:.2f}x their read floor), the other kernels "
           f"{profile['other_kernels_ms']:.2f}.", "",
           "| op type | nodes | ms per step | share of profiled step | MB read | GB/s | x its read floor |",
           "|---|---|---|---|---|---|---|"]
    for op in profile["ops"]:
        gbs = "-" if op["gbs"] is None else f"{op['gbs']:.1f}"
        floor = "-" if op["vs_read_floor"] is None else f"{op['vs_read_floor']:.2f}x"
        mb = f"{op['bytes'] / 1e6:.2f}" if op["bytes"] else "-"
        out.append(f"| {op['op']} | {op['nodes']} | {_ms(op['ms'])} | {op['ms'] / profile['step_ms']:.1%} | {mb} "
                   f"| {gbs} | {floor} |")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an export folder (gpt2-export export)")
    parser.add_argument("--positions", default="32,900", help="prompt lengths, comma-separated (default 32,900)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps profiled per position (default 16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write results.md and results.json here")
    args = parser.parse_args(argv)
    try:
        positions = parse_ints(args.positions, "--positions")
    except BenchConfigError as e:
        print(f"step_profile: {e}", file=sys.stderr)
        return 2
    if args.steps < 1 or not positions or min(positions) < 1:
        print("step_profile: --steps and every position must be >= 1", file=sys.stderr)
        return 2
    profiles, text = [], []
    with tempfile.TemporaryDirectory(prefix="step-profile-") as tmp:
        for position in positions:
            try:
                profile = profile_export(args.model, position, args.steps, args.threads, Path(tmp))
            except ProfileError as e:
                print(f"step_profile: {e}", file=sys.stderr)
                return 1
            profiles.append(profile)
            text += lines(profile, f"{args.model} at prompt {position}")
    print("\n".join(text))
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.md").write_text("\n".join(text), encoding="utf-8")
        (args.output / "results.json").write_text(json.dumps(profiles, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
