"""The machine a run measured: CPU, cores, memory, package versions, the GPU (or "no GPU"), and its measured
memory read bandwidth.

Speed only compares within one run (shared/ENVIRONMENT.md: these machines differ day to day), so the
bandwidth that sets the decode floor is measured here, in the same run, with the same thread count the
backends get: `threads` Python threads each stream a slice of one large float32 array through numpy
(sum and BLAS dot release the GIL), and the best method's median over several passes is the read rate.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import numpy as np

from . import gpu

# onnxruntime-gpu is its own distribution: with it installed, "onnxruntime" has no version of its own.
PACKAGES = ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "optimum", "optimum-onnx",
            "matplotlib", "psutil", "tensorrt", "cuda-python", "gpt2-export")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The matrix/vector extensions that decide which kernels ONNX Runtime and torch pick."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "avx_vnni")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def memory_bytes() -> int | None:
    """Total RAM in bytes (psutil when installed, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def package_version(name: str) -> str | None:
    """An installed distribution's version, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "gpt2-export":  # run from a checkout without `pip install -e .`
            from gpt2_export import __version__

            return f"{__version__} (source checkout)"
        return None


def versions() -> dict[str, str | None]:
    """Versions of every package a backend may use, and Python's."""
    found = {name: package_version(name) for name in PACKAGES}
    found["python"] = platform.python_version()
    return found


def _read_rate(chunks: list[np.ndarray], reader, passes: int) -> float:
    """Median bytes/s over `passes` of reading every chunk once, one thread per chunk."""
    total = sum(chunk.nbytes for chunk in chunks)
    seconds = []
    with ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(reader, chunks))  # warm-up: page faults, thread start-up
        for _ in range(passes):
            start = time.perf_counter_ns()
            list(pool.map(reader, chunks))
            seconds.append((time.perf_counter_ns() - start) / 1e9)
    return total / statistics.median(seconds)


def read_bandwidth(mib: int = 1024, threads: int = 2, passes: int = 5) -> dict[str, float | int | str]:
    """Memory read bandwidth in GB/s (1e9 bytes/s): the best of numpy sum and dot with `threads` threads."""
    array = np.ones(mib * 2**20 // 4, dtype=np.float32)  # written once, so every page is resident
    chunks = np.array_split(array, threads)
    rates = {
        "sum": _read_rate(chunks, np.sum, passes),
        "dot": _read_rate(chunks, lambda c: np.dot(c, c), passes),
        "sum_1_thread": _read_rate([array], np.sum, passes),
    }
    del chunks, array
    best = max(("sum", "dot"), key=lambda name: rates[name])
    return {
        "gbs": rates[best] / 1e9,
        "method": f"numpy {best} over {mib} MiB float32, {threads} threads, median of {passes} passes",
        "threads": threads,
        "array_mib": mib,
        "passes": passes,
        **{f"{name}_gbs": rate / 1e9 for name, rate in rates.items()},
    }


def describe(threads: int, bandwidth_mib: int, passes: int = 5) -> dict:
    """Everything the report records about the machine, the GPU section and bandwidth included."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    memory = memory_bytes()
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gb": round(memory / 1e9, 1) if memory else None,
        "platform": platform.platform(),
        "versions": versions(),
        "gpu": gpu.describe(),
        "bandwidth": read_bandwidth(bandwidth_mib, threads, passes),
        "blas_env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))},
    }
