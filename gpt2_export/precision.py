"""Precision conversion of exported graphs: fp16, and int8 / int4 weights (MatMulNBits) for CPUs.

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
QUANTIZED_BITS = {"int8": 8, "int4": 4}


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights, activations and KV cache I/O; softmax computed in fp32 between two Casts."""
    # Shape inference tells the converter the softmax's input type, without which it inserts no Cast.
    converted = convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS, disable_shape_infer=False)
    # The converter appends its Casts at the end of the node list; checkers and TensorRT want topological order.
    wrapper = OnnxModel(converted)
    wrapper.topological_sort()
    return wrapper.model


def quantize(model: onnx.ModelProto, weights: str, block_size: int) -> onnx.ModelProto:
    """Every MatMul with a constant weight (blocks and LM head) to MatMulNBits: int8 or int4, symmetric blocks.

    One kernel family for both widths: ONNX Runtime's MatMulNBits reads the packed weights once per step and,
    at accuracy level 4, multiplies in int8 (VNNI / AMX). For int8 it beats quantize_dynamic's
    DynamicQuantizeMatMul (per-channel) on decode time and on logit error, measured on GPT-2 small.
    """
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    bits = QUANTIZED_BITS[weights]
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                     algo_config=config)
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level, quiet.level = quiet.level, logging.WARNING  # it logs every node it visits at INFO
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    return quantizer.model.model
