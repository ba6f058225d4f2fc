"""The I/O contract of each exported head, written once as data (Optimum's names and symbolic axes).

One graph serves prefill (past_sequence_length 0) and decode: no If-node merging, which TensorRT and
CUDA graphs cannot take. Double heads flatten (batch, num_choices) into the cache's batch axis.
"""

from __future__ import annotations

from runtime.manifest import IOContract, TensorSpec, past_names, present_names

BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST = "past_sequence_length"
TOTAL = "past_sequence_length + sequence_length"
CHOICES = "num_choices"
BATCH_CHOICES = "batch_size * num_choices"

MAIN_OUTPUT = {"base": "last_hidden_state", "lm": "logits", "seq-cls": "logits", "double-heads": "logits"}


__all__ = ["MAIN_OUTPUT", "io_contract", "past_names", "present_names"]  # the cache names live in runtime.manifest


def io_contract(head: str, n_layer: int, num_heads: list[int], head_dim: int, hidden: int, vocab: int,
                num_labels: int, float_type: str = "float32") -> IOContract:
    """The graph inputs and outputs for `head`, with dtypes and symbolic shapes."""
    if head == "double-heads":
        token_shape: tuple = (BATCH, CHOICES, SEQUENCE)
        mask_shape: tuple = (BATCH, CHOICES, TOTAL)
        cache_batch = BATCH_CHOICES
    else:
        token_shape, mask_shape, cache_batch = (BATCH, SEQUENCE), (BATCH, TOTAL), BATCH
    inputs = [
        TensorSpec("input_ids", "int64", token_shape),
        TensorSpec("attention_mask", "int64", mask_shape),
        TensorSpec("position_ids", "int64", token_shape),
    ]
    if head == "double-heads":
        inputs.append(TensorSpec("mc_token_ids", "int64", (BATCH, CHOICES)))
    for name in past_names(n_layer):
        layer = int(name.split(".")[1])
        inputs.append(TensorSpec(name, float_type, (cache_batch, num_heads[layer], PAST, head_dim)))

    if head == "base":
        outputs = [TensorSpec("last_hidden_state", float_type, (BATCH, SEQUENCE, hidden))]
    elif head == "lm":
        outputs = [TensorSpec("logits", float_type, (BATCH, SEQUENCE, vocab))]
    elif head == "seq-cls":
        outputs = [TensorSpec("logits", float_type, (BATCH, num_labels))]
    else:
        outputs = [
            TensorSpec("logits", float_type, (BATCH, CHOICES, SEQUENCE, vocab)),
            TensorSpec("mc_logits", float_type, (BATCH, CHOICES)),
        ]
    for name in present_names(n_layer):
        layer = int(name.split(".")[1])
        outputs.append(TensorSpec(name, float_type, (cache_batch, num_heads[layer], TOTAL, head_dim)))
    return IOContract(tuple(inputs), tuple(outputs))


def dynamic_axes(contract: IOContract) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes: every symbolic dimension of every tensor."""
    return {
        spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for spec in (*contract.inputs, *contract.outputs)
    }
