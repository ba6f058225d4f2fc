"""Timing and isolation: warm-up + repeats, medians and p50/p90/p99, peak RSS, one subprocess per backend.

Each backend runs in its own `python -m benchmarks.worker` process, so its peak RSS (read in the child:
VmHWM on Linux, see peak_rss_mb) is its own and no backend's thread pools, allocator caches or imported
libraries (torch, onnxruntime) skew another's timings. These machines are shared: /proc/stat tells how
much CPU other processes took while something was measured, and noisy measurements are taken again.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")
PERCENTILES = (50, 90, 99)
PROGRESS_PREFIX = "PROGRESS "  # worker stderr lines that the parent forwards as progress


class WorkerError(RuntimeError):
    """A worker process failed or timed out; the message quotes the end of its log."""


def now_ns() -> int:
    """A monotonic timestamp for intervals (time.perf_counter_ns)."""
    return time.perf_counter_ns()


def seconds_since(start_ns: int) -> float:
    """Seconds elapsed since `start_ns`."""
    return (time.perf_counter_ns() - start_ns) / 1e9


def timed(call: Callable[[], T], sync: Callable[[], None] | None = None) -> tuple[T, float]:
    """call()'s result and its seconds. `sync` (torch.cuda.synchronize) runs before the clock starts and again
    before it stops: CUDA kernels run asynchronously, so otherwise earlier queued work would be counted and
    this call's own kernels would not."""
    if sync is not None:
        sync()
    start = now_ns()
    result = call()
    if sync is not None:
        sync()
    return result, seconds_since(start)


def repeat(run: Callable[[], float], warmup: int, repeats: int) -> list[float]:
    """Call `run` (which returns the seconds it measured) warmup + repeats times; keep the timed repeats."""
    samples = [run() for _ in range(warmup + repeats)]
    return samples[warmup:]


def guarded(run: Callable[[], T], quiet_share: float | None, max_redo: int = 3) -> tuple[T, int]:
    """run(), called again (at most max_redo times) while other processes took more than quiet_share of the
    CPUs during it; returns the last result and how many were discarded. quiet_share None: run once."""
    discarded = 0
    while True:
        start = cpu_seconds()
        result = run()
        share = contention(start, cpu_seconds()).get("other_processes_cpu_share", 0.0)
        if quiet_share is None or share <= quiet_share or discarded == max_redo:
            return result, discarded
        discarded += 1


def summarize(samples: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """median, p50/p90/p99 (numpy's linear percentiles), mean, min, max of samples x scale."""
    values = np.asarray(samples, dtype=np.float64) * scale
    if values.size == 0:
        raise ValueError("no samples to summarize: run at least one repeat")
    p50, p90, p99 = np.percentile(values, PERCENTILES)
    return {
        "median": float(np.median(values)),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(values.size),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own address space. Not
    ru_maxrss: execve() carries the forked parent's peak into it, so every worker would report at least
    the orchestrator's RSS. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def cpu_seconds() -> dict[str, float]:
    """Machine-wide busy and steal CPU seconds (/proc/stat) and this process's own; {} where unavailable."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = os.times()
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick,
            "own": own.user + own.system, "wall": time.monotonic()}


def contention(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """CPU other processes used while we measured (as a share of every core), and the hypervisor's steal."""
    if not start or not end:
        return {}
    wall, cores = end["wall"] - start["wall"], os.cpu_count() or 1
    others = max(end["busy"] - start["busy"] - (end["own"] - start["own"]), 0.0)
    return {"other_processes_cpu_share": others / (wall * cores), "steal_share": (end["steal"] - start["steal"]) /
            (wall * cores), "seconds": wall}


def other_cpu_share(seconds: float = 2.0) -> float:
    """The share of the CPUs other processes use, sampled over `seconds` (0 where /proc/stat is missing)."""
    start = cpu_seconds()
    time.sleep(seconds)
    return contention(start, cpu_seconds()).get("other_processes_cpu_share", 0.0)


def wait_for_quiet(threshold: float, max_wait_s: float, report: Callable[[str], None]) -> float | None:
    """Wait (at most max_wait_s) until other processes use less than `threshold` of the CPUs; the last share."""
    if max_wait_s <= 0:
        return None
    deadline = time.monotonic() + max_wait_s
    share = other_cpu_share()
    if share > threshold:
        report(f"  other processes use {share:.0%} of the CPUs: waiting up to {max_wait_s:.0f} s for them to finish")
        while share > threshold and time.monotonic() < deadline:
            share = other_cpu_share(5.0)
        report(f"  {'quiet' if share <= threshold else 'still busy, measuring anyway'} ({share:.0%})")
    return share


def progress(message: str) -> None:
    """Worker side: a progress line the parent forwards to its reporter."""
    print(PROGRESS_PREFIX + message, file=sys.stderr, flush=True)


def worker_env(threads: int) -> dict[str, str]:
    """The child's environment: this checkout importable, one thread count, TensorFlow kept out."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("USE_TF", "0")  # transformers imports TensorFlow when installed: slow and noisy
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_worker(spec: dict, workdir: Path, name: str, threads: int, timeout_s: float,
               report: Callable[[str], None]) -> dict:
    """Run one job in `python -m benchmarks.worker`, forwarding its progress; returns its JSON result."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (workdir / f"{name}.{kind}" for kind in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(result_path)]
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, text=True, env=worker_env(threads))
        killer = threading.Timer(timeout_s, child.kill)  # a silent hang cannot outlive the limit either
        killer.start()
        try:
            for line in child.stderr or []:
                log.write(line)
                if line.startswith(PROGRESS_PREFIX):
                    report("  " + line[len(PROGRESS_PREFIX):].rstrip())
            code = child.wait()
        finally:
            timed_out = not killer.is_alive() and child.returncode != 0
            killer.cancel()
    if code != 0 or not result_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        why = f"killed after the {timeout_s:.0f} s limit" if timed_out else f"exit code {code}"
        raise WorkerError(f"{name} worker failed ({why}); log {log_path}: " + " | ".join(tail))
    return json.loads(result_path.read_text(encoding="utf-8"))
