"""Helpers to build our model and transformers' (the oracle) with the same random weights."""

from __future__ import annotations

import os

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch  # noqa: E402
import transformers  # noqa: E402

import models  # noqa: E402

transformers.logging.set_verbosity_error()

TINY = dict(
    vocab_size=99,
    n_positions=48,
    n_embd=32,
    n_layer=3,
    n_head=4,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    summary_first_dropout=0.0,
)

HEADS = [
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2DoubleHeadsModel",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2ForQuestionAnswering",
]


def pair(head: str = "GPT2LMHeadModel", attn: str = "eager", oracle_attn: str | None = None, **overrides):
    """(ours, transformers') in eval mode with identical weights; the oracle may use another kernel."""
    fields = {**TINY, **overrides}
    torch.manual_seed(0)
    theirs = getattr(transformers, head)(
        transformers.GPT2Config(**fields, attn_implementation=oracle_attn or attn)
    ).eval()
    ours = getattr(models, head)(models.GPT2Config(**fields, attn_implementation=attn)).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("lm_head.weight") for k in missing), (missing, unexpected)
    ours.tie_weights()
    return ours, theirs


def left_padded(batch: int, length: int, vocab: int = 99, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and a mask where row i has i * 2 pad positions on the left (row 0 unpadded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        mask[i, : min(2 * i, length - 1)] = 0
    return ids, mask


def legacy(past) -> tuple:
    """transformers' Cache object or our tuple -> tuple of per-layer tuples."""
    if hasattr(past, "to_legacy_cache"):
        past = past.to_legacy_cache()
    return tuple(tuple(layer) for layer in past)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor | None = None, atol: float = 1e-5):
    """Max-abs comparison, optionally only where mask (broadcast over trailing axes) is True."""
    if mask is not None:
        actual, expected = actual[mask.bool()], expected[mask.bool()]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
