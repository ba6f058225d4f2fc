"""Speed of every backend side by side: `run_benchmark(BenchConfig(...))`, or `gpt2-export bench`.

Modules, one concern each: config (BenchConfig), machine (versions, memory bandwidth), gpu (the GPU, or
why there is none), artifacts (the weights, exports and TensorRT engine every backend shares), backends (one
protocol over transformers, Optimum, our reference and our runtime, on the CPU or a GPU), suite (what is
measured), measure (timing, percentiles, worker processes), worker (one backend per process), agreement
(int8 / int4 vs fp32), analysis (ratios, floor, targets), report and plots (results.json, results.md, PNGs),
run (the orchestration).
The package imports nothing heavy at import time: workers of ONNX Runtime backends never load torch.
"""

from __future__ import annotations

from typing import Any

from .config import BACKENDS, BASELINE, BenchConfig, BenchConfigError

__all__ = ["BACKENDS", "BASELINE", "BenchConfig", "BenchConfigError", "BenchResult", "run_benchmark"]


def __getattr__(name: str) -> Any:
    """run_benchmark / BenchResult on first use (they import the exporter, hence torch)."""
    if name in ("run_benchmark", "BenchResult"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
