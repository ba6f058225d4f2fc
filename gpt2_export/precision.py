"""Precision conversion of exported graphs to fp16 (int8 / int4 weights: gpt2_export/quantize.py).

fp16 uses onnxruntime's float16 converter with Softmax kept in fp32, so the masked scores never
overflow; the mask's fill value is -1e4 (finite in fp16). LayerNormalization runs on fp16 tensors:
ONNX Runtime's CPU and CUDA kernels accumulate its mean and variance in fp32 (blocking it in the
converter leaves its fp16 scale/bias on an fp32 node, which ONNX Runtime rejects). The KV cache and
weights are fp16.
"""

from __future__ import annotations

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

# Kept in fp32: normalisation statistics and the masked softmax.
FP32_OPS = ["Softmax"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights, activations and KV cache I/O; softmax computed in fp32 between two Casts."""
    # Shape inference tells the converter the softmax's input type, without which it inserts no Cast.
    converted = convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS, disable_shape_infer=False)
    # The converter appends its Casts at the end of the node list; checkers and TensorRT want topological order.
    wrapper = OnnxModel(converted)
    wrapper.topological_sort()
    return wrapper.model

