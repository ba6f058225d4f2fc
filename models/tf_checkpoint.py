"""Read OpenAI's original TensorFlow GPT-2 checkpoints (`hparams.json` + `model.ckpt.*`) as GPT2Model tensors.

References: transformers 4.57 `modeling_gpt2.load_tf_weights_in_gpt2` (the name mapping:
`model/h0/attn/c_attn/w` -> `h.0.attn.c_attn.weight`, `g`/`w` -> weight, `b` -> bias) and openai/gpt-2
`src/model.py` (the variables and their shapes: Conv1D kernels stored as (1, nx, nf)). TensorFlow is imported
only here and only when such a checkpoint is read, so it stays an optional extra
(`pip install "gpt2-export[tensorflow]"`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_errors import CheckpointReadError
from .hub import CheckpointNotFoundError

# A scope such as `h0` names element 0 of the list `h`.
_INDEXED_SCOPE = re.compile(r"([A-Za-z]+)(\d+)")
# Optimizer slots and step counters a training run may have saved beside the weights.
_TRAINING_STATE = re.compile(r"(^|/)(global_step|beta[12]_power|Adam(_\d+)?|Momentum)$")


@dataclass
class TFWeights:
    """A TF checkpoint read into torch: tensors under GPT2Model names, and where each came from."""

    tensors: dict[str, torch.Tensor]
    origin: dict[str, str]  # GPT2Model name -> TF variable name, for error messages
    ignored: list[str]  # training state (optimizer slots, step counters) left out


def find_tf_checkpoint(folder: Path) -> Path | None:
    """The checkpoint prefix in folder (e.g. folder/model.ckpt), or None when it holds no TF checkpoint."""
    state = folder / "checkpoint"
    if state.is_file():
        # TF's own bookkeeping file, `model_checkpoint_path: "model.ckpt"`, names the newest prefix.
        text = state.read_text(encoding="utf-8")
        match = re.search(r'^model_checkpoint_path:\s*"(.+)"', text, re.MULTILINE)
        if match:
            prefix = Path(match.group(1))
            prefix = prefix if prefix.is_absolute() else folder / prefix
            if not Path(f"{prefix}.index").is_file():
                raise CheckpointNotFoundError(
                    f"{state} names the TensorFlow checkpoint {prefix}, but {prefix}.index is missing: "
                    "copy the checkpoint's .index and .data-* files next to it"
                )
            return prefix
    if (folder / "model.ckpt.index").is_file():
        return folder / "model.ckpt"
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise CheckpointNotFoundError(
            f"{folder} holds several TensorFlow checkpoints ({names}): keep one, or add a `checkpoint` file "
            'naming it (model_checkpoint_path: "<prefix>")'
        )
    return indexes[0].with_suffix("") if indexes else None


def tf_name_to_torch(name: str) -> str:
    """`model/h0/attn/c_attn/w` -> `h.0.attn.c_attn.weight`, as transformers' load_tf_weights_in_gpt2 maps."""
    parts = []
    for scope in name.removeprefix("model/").split("/"):
        indexed = _INDEXED_SCOPE.fullmatch(scope)
        if scope in ("w", "g"):
            parts.append("weight")
        elif scope == "b":
            parts.append("bias")
        elif scope in ("wte", "wpe"):
            parts.extend([scope, "weight"])
        elif indexed:
            parts.extend(indexed.groups())
        else:
            parts.append(scope)
    return ".".join(parts)


def _import_tensorflow(prefix: Path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF logs pages of CPU-feature notes otherwise
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            f"reading the TensorFlow checkpoint {prefix} needs TensorFlow, which is not installed: "
            'pip install "gpt2-export[tensorflow]"'
        ) from e
    return tf


def read_tf_checkpoint(prefix: Path) -> TFWeights:
    """Every model variable at prefix, renamed, with Conv1D kernels (1, nx, nf) squeezed to (nx, nf)."""
    tf = _import_tensorflow(prefix)
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    try:
        for name, _ in tf.train.list_variables(str(prefix)):
            if not name.startswith("model/") or _TRAINING_STATE.search(name):
                ignored.append(name)
                continue
            array = tf.train.load_variable(str(prefix), name)
            if array.ndim == 3 and array.shape[0] == 1:
                array = array[0]  # openai/gpt-2 stores its 1x1 convolutions with a leading width-1 axis
            key = tf_name_to_torch(name)
            tensors[key] = torch.from_numpy(array.copy())
            origin[key] = name
    except (tf.errors.OpError, ValueError) as e:
        raise CheckpointReadError(
            f"cannot read the TensorFlow checkpoint {prefix} ({type(e).__name__}: {e}): "
            "its .index and .data-* files must both be present and intact; download them again"
        ) from e
    return TFWeights(tensors, origin, ignored)
