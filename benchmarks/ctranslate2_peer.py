"""CTranslate2 as a peer backend: found by `import ctranslate2` (pip install -e ".[peers]"), never installed.

Conversion: `ct2-transformers-converter --model <peer checkpoint copy> --quantization float32|int8` (it reads
the tokenizer files, hence peer_checkpoint.prepare). Timing: `Generator.generate_batch`'s callback runs in
the decoding loop once per row per step (its iterator, generate_tokens, is fed by a background thread, so
when a consumer reads it says nothing about when a token was made); the first calls come after the prompt's
forward, so the interval between the first call of step k and of step k + 1 is one decode step for every
row (B, 1). Greedy (sampling_topk 1), exactly `steps + 1` tokens (min_length = max_length, so an early end
token never shortens a run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .measure import now_ns

# Peer backend name -> (converter --quantization, Generator compute_type).
PRECISIONS = {"ct2-float32": ("float32", "float32"), "ct2-int8": ("int8", "int8_float32")}
HOW_TO_GET = 'pip install -e ".[peers]" (or pip install ctranslate2)'


class CTranslate2Error(RuntimeError):
    """The CTranslate2 converter failed; the message quotes the end of its output."""


def missing() -> str | None:
    """Why CTranslate2 cannot run here, or None when it can (the module is looked up, not imported)."""
    if importlib.util.find_spec("ctranslate2") is None:
        return f"ctranslate2 is not installed ({HOW_TO_GET})"
    return None


def convert(peer_checkpoint: Path, folder: Path, quantization: str, timeout_s: float = 1800) -> Path:
    """The CTranslate2 model folder of `quantization` (float32, int8), reused when complete."""
    if (folder / "model.bin").is_file():
        return folder
    code = "import sys; from ctranslate2.converters.transformers import main; sys.exit(main())"
    command = [sys.executable, "-c", code, "--model", str(peer_checkpoint), "--output_dir", str(folder),
               "--quantization", quantization, "--force"]
    env = {**os.environ, "USE_TF": "0"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        raise CTranslate2Error(f"ct2-transformers-converter ran past {timeout_s:.0f} s") from e
    if done.returncode != 0 or not (folder / "model.bin").is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise CTranslate2Error(f"ct2-transformers-converter --quantization {quantization} failed "
                               f"(exit code {done.returncode}): {tail}")
    return folder


class CTranslate2Backend:
    """A CTranslate2 Generator on the CPU: decode_steps like benchmarks.backends.Backend's, and greedy tokens."""

    def __init__(self, folder: str | Path, compute_type: str, threads: int):
        import ctranslate2

        folder = Path(folder)
        self.generator = ctranslate2.Generator(str(folder), device="cpu", compute_type=compute_type,
                                               intra_threads=threads, inter_threads=1)
        vocabulary = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        self.tokens, self.vocab_size = vocabulary, len(vocabulary)

    def _prompts(self, ids: np.ndarray) -> list[list[str]]:
        """Token ids (B, T) -> the token strings CTranslate2 takes."""
        return [[self.tokens[i] for i in row] for row in ids.tolist()]

    def _generate(self, ids: np.ndarray, new_tokens: int, callback) -> None:
        self.generator.generate_batch(self._prompts(ids), max_length=new_tokens, min_length=new_tokens,
                                      sampling_topk=1, include_prompt_in_result=False, callback=callback)

    def decode_steps(self, ids: np.ndarray, mask: np.ndarray, steps: int) -> list[float]:
        """Seconds of each of `steps` decode steps after the prompt (B, T); mask must be all ones."""
        if not np.all(mask == 1):
            raise ValueError("CTranslate2's benchmark takes unpadded prompts: pass an all-ones mask")
        starts: dict[int, int] = {}

        def stamp(result) -> bool:
            starts.setdefault(result.step, now_ns())  # the first row's token of each step
            return False  # never stop early

        self._generate(ids, steps + 1, stamp)
        if len(starts) != steps + 1:
            raise RuntimeError(f"CTranslate2 generated {len(starts)} steps, expected {steps + 1}")
        times = [starts[k] for k in sorted(starts)]
        return [(b - a) / 1e9 for a, b in zip(times, times[1:], strict=False)]

    def greedy(self, ids: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy new token ids (B, new_tokens)."""
        out = np.zeros((ids.shape[0], new_tokens), dtype=np.int64)

        def record(result) -> bool:
            out[result.batch_id, result.step] = result.token_id
            return False

        self._generate(ids, new_tokens, record)
        return out
