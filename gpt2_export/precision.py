"""Precision conversion of exported graphs: fp16, and int8 / int4 weights for CPUs.

fp16 uses onnxruntime's float16 converter with LayerNormalization and Softmax (and the ops feeding
the softmax) kept in fp32, so statistics and the attention mask never overflow; the KV cache and
weights are fp16.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

# Kept in fp32: normalisation statistics and the masked softmax.
FP32_OPS = ["Softmax"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights, activations and KV cache I/O; LayerNorm and softmax computed in fp32."""
    return convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS, disable_shape_infer=True)


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
