"""Done means: a plain ONNX Runtime loop over the exported LM graph reproduces transformers step by step.

This test uses only numpy, onnxruntime and transformers on the exported folder, no project code, so
any third-party loader following the same I/O contract gets the same numbers.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers

from gpt2_export.export import ExportOptions, export

ATOL = 1e-4


@pytest.fixture(scope="module", params=["fused", "plain"])
def lm_export(hf_checkpoints, tmp_path_factory, request):
    folder = tmp_path_factory.mktemp(f"lm-export-{request.param}")
    export(hf_checkpoints["lm"], folder, ExportOptions(variant=request.param))
    return folder


def _onnx_step(session, n_layer, ids, mask, positions, past):
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for i in range(n_layer):
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past[i]
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    presents = [(outputs[f"present.{i}.key"], outputs[f"present.{i}.value"]) for i in range(n_layer)]
    return outputs["logits"], presents


def test_plain_onnxruntime_loop_reproduces_transformers_with_left_padding(hf_checkpoints, lm_export):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_checkpoints["lm"]).eval()
    session = ort.InferenceSession(str(lm_export / "model.onnx"), providers=["CPUExecutionProvider"])
    n_layer, n_head, head_dim = hf.config.n_layer, hf.config.n_head, hf.config.n_embd // hf.config.n_head

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 316, size=(3, 7), dtype=np.int64)
    mask = np.ones((3, 7), dtype=np.int64)
    mask[1, :3] = 0
    mask[2, :6] = 0
    positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    past = [(np.zeros((3, n_head, 0, head_dim), np.float32),) * 2 for _ in range(n_layer)]

    hf_past = None
    step_ids, step_pos = ids, positions
    for step in range(5):
        logits, past = _onnx_step(session, n_layer, step_ids, mask, step_pos, past)
        with torch.no_grad():
            out = hf(torch.from_numpy(step_ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(step_pos), past_key_values=hf_past, use_cache=True)
        hf_past = out.past_key_values
        expected = out.logits.numpy()
        real = mask[:, -step_ids.shape[1]:].astype(bool)
        np.testing.assert_allclose(logits[real], expected[real], atol=ATOL, rtol=0, err_msg=f"step {step}")
        next_ids = expected[:, -1].argmax(-1)[:, None].astype(np.int64)
        assert np.array_equal(logits[:, -1].argmax(-1)[:, None], next_ids), f"greedy token differs at step {step}"
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
        step_ids, step_pos = next_ids, (mask.sum(-1, keepdims=True) - 1)
