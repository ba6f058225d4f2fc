"""Precision conversion of exported graphs.

fp16 uses onnxruntime's float16 converter with LayerNormalization and Softmax (and the ops feeding
the softmax) kept in fp32, so statistics and the attention mask never overflow; the KV cache and
weights are fp16.
"""

from __future__ import annotations

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

# Kept in fp32: normalisation statistics and the masked softmax.
FP32_OPS = ["Softmax"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights, activations and KV cache I/O; LayerNorm and softmax computed in fp32."""
    return convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS, disable_shape_infer=True)
