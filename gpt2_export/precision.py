"""Precision conversion of exported graphs: fp16, and int8 / int4 weights for CPUs.

fp16 uses onnxruntime's float16 converter with Softmax kept in fp32, so the masked scores never
overflow; the mask's fill value is -1e4 (finite in fp16). LayerNormalization runs on fp16 tensors:
ONNX Runtime's CPU and CUDA kernels accumulate its mean and variance in fp32 (blocking it in the
converter leaves its fp16 scale/bias on an fp32 node, which ONNX Runtime rejects). The KV cache and
weights are fp16.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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


def quantize(model: onnx.ModelProto, weights: str, workdir: Path) -> onnx.ModelProto:
    """MatMul weights to int8 (dynamic quantization, per-column scales) or int4 (MatMulNBits, blocks of 32)."""
    if weights == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # accuracy_level 4: int8 activations in the kernel (VNNI/AMX), the fast path on CPUs.
        quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        return quantizer.model.model
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        large = model.ByteSize() > 2**31 - 1
        onnx.save_model(model, str(source), save_as_external_data=large)
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
            per_channel=True, use_external_data_format=large,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return onnx.load(str(target), load_external_data=True)
