"""`run_benchmark(config)`: build or reuse the exports, run every backend in its own process, write the report.

Order: the checkpoint folder, the machine (versions, GPU, memory bandwidth), our export variants, Optimum's
export and the TensorRT engine, each backend's worker, the int8 / int4 agreement worker, then results.json,
results.md and the PNGs in the output folder. A backend that cannot run here is skipped with its
reason; one that fails is reported as failed with the end of its log; neither stops the run.
"""

from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2_export.progress import Reporter, silent, stage

from . import analysis, artifacts, machine, plots, report, round_analysis, rounds
from .backends import ENGINE_BACKENDS, LABELS, RUNTIME_BACKENDS, export_variant, unavailable_reason
from .config import BACKENDS, BASELINE, GPU_BASELINE, QUIET_SHARE, BenchConfig
from .measure import WorkerError, run_worker, wait_for_quiet


@dataclass
class BenchResult:
    """What a run wrote: the JSON data, the markdown text, and every file's path."""

    output: Path
    data: dict[str, Any]
    markdown: str
    files: dict[str, Path]


def _plan(config: BenchConfig) -> dict[str, Any]:
    """The measurement shapes a worker needs."""
    keys = ("prompt_lengths", "batch_sizes", "decode_batch", "decode_prompt", "new_tokens", "repeats", "warmup",
            "generate_repeats", "agreement_prompts", "agreement_tokens", "seed", "threads")
    return {**{key: getattr(config, key) for key in keys}, "quiet_share": QUIET_SHARE if config.retries else None}


def _check_positions(config: BenchConfig, model_config: dict[str, Any]) -> None:
    """Every measured sequence must fit the model's n_positions."""
    limit = model_config.get("n_positions", model_config.get("n_ctx"))
    if limit is not None and config.longest_sequence() > limit:
        raise ValueError(
            f"the benchmark needs {config.longest_sequence()} positions but the model has n_positions {limit}: "
            "lower --prompt-lengths or --new-tokens"
        )


def _variants(runnable: list[str]) -> list[str]:
    """Our export variants the selected backends need (the fp32 fused one too when int8 / int4 are compared)."""
    needed = {variant for name in runnable if (variant := export_variant(name))}
    if needed & {"int8", "int4", "int8-shared", "int4-shared"}:
        needed.add("fused")
    return sorted(needed)


def _export_optimum(arts: artifacts.Artifacts, config: BenchConfig, workdir: Path, report_: Reporter) -> None:
    """Optimum's export into the cache (in a worker), or the reason it is missing."""
    folder = arts.root / "optimum"
    spec = {"job": "optimum-export", "artifacts": arts.for_worker(), "folder": str(folder)}
    try:
        with stage("export with Optimum (ORTModelForCausalLM, export=True)", report_):
            run_worker(spec, workdir, "optimum-export", config.threads, config.worker_timeout_s, report_)
        arts.optimum = folder
    except WorkerError as e:
        arts.optimum_error = f"Optimum's export failed: {e}"


def _build_engine(arts: artifacts.Artifacts, config: BenchConfig, workdir: Path, report_: Reporter) -> None:
    """The TensorRT engine of the plain fp16 export into the cache (in a worker), or why there is none."""
    if artifacts.ENGINE_VARIANT in arts.export_errors:
        arts.engine_problem = {"status": "failed", "reason": arts.export_errors[artifacts.ENGINE_VARIANT]}
        return
    spec = {"job": "tensorrt-engine", "export": str(arts.exports[artifacts.ENGINE_VARIANT]),
            "folder": str(artifacts.engine_folder(arts.root)), "max_batch": config.largest_batch(),
            "max_sequence": config.longest_sequence()}
    try:
        with stage("TensorRT engine of the plain fp16 export", report_):
            result = run_worker(spec, workdir, "tensorrt-engine", config.threads, config.worker_timeout_s, report_)
    except WorkerError as e:
        arts.engine_problem = {"status": "failed", "reason": f"the TensorRT engine build failed: {e}"}
        return
    if result.get("unavailable"):
        arts.engine_problem = {"status": "skipped", "reason": result["unavailable"]}
    else:
        arts.engine = Path(result["folder"])


def _artifact_problem(name: str, arts: artifacts.Artifacts) -> dict[str, str] | None:
    """The status and reason of a backend whose export or engine could not be made; None when it has them."""
    variant = export_variant(name)
    if variant in arts.export_errors:
        return {"status": "failed", "reason": arts.export_errors[variant]}
    if name in ENGINE_BACKENDS and arts.engine_problem:
        return dict(arts.engine_problem)
    return None


def _run_backends(runnable: list[str], arts: artifacts.Artifacts, config: BenchConfig, workdir: Path,
                  report_: Reporter) -> dict[str, dict]:
    """Each backend in its own worker, after the machine is quiet; again when others took the CPUs meanwhile."""
    results = {}
    for name in runnable:
        problem = _artifact_problem(name, arts)
        if problem:
            results[name] = {"backend": name, **problem}
            report_(f"  {name} {problem['status']}: {problem['reason']}")
            continue
        spec = {"job": "backend", "backend": name, "artifacts": arts.for_worker(), "plan": _plan(config)}
        for attempt in range(1, config.retries + 2):
            wait_for_quiet(QUIET_SHARE, config.quiet_wait_s, report_)
            bandwidth = machine.read_bandwidth(config.bandwidth_mib, config.threads, passes=3)["gbs"]
            try:
                with stage(f"backend {name}", report_):
                    result = run_worker(spec, workdir, name, config.threads, config.worker_timeout_s, report_)
            except WorkerError as e:
                result = {"backend": name, "status": "failed", "reason": str(e)}
            result["attempts"] = attempt
            result["bandwidth_gbs_before"] = bandwidth  # a drift diagnostic only (see analyse)
            share = result.get("contention", {}).get("other_processes_cpu_share", 0.0)
            if result["status"] != "ok" or share <= QUIET_SHARE or attempt > config.retries:
                break
            report_(f"  other processes used {share:.0%} of the CPUs during {name}: measuring it again")
        results[name] = result
        if results[name]["status"] != "ok":
            report_(f"  {name} {results[name]['status']}: {results[name]['reason']}")
    return results


def _run_agreement(runnable: list[str], arts: artifacts.Artifacts, config: BenchConfig, workdir: Path,
                   report_: Reporter) -> dict[str, Any] | None:
    """int8 / int4 greedy agreement with the fp32 export, in a worker (None when neither was measured)."""
    if "fused" in arts.export_errors:
        return {"reason": f"no fp32 reference: {arts.export_errors['fused']}"}
    quantized = [name for name in ("ort-int8", "ort-int4") if name in runnable]
    if not quantized:
        return None
    exports = {"fused": str(arts.exports["fused"])}
    exports.update({RUNTIME_BACKENDS[n][0]: str(arts.exports[RUNTIME_BACKENDS[n][0]]) for n in quantized})
    spec = {"job": "agreement", "artifacts": {**arts.for_worker(), "exports": exports}, "plan": _plan(config)}
    try:
        with stage("int8 / int4 greedy agreement with fp32", report_):
            return run_worker(spec, workdir, "agreement", config.threads, config.worker_timeout_s, report_)
    except WorkerError as e:
        return {"reason": f"agreement failed: {e}"}


def _run_rounds(runnable: list[str], arts: artifacts.Artifacts, config: BenchConfig, workdir: Path,
                report_: Reporter) -> dict[str, Any] | None:
    """The interleaved rounds (floor, our CPU backends, peers), or {"error": why} when the floor could not run."""
    if not config.rounds:
        return None
    try:
        return rounds.run_rounds(config, arts, runnable, workdir, report_)
    except RuntimeError as e:  # the floor's worker failed: no ratio could be computed
        report_(f"  the interleaved rounds failed: {e}")
        return {"error": str(e)}


def _run_profiles(targets: list[dict[str, Any]], arts: artifacts.Artifacts, config: BenchConfig, workdir: Path,
                  report_: Reporter) -> list[dict[str, Any]]:
    """ONNX Runtime's profile of each batch-1 decode target's backend at its prompt length (benchmarks.step_profile)."""
    if not config.profile_steps:
        return []
    cpu_ours = tuple(name for name in rounds.ROUND_BACKENDS if name in RUNTIME_BACKENDS)
    profiles = []
    for backend, position in round_analysis.profile_requests(targets, cpu_ours):
        steps = min(config.profile_steps, arts.config["n_positions"] - position)
        spec = {"job": "step-profile", "export": str(arts.exports[RUNTIME_BACKENDS[backend][0]]), "position": position,
                "steps": steps, "threads": config.threads, "work": str(workdir / "profiles"), "seed": config.seed,
                "bandwidth_mib": config.bandwidth_mib}
        try:
            with stage(f"profile of {backend} at prompt {position}", report_):
                result = run_worker(spec, workdir, f"profile-{backend}-p{position}", config.threads,
                                    config.worker_timeout_s, report_)
        except WorkerError as e:
            result = {"error": str(e)}
        profiles.append({"backend": backend, **result, "position": position})
    return profiles


def _rounds_data(raw: dict[str, Any] | None, model_config: dict[str, Any]) -> dict[str, Any] | None:
    """results.json's rounds: raw samples and their summary (or the error)."""
    if raw is None or "error" in raw:
        return raw
    return {"raw": raw, "summary": round_analysis.summarize_rounds(raw, model_config)}


def model_info(arts: artifacts.Artifacts) -> dict[str, Any]:
    """What results.json records about the weights: where from, random or not, the whole config.json."""
    return {"source": arts.source, "random_weights": arts.random_weights, "checkpoint": str(arts.checkpoint),
            **{k: arts.config.get(k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")},
            "config": arts.config}


def analyse(config: dict[str, Any], machine_info: dict, model: dict[str, Any], results: dict[str, dict],
            agreement: dict[str, Any] | None, created: str | None = None,
            rounds_raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json's content: config, machine, model, raw results, summaries, ratios, floor, targets.

    The floor uses the bandwidth measured at the start, in a fresh array with 5 passes. The samples taken
    before each backend are kept as a drift diagnostic only: on this VM they swing from ~30 to ~60 GB/s
    between processes with no matching change in any backend's decode time, so they do not describe the
    memory a backend's weights live in. The interleaved rounds (rounds_raw) carry their own floors, sampled
    in every round, and issue 13's targets.
    """
    ok = {name: r for name, r in results.items() if r["status"] == "ok"}
    summaries = {name: analysis.summarize_backend(r) for name, r in ok.items()}
    machine_info["bandwidth"]["samples_gbs"] = [r["bandwidth_gbs_before"] for r in results.values()
                                                if "bandwidth_gbs_before" in r]
    floor = analysis.memory_floor(model.get("config") or model, machine_info["bandwidth"]["gbs"])
    rounds_data = _rounds_data(rounds_raw, model.get("config") or model)
    backends = {}
    for name, r in results.items():
        entry = {"status": r["status"], "label": LABELS[name], "reason": r.get("reason")}
        if r["status"] == "ok":
            entry["raw"] = {k: v for k, v in r.items() if k not in ("backend", "status")}
        backends[name] = entry
    return {
        "schema": report.SCHEMA,
        "created": created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "machine": machine_info,
        "model": model,
        "memory_floor": floor,
        "baseline": BASELINE,
        "backends": backends,
        "summaries": summaries,
        "gpu_baseline": GPU_BASELINE,
        "ratios": {"to_baseline": analysis.ratios_to(summaries, BASELINE, floor["floor_ms"]),
                   "to_optimum": analysis.ratios_to(summaries, analysis.OPTIMUM, None),
                   "to_gpu_baseline": analysis.gpu_ratios(summaries)},
        "token_match_vs_baseline": analysis.token_match(summaries, ok, BASELINE),
        "agreement": agreement,
        "targets": analysis.evaluate_targets(summaries, floor, agreement),
        "rounds": rounds_data,
        "round_targets": (round_analysis.evaluate_round_targets(rounds_data["summary"])
                          if rounds_data and "summary" in rounds_data else []),
    }


def rerender(output: str | Path) -> BenchResult:
    """Analyse a saved results.json again and rewrite its outputs (after a change to the analysis or report)."""
    output = Path(output)
    saved = json.loads((output / report.JSON_FILE).read_text(encoding="utf-8"))
    results = {name: {"backend": name, "status": b["status"], "reason": b.get("reason"), **(b.get("raw") or {})}
               for name, b in saved["backends"].items()}
    saved_rounds = saved.get("rounds") or None
    rounds_raw = saved_rounds.get("raw", saved_rounds) if saved_rounds else None
    data = analyse(saved["config"], saved["machine"], saved["model"], results, saved.get("agreement"),
                   saved["created"], rounds_raw)
    data["step_profiles"] = saved.get("step_profiles") or []  # measured, not derived: kept as saved
    files, text = write_outputs(data, output)
    return BenchResult(output, data, text, files)


def run_benchmark(config: BenchConfig, report_: Reporter = silent) -> BenchResult:
    """Measure every selected backend side by side and write results.json, results.md and three PNGs."""
    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    workdir = output / "logs"
    shutil.rmtree(workdir, ignore_errors=True)  # no stale results of backends this run does not select
    selected = [name for name in BACKENDS if name in config.backends]
    skipped = {name: reason for name in selected if (reason := unavailable_reason(name)) is not None}
    runnable = [name for name in selected if name not in skipped]
    arts = artifacts.resolve(config.model, output, report_)
    report_(f"model: {arts.source}")
    _check_positions(config, arts.config)
    if config.rounds:  # refuse impossible positions before anything is measured
        rounds.sweep_positions(arts.config["n_positions"], config.round_steps, config.positions)
    wait_for_quiet(QUIET_SHARE, config.quiet_wait_s, report_)
    with stage("machine: versions and memory read bandwidth", report_):
        machine_info = machine.describe(config.threads, config.bandwidth_mib, passes=3 if config.quick else 5)
        report_(f"  {machine_info['cpu']}: {machine_info['bandwidth']['gbs']:.1f} GB/s read")
    artifacts.build_exports(arts, _variants(runnable), report_)
    if "optimum-ort" in runnable:
        _export_optimum(arts, config, workdir, report_)
    if any(name in ENGINE_BACKENDS for name in runnable):
        _build_engine(arts, config, workdir, report_)
    results = _run_backends(runnable, arts, config, workdir, report_)
    for name, reason in skipped.items():
        results[name] = {"backend": name, "status": "skipped", "reason": reason}
        report_(f"  {name} skipped: {reason}")
    results = {name: results[name] for name in selected}
    agreement = _run_agreement([n for n in runnable if results[n]["status"] == "ok"], arts, config, workdir,
                               report_)
    ok = [n for n in runnable if results[n]["status"] == "ok"]
    rounds_raw = _run_rounds(ok, arts, config, workdir, report_)
    data = analyse(config.to_dict(), machine_info, model_info(arts), results, agreement, rounds_raw=rounds_raw)
    data["step_profiles"] = _run_profiles(data["round_targets"], arts, config, workdir, report_)
    files, text = write_outputs(data, output)
    return BenchResult(output, data, text, files)


def write_outputs(data: dict[str, Any], output: Path) -> tuple[dict[str, Path], str]:
    """The three PNGs, results.json and results.md from the analysed data (also re-renders a saved run)."""
    model = data["model"]
    model_label = "GPT-2 small shape, random weights" if model["random_weights"] else Path(model["checkpoint"]).name
    subtitle = f"{model_label}; {data['machine']['cpu']}, {data['config']['threads']} threads"
    files = {f"plot_{kind}": path for kind, path in
             plots.plot_all(data["summaries"], data["memory_floor"]["floor_ms"], subtitle, output).items()}
    if (data.get("rounds") or {}).get("summary"):
        files["plot_context"] = plots.plot_context(data["rounds"]["summary"], subtitle,
                                                   output / plots.PLOT_FILES["context"])
    data["files"] = {kind: path.name for kind, path in files.items()}
    files["json"] = report.write_json(data, output)
    files["markdown"], text = report.write_markdown(data, output)
    return files, text
