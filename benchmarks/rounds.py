"""Interleaved rounds: the floor, our CPU backends and the peers (llama.cpp, CTranslate2), in turn, R times.

On a noisy shared host one measuring window decides nothing: every participant is measured once per round,
the rounds alternate between participants (each round starts one participant later, so none is always
first after the floor), and the report gives each one's best round with the median beside it.
One round of a decoder: at every sweep position P (from a short prompt to the end of n_positions) a prompt
of P tokens is filled untimed, then `steps` decode steps are timed (batch 1); its value is their median
(llama-bench: the median of 3 samples, each the mean of the steps). Then the same at batch B after a
`batch_prompt`-token prompt. One round of the floor: memory read bandwidth (sets the weights + KV floor at every
P) and the GEMMs of one batch-B step (the compute floor). Our backends and CTranslate2 stay loaded in one
process each (benchmarks.round_worker); llama.cpp runs `llama-bench` once per round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from gpt2_export.progress import Reporter, stage

from . import ctranslate2_peer, llama_cpp, peer_checkpoint
from .artifacts import Artifacts, fingerprint
from .config import PEERS, BenchConfig
from .measure import worker_env

# Our backends (and the transformers baseline) that take part, CPU only: the floor is the CPU's.
ROUND_BACKENDS = ("hf-sdpa", "ort-plain", "ort-fused", "ort-fused-shared", "ort-int8", "ort-int4", "ort-int8-shared",
                  "ort-int4-shared")
TARGET_POSITIONS = (32, 900)  # the prompt lengths


class RoundsError(ValueError):
    """The rounds cannot run as configured; the message names the value, the limit and the fix."""


def sweep_positions(n_positions: int, steps: int, given: tuple[int, ...] | None = None) -> list[int]:
    """The prompt lengths decode is timed after: given ones, else the targets' and eighths of the context, to
    its end; each leaves room for `steps` steps."""
    last = n_positions - steps
    if last < 1:
        raise RoundsError(f"--round-steps {steps} leaves no room in n_positions {n_positions}: use fewer steps")
    if given:
        bad = [p for p in given if not 1 <= p <= last]
        if bad:
            raise RoundsError(f"--positions {bad} out of range: each must be 1..{last} (n_positions {n_positions} "
                              f"minus {steps} timed steps)")
        return sorted(set(given))
    points = {p for p in TARGET_POSITIONS if p <= last} | {n_positions * k // 8 for k in range(1, 8)} | {last}
    return sorted(p for p in points if 1 <= p <= last)


class RoundWorker:
    """One benchmarks.round_worker process: started, loaded, then asked for one round at a time."""

    def __init__(self, name: str, spec: dict[str, Any], workdir: Path, threads: int, timeout_s: float):
        workdir.mkdir(parents=True, exist_ok=True)
        self.name, self.timeout_s = name, timeout_s
        spec_path, self.log_path = workdir / f"round-{name}.spec.json", workdir / f"round-{name}.log"
        spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
        self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
        self.child = subprocess.Popen([sys.executable, "-m", "benchmarks.round_worker", str(spec_path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                      env=worker_env(threads))

    def _answer(self) -> dict[str, Any]:
        killer = threading.Timer(self.timeout_s, self.child.kill)  # a hung round cannot outlive the limit
        killer.start()
        try:
            line = self.child.stdout.readline() if self.child.stdout else ""
        finally:
            killer.cancel()
        answer = json.loads(line) if line.strip() else {"error": f"exited (code {self.child.poll()})"}
        if "error" in answer:
            self.log.flush()
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-4:]
            raise RuntimeError(f"{self.name} round worker failed: {answer['error']}; log {self.log_path}: "
                               + " | ".join(tail))
        return answer

    def ready(self) -> None:
        """Wait for the participant to load."""
        self._answer()

    def round(self, request: dict[str, Any]) -> dict[str, Any]:
        """One round's answer."""
        stdin = self.child.stdin
        if stdin is None or self.child.poll() is not None:
            raise RuntimeError(f"{self.name} round worker is not running (exit code {self.child.poll()})")
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        return self._answer()

    def close(self) -> None:
        """End the process (stdin closed: it leaves its loop)."""
        try:
            if self.child.stdin:
                self.child.stdin.close()
            self.child.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.child.kill()
        self.log.close()


class LlamaBench:
    """A llama.cpp GGUF timed by llama-bench each round (no process of ours stays loaded)."""

    def __init__(self, tool: llama_cpp.LlamaCpp, gguf: Path, threads: int):
        self.tool, self.gguf, self.threads = tool, gguf, threads
        self.info: dict[str, Any] = {}

    def ready(self) -> None:
        """Nothing to load."""

    def round(self, request: dict[str, Any]) -> dict[str, Any]:
        """One llama-bench call over every depth (batch decode is not timed: llama-bench runs one sequence)."""
        result = llama_cpp.decode_round(self.tool, self.gguf, request["positions"], request["steps"], self.threads)
        self.info = result["info"]
        return {"positions": result["positions"]}

    def close(self) -> None:
        """Nothing to end."""


def _prepare_peers(config: BenchConfig, arts: Artifacts, report: Reporter) -> tuple[dict[str, Any], dict[str, dict]]:
    """Each selected peer's converted model: (participants by name, {name: {status, reason}} for the rest)."""
    selected = [name for name in PEERS if name in config.peers]
    problems: dict[str, dict] = {}
    tool, llama_reason = llama_cpp.find(config.llama_cpp)
    ct2_reason = ctranslate2_peer.missing()
    for name in selected:
        reason = llama_reason if name in llama_cpp.PRECISIONS else ct2_reason
        if reason:
            problems[name] = {"status": "skipped", "reason": reason}
    wanted = [name for name in selected if name not in problems]
    if not wanted:
        return {}, problems
    # Keyed by the checkpoint's fingerprint: another checkpoint in the same folder never reuses stale files.
    root = arts.root / "peers" / fingerprint(arts.checkpoint)[:12]
    peers: dict[str, Any] = {}
    try:
        with stage("peer checkpoint copy (config.json with n_ctx, vocab.json + merges.txt)", report):
            copy = peer_checkpoint.prepare(arts.checkpoint, root / "checkpoint")
    except (OSError, ValueError, KeyError) as e:
        return {}, {**problems, **{n: {"status": "failed", "reason": f"peer checkpoint copy: {e}"} for n in wanted}}
    for name in wanted:
        try:
            with stage(f"convert for {name}", report):
                if name in llama_cpp.PRECISIONS:
                    gguf = llama_cpp.convert(tool, copy, root / "gguf", llama_cpp.PRECISIONS[name])
                    peers[name] = {"kind": "llama.cpp", "gguf": gguf, "tool": tool}
                else:
                    quantization, compute_type = ctranslate2_peer.PRECISIONS[name]
                    folder = ctranslate2_peer.convert(copy, root / f"ct2-{quantization}", quantization)
                    peers[name] = {"kind": "ctranslate2", "folder": str(folder), "compute_type": compute_type}
        except (llama_cpp.LlamaCppError, ctranslate2_peer.CTranslate2Error, OSError) as e:
            problems[name] = {"status": "failed", "reason": str(e)}
            report(f"  {name} failed: {e}")
    return peers, problems


def _start(names: list[str], peers: dict[str, Any], arts: Artifacts, config: BenchConfig, workdir: Path,
           batch: int) -> dict[str, Any]:
    """Every participant's process (or llama-bench wrapper), the floor first; all load at once."""
    base = {"threads": config.threads, "seed": config.seed}
    started: dict[str, Any] = {"floor": RoundWorker(
        "floor", {**base, "kind": "floor", "model_config": arts.config, "batch": batch,
                  "bandwidth_mib": config.bandwidth_mib}, workdir, config.threads, config.worker_timeout_s)}
    for name in names:
        if name in peers and peers[name]["kind"] == "llama.cpp":
            started[name] = LlamaBench(peers[name]["tool"], peers[name]["gguf"], config.threads)
        elif name in peers:
            spec = {**base, "kind": "ctranslate2", "folder": peers[name]["folder"],
                    "compute_type": peers[name]["compute_type"]}
            started[name] = RoundWorker(name, spec, workdir, config.threads, config.worker_timeout_s)
        else:
            spec = {**base, "kind": "backend", "backend": name, "artifacts": arts.for_worker()}
            started[name] = RoundWorker(name, spec, workdir, config.threads, config.worker_timeout_s)
    return started


def _family(name: str) -> str:
    """Whose backend `name` is, for the report."""
    if name in llama_cpp.PRECISIONS:
        return "llama.cpp"
    if name in ctranslate2_peer.PRECISIONS:
        return "ctranslate2"
    return "transformers" if name.startswith("hf-") else "ours"


def run_rounds(config: BenchConfig, arts: Artifacts, ok_backends: list[str], workdir: Path,
               report: Reporter) -> dict[str, Any]:
    """The raw rounds (results.json's rounds.raw): floor samples, each participant's samples or reason."""
    steps = config.round_steps
    positions = sweep_positions(arts.config["n_positions"], steps, config.positions)
    batch, batch_prompt = config.decode_batch, config.decode_prompt
    if batch_prompt + steps > arts.config["n_positions"]:
        raise RoundsError(f"the batch-{batch} rounds need {batch_prompt} + {steps} positions but n_positions is "
                          f"{arts.config['n_positions']}: lower --round-steps")
    peers, problems = _prepare_peers(config, arts, report)
    ours = [name for name in ROUND_BACKENDS if name in ok_backends]
    names = ours + [name for name in PEERS if name in peers]
    raw: dict[str, Any] = {"rounds": config.rounds, "steps": steps, "positions": positions, "batch": batch,
                           "batch_prompt": batch_prompt, "threads": config.threads,
                           "floor": {"bandwidth_gbs": [], "gemm_s": []}, "order": [], "participants": {}}
    for name in names:
        kind = _family(name)
        raw["participants"][name] = {"status": "ok", "family": kind, "samples": {"positions": {}, "batch": []}}
    for name, problem in problems.items():
        raw["participants"][name] = {**problem, "family": _family(name)}
        report(f"  {name} {problem['status']}: {problem['reason']}")
    started = _start(names, peers, arts, config, workdir, batch)
    try:
        with stage(f"load the {len(started)} round participants", report):
            for name, participant in started.items():
                try:
                    participant.ready()
                except RuntimeError as e:
                    if name == "floor":
                        raise
                    raw["participants"][name] = {"status": "failed", "reason": str(e),
                                                 "family": raw["participants"][name]["family"]}
        live = [name for name in names if raw["participants"][name]["status"] == "ok"]
        for r in range(config.rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            raw["order"].append(["floor", *order])
            with stage(f"round {r + 1} of {config.rounds}: floor, {', '.join(order)}", report):
                floor = started["floor"].round({})
                raw["floor"]["bandwidth_gbs"].append(floor["bandwidth_gbs"])
                raw["floor"]["gemm_s"].append(floor["gemm_s"])
                for library, seconds in floor["gemm_by_library_s"].items():
                    raw["floor"].setdefault("gemm_by_library_s", {}).setdefault(library, []).append(seconds)
                for name in order:
                    entry = raw["participants"][name]
                    if entry["status"] != "ok":
                        continue
                    request = {"positions": positions, "steps": steps, "batch": 0 if isinstance(
                        started[name], LlamaBench) else batch, "batch_prompt": batch_prompt}
                    # The bandwidth swings 2x within minutes here: a floor sampled right before each participant
                    # pairs its round with the window it ran in (the round's own floor sample may not).
                    paired = started["floor"].round({"bandwidth_only": True})["bandwidth_gbs"]
                    try:
                        answer = started[name].round(request)
                    except (RuntimeError, llama_cpp.LlamaCppError) as e:
                        raw["participants"][name] = {"status": "failed", "reason": str(e), "family": entry["family"]}
                        report(f"  {name} failed: {e}")
                        continue
                    entry["samples"].setdefault("bandwidth_gbs", []).append(paired)
                    for position, seconds in answer["positions"].items():
                        entry["samples"]["positions"].setdefault(position, []).append(seconds)
                    if answer.get("batch"):
                        entry["samples"]["batch"].append(answer["batch"])
    finally:
        for participant in started.values():
            participant.close()
    for name, participant in started.items():
        if isinstance(participant, LlamaBench) and participant.info:
            raw["participants"][name]["info"] = participant.info
    return raw
