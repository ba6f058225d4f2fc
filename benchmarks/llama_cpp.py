"""llama.cpp as a peer backend: found (never installed) in a build folder, GGUF conversion, llama-bench decode timing.

The benchmark finds a llama.cpp build in `--llama-cpp DIR` or $GPT2_EXPORT_LLAMA_CPP: a folder holding (up to
3 levels down) `llama-bench` and `llama-quantize`, and `convert_hf_to_gguf.py` beside its `gguf-py` (up to 4
levels below the folder or its parent: the source tree, a build folder inside it, or one beside it).
README "Performance (CPU)" says how to build one.
Conversion: `convert_hf_to_gguf.py --outtype f32` on the peer checkpoint copy (peer_checkpoint.prepare), then
`llama-quantize` to Q8_0 and Q4_0. Timing: `llama-bench -p 0 -n N -d P1,P2,.. -r 3 -o json`: per depth P it
fills P tokens of context untimed, then times N generated tokens; a sample is their total, so a sample's step
time is samples_ns / N (a mean over the N steps), and a round's value is the median of its 3 samples (ours:
the median of N steps).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_VAR = "GPT2_EXPORT_LLAMA_CPP"
# Peer backend name -> the GGUF type it runs (llama-quantize's name; F32 is the converter's own output).
PRECISIONS = {"llama-cpp-f32": "F32", "llama-cpp-q8_0": "Q8_0", "llama-cpp-q4_0": "Q4_0"}
# llama-bench repetitions per round: a round's value is their median, so one hiccup of a busy host (a sample
# 100x slower was seen here) does not decide a round, as the median of our N timed steps does for ours.
REPETITIONS = 3
TOOL_DEPTH, CONVERT_DEPTH = 3, 4  # how deep find() looks below the given folder (and its parent)
HOW_TO_GET = ("build llama.cpp as README 'Performance (CPU)' shows and pass --llama-cpp DIR (or set "
              f"${ENV_VAR})")


class LlamaCppError(RuntimeError):
    """A llama.cpp tool failed; the message quotes the command and the end of its output."""


@dataclass(frozen=True)
class LlamaCpp:
    """Where one llama.cpp build's tools are."""

    bench: Path
    quantize: Path
    convert: Path  # convert_hf_to_gguf.py (its gguf-py beside it)


def _first(root: Path, name: str, max_depth: int) -> Path | None:
    """The shallowest file called `name` at most max_depth folders below root (hidden folders skipped).

    Bounded, because the source tree is also looked for beside the given folder: an unbounded search from a
    folder's parent could walk a whole disk."""
    level = [root]
    for _ in range(max_depth + 1):
        hits = sorted(folder / name for folder in level if (folder / name).is_file())
        if hits:
            return hits[0]
        below = []
        for folder in level:
            try:
                below += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:  # unreadable folders are not where a build is
                continue
        level = below
    return None


def find(directory: str | Path | None = None) -> tuple[LlamaCpp | None, str | None]:
    """(the build, None), or (None, why there is none and how to get one); `directory` else $GPT2_EXPORT_LLAMA_CPP."""
    given = directory or os.environ.get(ENV_VAR)
    if not given:
        return None, f"no llama.cpp build given: {HOW_TO_GET}"
    root = Path(given).expanduser().resolve()
    if not root.is_dir():
        return None, f"llama.cpp folder {root} does not exist: {HOW_TO_GET}"
    # cmake puts the tools in <build>/bin; a source tree holds its build folder one level down.
    tools = {name: _first(root, name, TOOL_DEPTH) for name in ("llama-bench", "llama-quantize")}
    convert = None
    # The converter is in the source tree: the folder itself, or (a build folder beside or inside the source)
    # its parent, e.g. llama-cpp-python's sdist with vendor/llama.cpp/convert_hf_to_gguf.py.
    for base in (root, root.parent):
        convert = _first(base, "convert_hf_to_gguf.py", CONVERT_DEPTH)
        if convert is not None:
            break
    missing = [name for name, path in {**tools, "convert_hf_to_gguf.py": convert}.items() if path is None]
    if missing:
        return None, (f"llama.cpp folder {root} lacks {', '.join(missing)} (searched {TOOL_DEPTH} folders deep "
                      f"for the tools, {CONVERT_DEPTH} for the converter, also from its parent): build them with "
                      "`ninja -C build llama-bench llama-quantize` (README 'Performance (CPU)')")
    if not (convert.parent / "gguf-py").is_dir():
        return None, (f"{convert} has no gguf-py folder beside it: point --llama-cpp at a whole llama.cpp source "
                      "tree (or its build folder inside / beside it)")
    return LlamaCpp(tools["llama-bench"], tools["llama-quantize"], convert), None


def _run(command: list[str], what: str, timeout_s: float, env: dict[str, str] | None = None) -> str:
    """The command's stdout; LlamaCppError quoting its last lines when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        raise LlamaCppError(f"{what} ran past {timeout_s:.0f} s: {' '.join(command)}") from e
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise LlamaCppError(f"{what} failed (exit code {done.returncode}): {' '.join(command)}: {tail}")
    return done.stdout


def convert(tool: LlamaCpp, peer_checkpoint: Path, folder: Path, precision: str, timeout_s: float = 1800) -> Path:
    """The GGUF file of `precision` (F32, Q8_0, Q4_0) in folder, reused when present."""
    folder.mkdir(parents=True, exist_ok=True)
    f32 = folder / "model-f32.gguf"
    if not f32.is_file():
        partial = folder / "model-f32.gguf.part"
        env = {**os.environ, "USE_TF": "0"}
        try:
            _run([sys.executable, str(tool.convert), str(peer_checkpoint), "--outtype", "f32", "--outfile",
                  str(partial)], "convert_hf_to_gguf.py", timeout_s, env)
        except LlamaCppError as e:
            if "pre-tokenizer was not recognized" in str(e):  # it hashes the tokenizer against the ones it knows
                raise LlamaCppError(
                    f"llama.cpp's converter does not recognise the tokenizer of {peer_checkpoint} (it hashes how "
                    "a test text tokenizes and knows GPT-2's own 50257-token vocabulary, not a retrained or cut "
                    "one): benchmark llama.cpp on a checkpoint with vocab_size >= 50257 and GPT-2's vocab.json + "
                    "merges.txt, or none (they are then rebuilt from GPT-2's bundled ranks)") from e
            raise
        partial.rename(f32)
    if precision == "F32":
        return f32
    target = folder / f"model-{precision.lower()}.gguf"
    if not target.is_file():
        partial = target.with_suffix(".gguf.part")
        _run([str(tool.quantize), str(f32), str(partial), precision], "llama-quantize", timeout_s)
        partial.rename(target)
    return target


def bench_command(tool: LlamaCpp, gguf: Path, depths: list[int], steps: int, threads: int,
                  repetitions: int = REPETITIONS) -> list[str]:
    """llama-bench timing `steps` generated tokens after each depth, `repetitions` times, JSON out."""
    return [str(tool.bench), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(steps),
            "-d", ",".join(map(str, depths)), "-r", str(repetitions), "-o", "json"]


def parse_bench_json(text: str) -> list[dict[str, Any]]:
    """llama-bench -o json -> one {depth, n_gen, step_s (per sample), ...} per test; generation tests only."""
    start = text.find("[")
    if start < 0:
        raise LlamaCppError(f"llama-bench printed no JSON array: {text.strip()[:200]!r}")
    try:
        tests = json.loads(text[start:])
    except json.JSONDecodeError as e:
        raise LlamaCppError(f"llama-bench's JSON does not parse ({e}): {text[start:start + 200]!r}") from e
    rows = []
    for test in tests:
        if test.get("n_gen", 0) <= 0 or test.get("n_prompt", 0) != 0:
            continue
        samples = test.get("samples_ns") or [test["avg_ns"]]
        rows.append({"depth": int(test.get("n_depth", 0)), "n_gen": int(test["n_gen"]),
                     "step_s": [ns / 1e9 / test["n_gen"] for ns in samples], "model_type": test.get("model_type"),
                     "model_size": test.get("model_size"), "n_threads": test.get("n_threads"),
                     "type_k": test.get("type_k"), "build_commit": test.get("build_commit")})
    return rows


_TEST = re.compile(r"^tg(\d+)(?: @ d(\d+))?$")


def parse_bench_markdown(text: str) -> list[dict[str, Any]]:
    """llama-bench's default markdown table -> one {depth, n_gen, step_s: [1 / mean t/s], ...} per tg test."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        raise LlamaCppError(f"llama-bench printed no table: {text.strip()[:200]!r}")
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    if "test" not in header or "t/s" not in header:
        raise LlamaCppError(f"llama-bench's table has no 'test' and 't/s' columns: {lines[0]!r}")
    rows = []
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=False))
        match = _TEST.match(cells.get("test", ""))
        if not match:  # pp tests, pp+tg tests
            continue
        tokens_per_s = float(cells["t/s"].split("±")[0])
        rows.append({"depth": int(match.group(2) or 0), "n_gen": int(match.group(1)), "step_s": [1.0 / tokens_per_s],
                     "model_type": cells.get("model"), "n_threads": cells.get("threads")})
    return rows


def decode_round(tool: LlamaCpp, gguf: Path, depths: list[int], steps: int, threads: int,
                 timeout_s: float = 1800) -> dict[str, Any]:
    """One round: seconds per decode step at each depth (str keys), and what llama-bench said about the model."""
    rows = parse_bench_json(_run(bench_command(tool, gguf, depths, steps, threads), "llama-bench", timeout_s))
    found = {row["depth"]: row for row in rows}
    missing = [d for d in depths if d not in found]
    if missing:
        raise LlamaCppError(f"llama-bench reported no generation test at depth(s) {missing} for {gguf.name}")
    first = rows[0]
    return {"positions": {str(d): found[d]["step_s"] for d in depths},
            "info": {k: first.get(k) for k in ("model_type", "model_size", "n_threads", "type_k", "build_commit")}}
