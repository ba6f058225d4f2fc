"""From raw seconds to what the report says: summaries, ratios within the run, the memory floor, targets.

Ratios to transformers (SDPA, its default attention) and to Optimum measured in the same run are the
headline, because these machines are noisy; the GPU backends also get ratios to transformers SDPA on CUDA
(fp16), when it ran. The memory floor is the fp32 weight bytes one batch-1
decode step must read (every block weight and bias, the LM head once, ln_f; the embeddings gather one
row each), divided by the memory read bandwidth measured in the same run. The KV cache it also reads
(~12 MB at position 160 for GPT-2 small, ~2% of the weights) is left out, as the team guide defines it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import is_gpu_backend
from .config import BASELINE, GPU_BASELINE
from .measure import summarize

OPTIMUM = "optimum-ort"
FP32_RUNTIME = ("ort-fused", "ort-fused-shared", "ort-plain")  # our fp32 CPU backends, for the fp32 targets
INT8_RUNTIME = ("ort-int8", "ort-int8-shared")  # the same weights with a growing or an in-place cache
INT4_RUNTIME = ("ort-int4", "ort-int4-shared")


def decode_weight_bytes(config: dict[str, Any], bytes_per_weight: int = 4) -> int:
    """Weight bytes one batch-1 decode step reads (GPT-2 config.json fields)."""
    c, v, layers = config["n_embd"], config["vocab_size"], config["n_layer"]
    inner = config.get("n_inner") or 4 * c
    block = (2 * c) + (c * 3 * c + 3 * c) + (c * c + c) + (2 * c) + (c * inner + inner) + (inner * c + c)
    parameters = layers * block + v * c + 2 * c + 2 * c  # blocks, LM head, ln_f, one wte row + one wpe row
    return parameters * bytes_per_weight


def step_products(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(K, N) of every weight product of one decode step, in graph order: 4 per block, then the LM head."""
    c = config["n_embd"]
    inner = config.get("n_inner") or 4 * c
    return [(c, 3 * c), (c, c), (c, inner), (inner, c)] * config["n_layer"] + [(c, config["vocab_size"])]


def memory_floor(config: dict[str, Any], bandwidth_gbs: float) -> dict[str, float]:
    """The fp32 decode floor: weight bytes / measured read bandwidth."""
    weight_bytes = decode_weight_bytes(config)
    return {"weight_bytes": weight_bytes, "weight_mb": weight_bytes / 1e6, "bandwidth_gbs": bandwidth_gbs,
            "floor_ms": weight_bytes / (bandwidth_gbs * 1e9) * 1e3}


def batch_latency(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Prefill and per-step decode at batch `decode_batch`, and its decode tokens/s; None for runs without them."""
    if "prefill_batch" not in raw or "decode_batch" not in raw:  # results.json written before they were measured
        return None
    prefill, decode = raw["prefill_batch"], raw["decode_batch"]
    decode_ms = summarize(np.asarray(decode["runs_s"], dtype=np.float64).ravel(), 1e3)
    return {"batch": decode["batch"], "prompt_length": decode["prompt_length"],
            "prefill_ms": summarize(prefill["seconds"], 1e3), "decode_ms": decode_ms,
            "decode_tokens_per_s": decode["batch"] * 1e3 / decode_ms["p50"]}  # a step makes one token per row


def summarize_backend(raw: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds and tokens/s from one backend's raw seconds."""
    decode = raw["decode"]
    runs = np.asarray(decode["runs_s"], dtype=np.float64)  # (repeats, steps)
    generate = {}
    for batch, entry in raw["generate"].items():
        median_s = float(np.median(entry["seconds"]))
        generate[batch] = {"tokens_per_s": entry["batch"] * entry["new_tokens"] / median_s,
                           "seconds": summarize(entry["seconds"])}
    return {
        "prefill_ms": {length: summarize(samples, 1e3) for length, samples in raw["prefill_s"].items()},
        "decode_ms": summarize(runs.ravel(), 1e3),
        "decode_ms_by_position": {"positions": decode["positions"],
                                  "median": (np.median(runs, axis=0) * 1e3).tolist()},
        "generate": generate,
        "batch_latency": batch_latency(raw),
        "peak_rss_mb": raw["peak_rss_mb"],
        "bandwidth_gbs_before": raw.get("bandwidth_gbs_before"),
        "load_s": raw["load_s"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios_to(summaries: dict[str, dict], reference: str, floor_ms: float | None) -> dict[str, dict]:
    """Per backend: decode p50, prefill medians and tokens/s relative to `reference` (same run)."""
    ref = summaries.get(reference)
    out = {}
    for name, s in summaries.items():
        entry: dict[str, Any] = {"decode_p50": None, "prefill": {}, "tokens_per_s": {}}
        if ref is not None:
            entry["decode_p50"] = _ratio(s["decode_ms"]["p50"], ref["decode_ms"]["p50"])
            if s.get("batch_latency") and ref.get("batch_latency"):
                entry["decode_p50_batch"] = _ratio(s["batch_latency"]["decode_ms"]["p50"],
                                                   ref["batch_latency"]["decode_ms"]["p50"])
            entry["prefill"] = {k: _ratio(v["median"], ref["prefill_ms"].get(k, {}).get("median"))
                                for k, v in s["prefill_ms"].items()}
            entry["tokens_per_s"] = {k: _ratio(v["tokens_per_s"], ref["generate"].get(k, {}).get("tokens_per_s"))
                                     for k, v in s["generate"].items()}
        if floor_ms and not is_gpu_backend(name):  # the floor is the CPU's; a GPU reads its own memory
            entry["decode_p50_vs_floor"] = s["decode_ms"]["p50"] / floor_ms
        out[name] = entry
    return out


def gpu_ratios(summaries: dict[str, dict]) -> dict[str, dict]:
    """The GPU backends' ratios to transformers SDPA on CUDA (same run); {} when that did not run."""
    if GPU_BASELINE not in summaries:
        return {}
    return ratios_to({name: s for name, s in summaries.items() if is_gpu_backend(name)}, GPU_BASELINE, None)


def token_match(summaries: dict[str, dict], raw: dict[str, dict], reference: str) -> dict[str, float | None]:
    """Share of batch-1 generate() tokens equal to the reference backend's (same prompt, greedy)."""
    if reference not in raw or "generate" not in raw[reference] or "1" not in raw[reference]["generate"]:
        return {}
    ref_tokens = np.asarray(raw[reference]["generate"]["1"]["tokens_row0"])
    return {name: float((np.asarray(raw[name]["generate"]["1"]["tokens_row0"]) == ref_tokens).mean())
            for name in summaries if "1" in raw[name].get("generate", {})}


def _target(name: str, source: str, backend: str | None, value: float | None, limit: float, comparison: str,
            unit: str, detail: str = "") -> dict[str, Any]:
    met = None if value is None else (value <= limit if comparison == "<=" else value >= limit)
    return {"name": name, "source": source, "backend": backend, "value": value, "limit": limit,
            "comparison": comparison, "unit": unit, "met": met, "detail": detail}


def _best(summaries: dict[str, dict], names: tuple[str, ...], key) -> str | None:
    """The backend among `names` with the lowest key(summary)."""
    present = [n for n in names if n in summaries]
    return min(present, key=lambda n: key(summaries[n])) if present else None


def evaluate_targets(summaries: dict[str, dict], floor: dict[str, float] | None,
                     agreement: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every target with its value, limit and met / not met (None: not measured in this run)."""
    targets = []
    floor_ms = floor["floor_ms"] if floor else None
    ref = summaries.get(BASELINE)

    def decode(name: str | None) -> float | None:
        return summaries[name]["decode_ms"]["p50"] if name in summaries else None

    fp32 = _best(summaries, FP32_RUNTIME, lambda s: s["decode_ms"]["p50"])
    guide = "team guide"
    int8, int4 = (_best(summaries, names, lambda s: s["decode_ms"]["p50"]) or names[0]
                  for names in (INT8_RUNTIME, INT4_RUNTIME))
    for label, backend, limit in (("fp32 decode / memory floor", fp32, 1.10), ("int8 decode / memory floor",
                                  int8, 0.30), ("4-bit decode / memory floor", int4, 0.18)):
        value = _ratio(decode(backend), floor_ms)
        detail = f"{decode(backend):.2f} ms vs floor {floor_ms:.2f} ms" if value is not None else "not measured"
        targets.append(_target(label, guide, backend, value, limit, "<=", "x floor", detail))

    issue = "issue"
    value = _ratio(decode(fp32), ref["decode_ms"]["p50"] if ref else None)
    detail = f"{decode(fp32):.2f} ms vs {ref['decode_ms']['p50']:.2f} ms" if value is not None else "not measured"
    targets.append(_target(f"fp32 decode / transformers ({BASELINE})", issue, fp32, value, 0.40, "<=", "x", detail))

    prefill_best = _best(summaries, FP32_RUNTIME, lambda s: max(v["median"] for v in s["prefill_ms"].values()))
    worst, detail = None, "not measured"
    if ref is not None and prefill_best is not None:
        ratios = {k: v["median"] / ref["prefill_ms"][k]["median"]
                  for k, v in summaries[prefill_best]["prefill_ms"].items() if k in ref["prefill_ms"]}
        if ratios:
            worst = max(ratios.values())
            detail = "per prompt length: " + ", ".join(f"{k}: {r:.2f}x" for k, r in ratios.items())
    targets.append(_target(f"fp32 prefill / transformers ({BASELINE}), worst prompt length", issue,
                           prefill_best, worst, 0.45, "<=", "x", detail))

    tps_best = _best(summaries, FP32_RUNTIME + INT8_RUNTIME + INT4_RUNTIME,
                     lambda s: -s["generate"].get("8", {}).get("tokens_per_s", 0.0))
    tps = summaries[tps_best]["generate"].get("8", {}).get("tokens_per_s") if tps_best else None
    targets.append(_target("tokens/s at batch 8 (end to end)", issue, tps_best, tps, 500.0, ">=", "tokens/s",
                           "" if tps is not None else "batch 8 not measured"))

    variants = (agreement or {}).get("variants", {})
    for backend in ("ort-int8", "ort-int4"):
        value = variants.get(backend, {}).get("teacher_forced")
        detail = (f"free-running {variants[backend]['free_running']:.1%}" if value is not None else "not measured")
        targets.append(_target(f"{backend} greedy agreement with fp32 (teacher-forced)", issue, backend, value,
                               0.95, ">=", "share", detail))

    superseded = "issue (superseded by the team guide's floor targets)"
    value = _ratio(decode(fp32), floor_ms)
    targets.append(_target("fp32 decode / memory floor", superseded, fp32, value, 1.05, "<=", "x floor"))
    for backend in (int8, int4):
        targets.append(_target(f"{backend} decode", superseded, backend, decode(backend), 3.0, "<=", "ms/token"))
    return targets
