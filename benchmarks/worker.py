"""`python -m benchmarks.worker SPEC RESULT`: run one job in a fresh process and write its JSON result.

Jobs: "backend" (load one backend, measure it, record its peak RSS), "agreement" (int8 / int4 vs fp32),
"step-profile" (benchmarks.step_profile: where one backend's decode step spends its time),
"optimum-export" and "tensorrt-engine" (so the orchestrator never holds a CUDA context). A backend that
cannot run here (missing package, provider or GPU) is reported as skipped with the reason, not as a
failure. Only what the job needs is imported, so an ONNX Runtime backend's peak RSS holds no torch.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("USE_TF", "0")  # before anything imports transformers

from .measure import contention, cpu_seconds, now_ns, peak_rss_mb, progress, seconds_since  # noqa: E402


def run_backend(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the backend, measure it, and report the process's peak RSS."""
    from .backends import BackendUnavailableError, load_backend
    from .suite import measure_backend

    name = spec["backend"]
    start = now_ns()
    try:
        backend = load_backend(name, spec["artifacts"], spec["plan"]["threads"])
    except BackendUnavailableError as e:
        return {"backend": name, "status": "skipped", "reason": str(e)}
    load_s = seconds_since(start)
    rss_loaded = peak_rss_mb()
    progress(f"[{name}] loaded in {load_s:.1f} s")
    cpu_start = cpu_seconds()
    raw = measure_backend(backend, spec["plan"], lambda message: progress(f"[{name}] {message}"))
    busy = contention(cpu_start, cpu_seconds())
    if busy:
        progress(f"[{name}] other processes used {busy['other_processes_cpu_share']:.0%} of the CPUs meanwhile")
    return {"backend": name, "status": "ok", "load_s": load_s, "peak_rss_mb": peak_rss_mb(),
            "peak_rss_after_load_mb": rss_loaded, "contention": busy, **raw}


def run_agreement(spec: dict[str, Any]) -> dict[str, Any]:
    """int8 / int4 greedy agreement with the fp32 export."""
    from .agreement import measure_agreement

    plan = spec["plan"]
    return measure_agreement(spec["artifacts"]["exports"], plan["agreement_prompts"], plan["agreement_tokens"],
                             plan["seed"], plan["threads"], lambda message: progress(f"[agreement] {message}"))


def run_optimum_export(spec: dict[str, Any]) -> dict[str, Any]:
    """Optimum's export of the checkpoint into the cache."""
    from .artifacts import export_optimum

    start = now_ns()
    folder = export_optimum(spec["artifacts"]["checkpoint"], spec["folder"])
    return {"folder": folder, "seconds": seconds_since(start)}


def run_engine_build(spec: dict[str, Any]) -> dict[str, Any]:
    """The TensorRT engine of the plain fp16 export into the cache; {"unavailable": why} without TensorRT or a GPU."""
    from runtime.tensorrt_backend import TensorRTUnavailableError

    from .artifacts import build_tensorrt_engine

    start = now_ns()
    try:
        result = build_tensorrt_engine(spec["export"], spec["folder"], spec["max_batch"], spec["max_sequence"],
                                       lambda message: progress(f"[tensorrt-engine] {message}"))
    except TensorRTUnavailableError as e:
        return {"folder": None, "unavailable": str(e)}
    return {**result, "seconds": seconds_since(start)}


def run_step_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime's per-node profile of one backend's decode steps at one prompt length."""
    from .step_profile import profile_export

    return profile_export(Path(spec["export"]), spec["position"], spec["steps"], spec["threads"],
                          Path(spec["work"]), spec["seed"], spec["bandwidth_mib"])


JOBS = {"backend": run_backend, "agreement": run_agreement, "optimum-export": run_optimum_export,
        "tensorrt-engine": run_engine_build, "step-profile": run_step_profile}


def main(argv: list[str]) -> int:
    """Read the spec, run the job, write the result; a traceback goes to stderr (the parent's log)."""
    if len(argv) != 2:
        print("usage: python -m benchmarks.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = JOBS[spec["job"]](spec)
    except Exception:
        traceback.print_exc()
        return 1
    Path(argv[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
