"""From the interleaved rounds' raw seconds to the report: best and median per position, floors, issue 13's targets.

A participant's round value at a position is the median of its timed steps in that round (llama-bench: the
median of its samples); its best is the lowest round value, reported with the median round beside it. The memory
floor at position P is what a batch-1 fp32 step must read, the weights (analysis.decode_weight_bytes) plus the
KV cache of P + 1 positions (keys and values, every layer, fp32), divided by each round's read bandwidth; its
best is the round with the highest bandwidth. The compute floor: one batch-B step's GEMMs (random fp32 weights
of the model's shapes), the faster of numpy and ONNX Runtime, each a round's fastest of 5; best = lowest round.
Ratios: best / best floor. Paired ratios (runs from 2026-12-07 13:40 on): the bandwidth is also sampled right before
each participant's round, and that round's ms over the floor at that bandwidth is its paired ratio, reported as the
best and the median over rounds: on a host whose bandwidth swings 2x within minutes, best / best can pair two
windows that never met.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .analysis import FP32_RUNTIME, INT4_RUNTIME, INT8_RUNTIME, decode_weight_bytes
from .backends import LABELS

# Our backend and llama.cpp's GGUF at each matching precision.
PRECISION_PAIRS = (("F32", FP32_RUNTIME, "llama-cpp-f32"), ("Q8_0", INT8_RUNTIME, "llama-cpp-q8_0"),
                   ("Q4_0", INT4_RUNTIME, "llama-cpp-q4_0"))
SOURCE = "issue 13"
PEER_LABELS = {
    "llama-cpp-f32": "llama.cpp llama-bench, GGUF F32 (KV cache f16)",
    "llama-cpp-q8_0": "llama.cpp llama-bench, GGUF Q8_0 (KV cache f16)",
    "llama-cpp-q4_0": "llama.cpp llama-bench, GGUF Q4_0 (tied embedding / LM head Q6_K, KV cache f16)",
    "ct2-float32": "CTranslate2 Generator, float32",
    "ct2-int8": "CTranslate2 Generator, int8 weights (int8_float32)",
}


def label(name: str) -> str:
    """What participant `name` is, for the report (ours from benchmarks.backends.LABELS)."""
    return PEER_LABELS.get(name) or LABELS.get(name, name)


def kv_bytes(config: dict[str, Any], position: int, bytes_per_value: int = 4) -> int:
    """KV cache bytes the step writing `position` reads: keys and values of position + 1 tokens, every layer."""
    return 2 * config["n_layer"] * (position + 1) * config["n_embd"] * bytes_per_value


def _best_median(values: list[float], best=min) -> dict[str, float] | None:
    """Best (the lowest, or `best=max` for a bandwidth) and median of a list; None when empty."""
    return {"best": float(best(values)), "median": float(np.median(values)), "n": len(values)} if values else None


def _paired_ratios(samples: dict[str, Any], floors: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    """Per position: best / median over rounds of (the round's ms / the floor at the bandwidth sampled before it)."""
    bandwidth = samples.get("bandwidth_gbs") or []
    paired = {}
    for p, runs in samples["positions"].items():
        if len(bandwidth) != len(runs):  # runs saved before the paired samples existed
            paired[p] = None
            continue
        floor_bytes = floors[p]["bytes"]
        paired[p] = _best_median([float(np.median(steps)) / (floor_bytes / (gbs * 1e9))
                                  for steps, gbs in zip(runs, bandwidth, strict=True)])
    return paired


def summarize_rounds(raw: dict[str, Any], model_config: dict[str, Any]) -> dict[str, Any]:
    """Per position: the floor's and each participant's best / median ms; batch B and the compute floor."""
    weights = decode_weight_bytes(model_config)
    bandwidth = raw["floor"]["bandwidth_gbs"]
    floors = {}
    for position in raw["positions"]:
        total = weights + kv_bytes(model_config, position)
        floors[str(position)] = {"bytes": total, **(_best_median([total / (gbs * 1e9) * 1e3 for gbs in bandwidth])
                                                   or {"best": None, "median": None, "n": 0})}
    compute = _best_median([s * 1e3 for s in raw["floor"]["gemm_s"]])
    by_library = {library: _best_median([s * 1e3 for s in seconds])
                  for library, seconds in (raw["floor"].get("gemm_by_library_s") or {}).items()}
    participants = {}
    for name, entry in raw["participants"].items():
        if entry["status"] != "ok":
            participants[name] = {"status": entry["status"], "reason": entry.get("reason"),
                                  "family": entry.get("family"), "label": label(name)}
            continue
        by_position = {p: _best_median([float(np.median(steps)) * 1e3 for steps in runs])
                       for p, runs in entry["samples"]["positions"].items()}
        batch = _best_median([float(np.median(steps)) * 1e3 for steps in entry["samples"]["batch"]])
        ratios = {p: (s["best"] / floors[p]["best"] if s and floors[p]["best"] else None)
                  for p, s in by_position.items()}
        paired = _paired_ratios(entry["samples"], floors)
        participants[name] = {"status": "ok", "family": entry.get("family"), "label": label(name),
                              "decode_ms": by_position,
                              "batch_ms": batch, "vs_floor": ratios, "vs_paired_floor": paired,
                              "batch_vs_compute_floor": batch["best"] / compute["best"] if batch and compute else None,
                              "info": entry.get("info")}
    return {"positions": [str(p) for p in raw["positions"]], "steps": raw["steps"], "rounds": raw["rounds"],
            "batch": raw["batch"], "batch_prompt": raw["batch_prompt"], "weight_bytes": weights,
            "bandwidth_gbs": _best_median(bandwidth, best=max), "floor_ms": floors, "compute_floor_ms": compute,
            "compute_floor_by_library_ms": by_library,
            "participants": participants}


def _target(name: str, backend: str | None, value: float | None, limit: float, comparison: str, unit: str,
            detail: str, position: str | None = None) -> dict[str, Any]:
    """One row in analysis' target format (report.targets_table renders it); position: a batch-1 decode target's."""
    met = None if value is None else {"<=": value <= limit, "<": value < limit}[comparison]
    row = {"name": name, "source": SOURCE, "backend": backend, "value": value, "limit": limit,
           "comparison": comparison, "unit": unit, "met": met, "detail": detail}
    return {**row, "position": int(position)} if position is not None else row


def _decode(summary: dict[str, Any], name: str | None, position: str) -> dict[str, float] | None:
    entry = summary["participants"].get(name or "", {})
    return (entry.get("decode_ms") or {}).get(position) if entry.get("status") == "ok" else None


def _best_of(summary: dict[str, Any], names: tuple[str, ...], position: str) -> str | None:
    """Among `names`, the one with the lowest best round at `position` (None when none was measured)."""
    present = [n for n in names if _decode(summary, n, position)]
    return min(present, key=lambda n: _decode(summary, n, position)["best"]) if present else None


def _missing(summary: dict[str, Any], position: str) -> str:
    if position not in summary["positions"]:
        return f"position {position} not in this run's sweep ({', '.join(summary['positions'])})"
    return "not measured"


def _paired_text(summary: dict[str, Any], backend: str, position: str) -> str:
    paired = ((summary["participants"][backend].get("vs_paired_floor") or {}).get(position))
    return f"; paired best {paired['best']:.2f}x (median {paired['median']:.2f}x)" if paired else ""


def profile_requests(targets: list[dict[str, Any]], profiled: tuple[str, ...]) -> list[tuple[str, int]]:
    """(backend, prompt length) of every batch-1 decode target ours were measured for, once each, in order."""
    wanted = [(t["backend"], t["position"]) for t in targets if t.get("position") and t["backend"] in profiled]
    return list(dict.fromkeys(wanted))


def evaluate_round_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets: ratios to the floors measured in the same rounds, and to llama.cpp at each precision."""
    targets = []
    for label, names, position, limit in (("fp32", FP32_RUNTIME, "32", 1.05), ("fp32", FP32_RUNTIME, "900", 1.10),
                                          ("int8", INT8_RUNTIME, "32", 0.30), ("int4", INT4_RUNTIME, "32", 0.18),
                                          ("int4", INT4_RUNTIME, "900", 0.30)):
        backend = _best_of(summary, names, position)
        floor = summary["floor_ms"].get(position, {})
        ours = _decode(summary, backend, position)
        value = ours["best"] / floor["best"] if ours and floor.get("best") else None
        # Best / best pairs two windows that may never have met (the bandwidth swings 2x here): median / median and
        # the ratio to the floor sampled right before each round (paired) beside it.
        detail = (f"best {ours['best']:.2f} ms (median {ours['median']:.2f}) vs fp32 weights + KV floor "
                  f"{floor['best']:.2f} ms (median {floor['median']:.2f}); median / median "
                  f"{ours['median'] / floor['median']:.2f}x" + _paired_text(summary, backend, position)
                  if value is not None else _missing(summary, position))
        targets.append(_target(f"{label} decode at prompt {position} / fp32 weights + KV floor", backend, value, limit,
                               "<=", "x floor", detail, position))
    fp32_batch = [n for n in FP32_RUNTIME if (summary["participants"].get(n) or {}).get("batch_vs_compute_floor")]
    by_ratio = sorted(fp32_batch, key=lambda n: summary["participants"][n]["batch_vs_compute_floor"])
    backend = by_ratio[0] if by_ratio else None
    compute = summary["compute_floor_ms"]
    value, detail = None, "not measured"
    if backend:
        step = summary["participants"][backend]["batch_ms"]
        value = summary["participants"][backend]["batch_vs_compute_floor"]
        detail = (f"best {step['best']:.2f} ms (median {step['median']:.2f}) vs GEMM floor {compute['best']:.2f} ms "
                  f"(median {compute['median']:.2f})")
    targets.append(_target(f"fp32 decode step at batch {summary['batch']} / compute floor", backend, value, 1.5,
                           "<=", "x floor", detail))
    for precision, names, peer in PRECISION_PAIRS:
        for position in (str(p) for p in (32, 900)):
            backend = _best_of(summary, names, position)
            ours, theirs = _decode(summary, backend, position), _decode(summary, peer, position)
            value = ours["best"] / theirs["best"] if ours and theirs else None
            if value is not None:
                detail = f"best {ours['best']:.2f} ms vs {theirs['best']:.2f} ms"
            elif ours and not theirs:
                peer_entry = summary["participants"].get(peer) or {}
                detail = (f"{peer} {peer_entry['status']}: {peer_entry.get('reason') or '-'}" if peer_entry
                          else f"{peer} not selected")
            else:
                detail = _missing(summary, position)
            targets.append(_target(f"{precision}: ours / llama.cpp at prompt {position}", backend, value, 1.0, "<",
                                   "x", detail, position))
    return targets
