"""Greedy agreement of the int8 / int4 exports with the fp32 export on a fixed prompt set.

Two rates per quantized variant, over prompts x new tokens:
- teacher-forced (the headline): both models read the fp32 greedy sequence in one forward; the share of
  positions where their argmax agrees. Every position counts once, so one early flip does not hide the rest;
- free-running: both generate greedily on their own; the share of positions with the same token, and the
  mean length of the common prefix (one flip changes everything after it).
The fp32 model's top-1 minus top-2 logit margin is recorded too: random weights (the offline default)
give near-uniform logits with tiny margins, so any quantization noise flips tokens that a trained model's
clear margins would keep. Shape legend: P prompts, T0 prompt length, N new tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import AGREEMENT_PROMPT_LENGTH
from .suite import prompt


def _greedy(model: Any, ids: np.ndarray, new: int) -> np.ndarray:
    """The full greedy sequences (P, T0 + N) of exactly `new` new tokens."""
    return model.generate(ids, np.ones_like(ids), max_new_tokens=new, min_new_tokens=new)


def _all_logits(folder: str, sequences: np.ndarray, threads: int) -> np.ndarray:
    """Logits (P, T, V) of every position of `sequences`: one forward, empty cache, on a plain session.

    Not the runtime's session: runtime.load fixes a growing-cache graph's `logits_to_keep` to 1 (decoding
    needs the last position only); here every position is scored, so 0 (keep all) is fed where the input exists.
    """
    import onnxruntime as ort

    from runtime.manifest import Manifest

    manifest = Manifest.load(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(str(Path(folder) / manifest.model_file), options,
                                   providers=["CPUExecutionProvider"])
    p, t = sequences.shape
    shape = manifest.shape
    feeds = {"input_ids": sequences, "attention_mask": np.ones_like(sequences),
             "position_ids": np.broadcast_to(np.arange(t, dtype=np.int64), (p, t)).copy()}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            feeds[spec.name] = np.zeros((p, shape.n_head, 0, shape.head_dim), np.float32)
        elif spec.name == "logits_to_keep":
            feeds[spec.name] = np.zeros(1, np.int64)  # 0: every position
    return session.run(["logits"], feeds)[0].astype(np.float32)


def measure_agreement(exports: dict[str, str], prompts: int, new: int, seed: int, threads: int,
                      report: Callable[[str], None]) -> dict[str, Any]:
    """Agreement of each quantized export ('int8', 'int4' keys) with exports['fused'] (fp32)."""
    import runtime

    reference = runtime.load(exports["fused"], threads=threads)
    vocab = reference.manifest.shape.vocab_size
    ids, _ = prompt(prompts, AGREEMENT_PROMPT_LENGTH, seed + 1, vocab)
    t0 = ids.shape[1]
    fp32_seq = _greedy(reference, ids, new)  # (P, T0 + N)
    # (P, N, V): position T0 - 1 + i predicts fp32_seq[:, T0 + i]
    fp32_logits = _all_logits(exports["fused"], fp32_seq[:, :-1], threads)[:, t0 - 1:]
    top2 = np.sort(fp32_logits, axis=-1)[..., -2:]  # (P, N, 2)
    result: dict[str, Any] = {
        "prompts": prompts, "prompt_length": t0, "new_tokens": new, "reference": "ort-fused (fp32)",
        "fp32_top1_margin_median": float(np.median(top2[..., 1] - top2[..., 0])),
        "fp32_distinct_tokens": int(np.unique(fp32_seq[:, t0:]).size),
        "variants": {},
    }
    fp32_argmax = fp32_logits.argmax(-1)  # (P, N)
    for variant in ("int8", "int4"):
        if variant not in exports:
            continue
        model = runtime.load(exports[variant], threads=threads)
        logits = _all_logits(exports[variant], fp32_seq[:, :-1], threads)[:, t0 - 1:]  # (P, N, V)
        teacher = (logits.argmax(-1) == fp32_argmax).mean()
        own = _greedy(model, ids, new)[:, t0:]  # (P, N)
        same = own == fp32_seq[:, t0:]
        prefix = np.where(same.all(-1), new, (~same).argmax(-1))  # (P,) tokens before the first difference
        result["variants"][f"ort-{variant}"] = {
            "teacher_forced": float(teacher),
            "free_running": float(same.mean()),
            "common_prefix_mean": float(prefix.mean()),
        }
        report(f"agreement {variant}: teacher-forced {teacher:.1%}, free-running {same.mean():.1%}")
        del model
    return result
