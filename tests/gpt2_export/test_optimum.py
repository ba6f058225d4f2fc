"""Optimum reads our export folders: `ORTModelForCausalLM.from_pretrained(EXPORT)` generates transformers' tokens.

Optimum (optimum-onnx, the `bench` extra) is a client nobody here wrote: it finds model.onnx and config.json in
the folder, binds inputs and the KV cache by their names (Optimum's own I/O names, which our contract keeps)
and decodes with transformers' GenerationMixin. The checkpoint has large random weights (initializer_range 0.4)
so greedy continuations depend on the whole prompt and a cache that Optimum misread would change the tokens.
Tolerance: greedy tokens exactly; first-step logits within 1e-4 of transformers' (fp32 exports).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_hf_checkpoint

ORTModelForCausalLM = pytest.importorskip(
    "optimum.onnxruntime", reason="optimum-onnx is not installed: pip install -e '.[bench]'"
).ORTModelForCausalLM

VARIANTS = {"fused": {}, "plain": {"variant": "plain"}, "shared": {"kv_cache": "shared"}}
PROMPTS = [[5, 17, 42, 99, 7, 250], [80, 81, 82], [12, 13, 14, 15, 16, 17, 18, 19], [3]]
NEW_TOKENS = 24
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def optimum_exports(tmp_path_factory) -> dict[str, Path]:
    """The checkpoint (key "checkpoint") and its fused, plain and --kv-cache shared exports."""
    from gpt2_export.export import ExportOptions, export

    root = tmp_path_factory.mktemp("optimum")
    checkpoint = write_hf_checkpoint(root / "checkpoint", "lm", seed=3, initializer_range=0.4)
    folders = {"checkpoint": checkpoint}
    for name, options in VARIANTS.items():
        folders[name] = export(checkpoint, root / name, ExportOptions(**options)).folder
    return folders


@pytest.fixture(scope="module")
def oracle(optimum_exports):
    """transformers' GPT2LMHeadModel on the same checkpoint."""
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(optimum_exports["checkpoint"]).eval()


def left_padded(prompts: list[list[int]], pad: int = 316) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) with every prompt right-aligned, as transformers pads decoder-only batches."""
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad, dtype=np.int64)  # (B, T)
    mask = np.zeros_like(ids)  # (B, T)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optimum_generates_transformers_greedy_tokens_one_prompt_at_a_time(optimum_exports, oracle, variant):
    import torch

    model = ORTModelForCausalLM.from_pretrained(optimum_exports[variant])
    assert model.use_cache, "Optimum did not find our KV-cache inputs, so it would recompute every step"
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])  # (1, T)
        expected = oracle.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=316)
        got = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=316)
        assert got.tolist() == expected.tolist(), f"{variant}: prompt {prompt}"
        # The 24 tokens must come from the prompt, not a fixed point: a cache Optimum misread would break this.
        assert len(set(expected[0, len(prompt):].tolist())) > 3


def check_batch(model, oracle, ids, mask, label: str) -> None:
    """First-step logits at real positions within LOGITS_ATOL of transformers', then the same greedy tokens."""
    import torch

    with torch.no_grad():
        expected_logits = oracle(input_ids=ids, attention_mask=mask).logits  # (B, T, vocab)
        got_logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, vocab)
    real = mask.bool()  # padded positions are not compared: neither side defines them
    diff = (got_logits[real] - expected_logits[real]).abs().max().item()
    assert diff <= LOGITS_ATOL, f"{label}: max |logits - transformers| = {diff:.2e} > {LOGITS_ATOL}"
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=316)
    expected = oracle.generate(ids, **kwargs)
    got = model.generate(ids, **kwargs)
    assert got.tolist() == expected.tolist(), label


@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_optimum_left_padded_batch_matches_transformers_tokens_and_logits(optimum_exports, oracle, variant):
    import torch

    model = ORTModelForCausalLM.from_pretrained(optimum_exports[variant])
    ids, mask = (torch.from_numpy(a) for a in left_padded(PROMPTS))
    check_batch(model, oracle, ids, mask, f"{variant}, left-padded batch")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optimum_equal_length_batch_matches_transformers_tokens_and_logits(optimum_exports, oracle, variant):
    """--kv-cache shared takes right-aligned ragged rows (GroupQueryAttention's seqlens_k), not transformers'
    left padding, so through Optimum its batches are of equal-length prompts (README, Optimum section)."""
    import torch

    ids = torch.tensor([[5, 17, 42, 99, 7, 250], [80, 81, 82, 3, 4, 5], [200, 100, 50, 25, 12, 13]])  # (B, T)
    check_batch(model=ORTModelForCausalLM.from_pretrained(optimum_exports[variant]), oracle=oracle, ids=ids,
                mask=torch.ones_like(ids), label=f"{variant}, equal-length batch")
