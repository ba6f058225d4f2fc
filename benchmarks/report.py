"""The run's outputs: results.json (everything raw + summaries) and results.md (tables, ratios, targets, GPU)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from . import step_profile
from .backends import is_gpu_backend
from .config import BASELINE, GPU_BASELINE, QUIET_SHARE

JSON_FILE, MARKDOWN_FILE = "results.json", "results.md"
SCHEMA = "gpt2-export-bench/1"


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits (a microsecond of a second, far below the noise), recursively."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def write_json(data: dict[str, Any], folder: Path) -> Path:
    """results.json: indented so diffs between runs read; floats to 6 significant digits."""
    path = folder / JSON_FILE
    text = json.dumps(_rounded(data), indent=1)
    # Lists of numbers on one line each: thousands of per-step samples would otherwise take a line apiece.
    text = re.sub(r"\[\s*([-+\deE.,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def results_table(data: dict[str, Any]) -> list[str]:
    """Rows = backends: prefill ms per prompt length, decode p50/p90/p99, tokens/s per batch, RSS, ratios."""
    cfg, summaries, ratios = data["config"], data["summaries"], data["ratios"]["to_baseline"]
    lengths, batches = [str(n) for n in cfg["prompt_lengths"]], [str(b) for b in cfg["batch_sizes"]]
    header = (["backend"] + [f"prefill {n}" for n in lengths] + ["decode p50", "p90", "p99"]
              + [f"tok/s B={b}" for b in batches] + ["peak RSS MB", f"decode vs {BASELINE}", "decode vs floor"])
    rows = []
    for name, s in summaries.items():
        r = ratios.get(name, {})
        rows.append([f"`{name}`"] + [_num(s["prefill_ms"].get(n, {}).get("median")) for n in lengths]
                    + [_num(s["decode_ms"][p], 2) for p in ("p50", "p90", "p99")]
                    + [_num(s["generate"].get(b, {}).get("tokens_per_s")) for b in batches]
                    + [_num(s["peak_rss_mb"], 0), _x(r.get("decode_p50")), _x(r.get("decode_p50_vs_floor"))])
    return _table(header, rows)


def batch_lines(data: dict[str, Any]) -> list[str]:
    """Prefill and per-token decode at batch 1 and batch B side by side; [] for runs that did not measure batch B."""
    measured = {name: s["batch_latency"] for name, s in data["summaries"].items() if s.get("batch_latency")}
    if not measured:
        return []
    first = next(iter(measured.values()))
    batch, length = first["batch"], str(first["prompt_length"])
    ratios = data["ratios"]["to_baseline"]
    header = ["backend", f"prefill {length} B=1", f"prefill {length} B={batch}", "decode p50 B=1",
              f"decode p50 B={batch}", "p90", "p99", f"decode tok/s B={batch}", f"decode B={batch} / {BASELINE}"]
    rows = []
    for name, b in measured.items():
        s = data["summaries"][name]
        rows.append([f"`{name}`", _num(s["prefill_ms"].get(length, {}).get("median")), _num(b["prefill_ms"]["median"]),
                     _num(s["decode_ms"]["p50"], 2)] + [_num(b["decode_ms"][p], 2) for p in ("p50", "p90", "p99")]
                    + [_num(b["decode_tokens_per_s"]), _x(ratios.get(name, {}).get("decode_p50_batch"))])
    return [f"## Prefill and per-token decode at batch 1 and batch {batch}", "",
            f"Median prefill ms of a {length}-token prompt; decode ms per step (every row gets one token; p50/p90/p99 "
            f"over every step of every repeat); decode tok/s = {batch} / p50 step time.", "",
            *_table(header, rows), ""]


def ratio_table(data: dict[str, Any]) -> list[str]:
    """Rows = backends: time ratios to transformers (SDPA) and Optimum, speed-up of tokens/s at each batch."""
    cfg, to_base, to_opt = data["config"], data["ratios"]["to_baseline"], data["ratios"]["to_optimum"]
    lengths, batches = [str(n) for n in cfg["prompt_lengths"]], [str(b) for b in cfg["batch_sizes"]]
    header = (["backend", f"decode / {BASELINE}", "decode / optimum"] + [f"prefill {n} / {BASELINE}" for n in lengths]
              + [f"prefill {n} / optimum" for n in lengths[-1:]] + [f"tok/s B={b} / {BASELINE}" for b in batches])
    rows = []
    for name in data["summaries"]:
        base, opt = to_base.get(name, {}), to_opt.get(name, {})
        rows.append([f"`{name}`", _x(base.get("decode_p50")), _x(opt.get("decode_p50"))]
                    + [_x(base.get("prefill", {}).get(n)) for n in lengths]
                    + [_x(opt.get("prefill", {}).get(n)) for n in lengths[-1:]]
                    + [_x(base.get("tokens_per_s", {}).get(b)) for b in batches])
    return _table(header, rows)


def gpu_ratio_lines(data: dict[str, Any]) -> list[str]:
    """The GPU backends' ratios to transformers SDPA on CUDA; [] when no GPU backend ran."""
    gpu_names = [name for name in data["summaries"] if is_gpu_backend(name)]
    if not gpu_names:
        return []
    heading = [f"## GPU ratios to `{GPU_BASELINE}` in the same run (time: lower is better; tokens/s: higher is "
               "better)", ""]
    ratios = data["ratios"].get("to_gpu_baseline") or {}
    if not ratios:
        return heading + [f"- `{GPU_BASELINE}` did not run, so the GPU backends have no GPU baseline", ""]
    cfg = data["config"]
    lengths, batches = [str(n) for n in cfg["prompt_lengths"]], [str(b) for b in cfg["batch_sizes"]]
    header = (["backend", f"decode / {GPU_BASELINE}"] + [f"prefill {n} / {GPU_BASELINE}" for n in lengths]
              + [f"tok/s B={b} / {GPU_BASELINE}" for b in batches])
    rows = [[f"`{name}`", _x(r.get("decode_p50"))] + [_x(r["prefill"].get(n)) for n in lengths]
            + [_x(r["tokens_per_s"].get(b)) for b in batches] for name, r in ratios.items()]
    return heading + _table(header, rows) + [""]


def targets_table(targets: list[dict[str, Any]]) -> list[str]:
    """Each target: value, limit, met / not met, and the numbers behind it."""
    rows = []
    for t in targets:
        status = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        digits = 1 if t["unit"] == "tokens/s" else 3
        value = "-" if t["value"] is None else (f"{t['value']:.1%}" if t["unit"] == "share" else
                                                f"{t['value']:,.{digits}f} {t['unit']}")
        limit = f"{t['limit']:.0%}" if t["unit"] == "share" else f"{t['limit']:g} {t['unit']}"
        rows.append([t["name"], t["source"], f"`{t['backend']}`" if t["backend"] else "-", value,
                     f"{t['comparison']} {limit}", status, t["detail"]])
    return _table(["target", "source", "backend", "value", "limit", "status", "numbers"], rows)


def _best(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """'best (median)' of a round summary; '-' when not measured. Below 0.1, 3 significant digits (tiny models)."""
    if not entry or entry.get("best") is None:
        return "-"

    def number(value: float) -> str:
        return f"{value:.3g}" if abs(value) < 0.1 else f"{value:,.{digits}f}"

    return f"{number(entry['best'])} ({number(entry['median'])})"


def _libraries(summary: dict[str, Any]) -> str:
    """' (best: numpy 4.10 ms, onnxruntime 3.11 ms)', or '' for results.json written before both were timed."""
    by_library = summary.get("compute_floor_by_library_ms") or {}
    parts = [f"{library} {_best(stats)} ms" for library, stats in by_library.items() if stats]
    return f" (best (median): {', '.join(parts)})" if parts else ""


def rounds_lines(data: dict[str, Any]) -> list[str]:
    """The interleaved rounds: per participant, best (median) ms per step at each prompt length, batch B, ratios."""
    rounds = data.get("rounds")
    if not rounds:
        return []
    heading = ["## Decode over the context: floor, ours and the peers in interleaved rounds", ""]
    if "error" in rounds:
        return heading + [f"- The rounds failed: {rounds['error']}", ""]
    s = rounds["summary"]
    positions, batch = s["positions"], s["batch"]
    bw = s["bandwidth_gbs"] or {}
    lines = heading + [
        f"Best of {s['rounds']} rounds, the median round in parentheses (ms per decode step). Each round measures "
        f"the floor, then every participant in turn (each round starts one later). At each prompt length P: P "
        f"tokens filled untimed, then {s['steps']} decode steps timed at batch 1 (a round's value: their median; "
        f"llama-bench: the median of 3 samples, each their mean); batch {batch}: after a {s['batch_prompt']}-token "
        f"prompt. Floor at P: fp32 "
        f"weights ({s['weight_bytes'] / 1e6:.1f} MB) + the KV cache of P + 1 positions (fp32), over the round's "
        f"read bandwidth ({_best(bw, 1)} GB/s, best = highest shown first). Compute floor: the GEMMs of one "
        f"batch-{batch} step (fp32 weights of the model's shapes), the faster of numpy and one ONNX Runtime graph "
        f"of those MatMuls, each a round's fastest of 5{_libraries(s)}. Ratios: best / best.", ""]
    if s["rounds"] < 5:
        lines += [f"- WARNING: {s['rounds']} round(s), fewer than the 5 a ranking needs on a noisy host", ""]
    targets = [p for p in ("32", "900") if p in positions]
    header = (["participant", "family"] + [f"P={p}" for p in positions] + [f"B={batch} step"]
              + [f"/ floor P={p}" for p in targets] + [f"B={batch} / compute floor"])
    rows = [["**floor** (fp32 weights + KV)", "-"] + [_best(s["floor_ms"][p]) for p in positions]
            + [_best(s["compute_floor_ms"])] + ["1.00x" for _ in targets] + ["1.00x"]]
    others = []
    for name, e in s["participants"].items():
        if e["status"] != "ok":
            others.append(f"- `{name}` ({e['status']}): {e['reason']}")
            continue
        rows.append([f"`{name}`", e["family"] or "-"] + [_best(e["decode_ms"].get(p)) for p in positions]
                    + [_best(e["batch_ms"])] + [_x(e["vs_floor"].get(p)) for p in targets]
                    + [_x(e["batch_vs_compute_floor"])])
    lines += _table(header, rows) + [""]
    infos = [f"- `{name}`: {e['label']}" + (f"; llama-bench says {e['info']}" if e.get("info") else "")
             for name, e in s["participants"].items() if e["status"] == "ok"]
    lines += others + infos + ([""] if others or infos else [])
    return lines + ["## Targets of issue 13 (from the rounds)", "", *targets_table(data.get("round_targets") or []), ""]


def profile_lines(data: dict[str, Any]) -> list[str]:
    """Where each batch-1 decode target's step goes: ONNX Runtime's per-node profile, per op type, beside its bytes."""
    profiles = data.get("step_profiles") or []
    if not profiles:
        return []
    lines = ["## Where the decode step's time goes (ONNX Runtime's profile, after the rounds)", "",
             "For each batch-1 decode target above, its backend at its prompt length (benchmarks.step_profile): "
             "the step's wall time split into the kernels, ONNX Runtime between them and the Python around "
             "`session.run`, and each op type's kernel time beside the bytes it must read (weights; the KV cache "
             "for attention) and the read floor of those bytes at the bandwidth sampled around the steps. Profiled "
             "steps carry the profiler's own cost: the rounds' times rank, these explain.", ""]
    for profile in profiles:
        lines += step_profile.lines(profile, f"`{profile['backend']}` at prompt {profile['position']}")
    return lines


def _samples(bandwidth: dict[str, Any]) -> str:
    """The spread of the bandwidth measured before each backend, when it was."""
    samples = bandwidth.get("samples_gbs") or []
    if not samples:
        return ""
    return (f"; re-measured before each backend: {min(samples):.1f} to {max(samples):.1f} GB/s (median "
            f"{statistics.median(samples):.1f}; a drift diagnostic, not used for the floor)")


def gpu_line(info: dict[str, Any] | None) -> str:
    """The GPU in one line: devices, driver, CUDA, and what torch / ONNX Runtime / TensorRT were built for."""
    if info is None:
        return "not recorded"
    torch = info.get("torch") or {}
    torch_text = (f"torch {torch['version']} (CUDA {torch['cuda'] or 'none'}, "
                  f"{'sees the GPU' if torch['available'] else 'no CUDA device'})" if torch.get("installed")
                  else "torch not installed")
    ort = info["onnxruntime"]
    ort_text = f"{ort['package'] or 'onnxruntime'} {ort['version']} (providers: {', '.join(ort['providers'])})"
    tools = f"{torch_text}; {ort_text}; TensorRT {info['tensorrt'] or 'not installed'}"
    if not info["present"]:
        return f"no GPU: {info.get('reason')}; {tools}"
    devices = "; ".join(f"{d['name']} (compute capability {d['compute_capability'] or '?'}"
                        + (f", {d['memory_mib']:,} MiB)" if d["memory_mib"] else ")") for d in info["devices"])
    return (f"{devices}; driver {info['driver_version'] or '?'}, CUDA {info['cuda_driver_version'] or '?'} "
            f"(driver); {tools}")


def _header(data: dict[str, Any]) -> list[str]:
    machine, model, cfg, floor = data["machine"], data["model"], data["config"], data["memory_floor"]
    bw, v = machine["bandwidth"], machine["versions"]
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    lines = [
        "# gpt2-export benchmark",
        "",
        f"- Date: {data['created']}",
        f"- Model: {model['source']}; {model['n_layer']} layers, n_embd {model['n_embd']}, vocab "
        f"{model['vocab_size']}",
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['memory_gb']} GB RAM, "
        f"{' '.join(machine['cpu_flags'])}; {cfg['threads']} threads per backend",
        f"- GPU: {gpu_line(machine.get('gpu'))}",
        f"- Memory read bandwidth: {bw['gbs']:.1f} GB/s at the start ({bw['method']}; 1 thread: "
        f"{bw['sum_1_thread_gbs']:.1f} GB/s)" + _samples(bw),
        f"- Memory floor (fp32 decode, batch 1): {floor['weight_mb']:.1f} MB of weights / "
        f"{floor['bandwidth_gbs']:.1f} GB/s = **{floor['floor_ms']:.2f} ms per token**",
        f"- Versions: {versions}",
        f"- Shapes: prefill at {', '.join(map(str, cfg['prompt_lengths']))} tokens (batch 1); decode "
        f"{cfg['new_tokens']} steps after a {cfg['decode_prompt']}-token prompt (batch 1); generate() "
        f"{cfg['new_tokens']} new tokens at batch {', '.join(map(str, cfg['batch_sizes']))}; "
        f"{cfg['repeats']} repeats after {cfg['warmup']} warm-up (generate: {cfg['generate_repeats']} after 1)"
        + (f"; prefill and decode also at batch {cfg['decode_batch']}" if cfg.get("decode_batch") else ""),
    ]
    noisy = {name: b["raw"]["contention"]["other_processes_cpu_share"] for name, b in data["backends"].items()
             if (b.get("raw") or {}).get("contention", {}).get("other_processes_cpu_share", 0.0) > QUIET_SHARE}
    if noisy:
        lines.append("- WARNING: other processes used the CPUs while these backends ran, so their numbers are "
                     "pessimistic: " + ", ".join(f"{n} {share:.0%}" for n, share in noisy.items()))
    if model["random_weights"]:
        lines.append("- Weights are RANDOM (the offline default): speed is representative, generated text and "
                     "int8/int4 agreement are not (near-uniform logits flip on tiny quantization noise)")
    if cfg["quick"]:
        lines.append("- QUICK MODE: tiny shapes, one repeat; a smoke test, not a measurement")
    return lines


def _agreement(agreement: dict[str, Any] | None) -> list[str]:
    if not agreement or "variants" not in agreement:
        reason = (agreement or {}).get("reason", "not run (select ort-int8 or ort-int4)")
        return ["## int8 / int4 greedy agreement with fp32", "", f"- {reason}"]
    lines = ["## int8 / int4 greedy agreement with fp32", "",
             f"{agreement['prompts']} prompts x {agreement['new_tokens']} new tokens (prompt "
             f"{agreement['prompt_length']} tokens); reference {agreement['reference']}; fp32 top-1 margin median "
             f"{agreement['fp32_top1_margin_median']:.3f} logits, {agreement['fp32_distinct_tokens']} distinct "
             "tokens generated.", ""]
    rows = [[f"`{name}`", f"{v['teacher_forced']:.1%}", f"{v['free_running']:.1%}", f"{v['common_prefix_mean']:.1f}"]
            for name, v in agreement["variants"].items()]
    return lines + _table(["backend", "teacher-forced", "free-running", "common prefix (tokens)"], rows)


def markdown(data: dict[str, Any]) -> str:
    """results.md: header, results table, ratios, targets, agreement, skipped backends, backend labels."""
    lines = _header(data) + [
        "", "## Results", "",
        "Median prefill ms per prompt length; decode ms per token (p50/p90/p99 over every step of every repeat); "
        "end-to-end generate() tokens/s per batch size; peak RSS of the backend's own process.", "",
        *results_table(data), "",
        *batch_lines(data),
        "## Ratios in the same run (time: lower is better; tokens/s: higher is better)", "",
        *ratio_table(data), "",
        *gpu_ratio_lines(data),
        "## Targets", "", *targets_table(data["targets"]), "",
        *rounds_lines(data),
        *profile_lines(data),
        *_agreement(data.get("agreement")), "",
    ]
    others = {n: b for n, b in data["backends"].items() if b["status"] != "ok"}
    if others:
        lines += ["## Skipped or failed backends", ""]
        lines += [f"- `{n}` ({b['status']}): {b['reason']}" for n, b in others.items()] + [""]
    matches = data.get("token_match_vs_baseline") or {}
    lines += ["## Backends", ""]
    for name, b in data["backends"].items():
        match = f"; batch-1 greedy tokens equal to {BASELINE}'s: {matches[name]:.0%}" if name in matches else ""
        busy = (b.get("raw") or {}).get("contention") or {}
        other = (f"; other processes used {busy['other_processes_cpu_share']:.0%} of the CPUs while it was measured"
                 if busy else "")
        raw = b.get("raw") or {}
        runs = ("decode", "prefill_batch", "decode_batch")  # the batch-B ones are absent from older results
        redone = sum(raw.get(key, {}).get("discarded_noisy_runs", 0) for key in runs) + sum(
            g.get("discarded_noisy_calls", 0) for g in raw.get("generate", {}).values())
        again = f"; {redone} noisy prefill / decode run(s) / generate() call(s) measured again" if redone else ""
        lines.append(f"- `{name}`: {b['label']}{match}{other}{again}")
    return "\n".join(lines) + "\n"


def write_markdown(data: dict[str, Any], folder: Path) -> tuple[Path, str]:
    """results.md and its text."""
    text = markdown(data)
    path = folder / MARKDOWN_FILE
    path.write_text(text, encoding="utf-8")
    return path, text
