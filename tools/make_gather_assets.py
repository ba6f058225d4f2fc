"""Regenerate runtime/assets/gather_rows_*.onnx: the one-node graphs that reorder a device-resident KV cache.

The runtime cannot use torch or onnx to gather rows of a CUDA buffer, so beam search's cache reorder runs
this Gather(axis=0) through ONNX Runtime on the same device. Run: python tools/make_gather_assets.py
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

ASSETS = Path(__file__).resolve().parents[1] / "runtime" / "assets"


def gather_model(elem_type: int) -> onnx.ModelProto:
    """data (N, ...), indices (M,) -> data[indices] (M, ...)."""
    data = helper.make_tensor_value_info("data", elem_type, ["rows", "heads", "length", "head_dim"])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, ["picked"])
    output = helper.make_tensor_value_info("gathered", elem_type, ["picked", "heads", "length", "head_dim"])
    node = helper.make_node("Gather", ["data", "indices"], ["gathered"], axis=0)
    graph = helper.make_graph([node], "gather_rows", [data, indices], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="gpt2-export")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    for name, elem in (("float32", TensorProto.FLOAT), ("float16", TensorProto.FLOAT16)):
        onnx.save(gather_model(elem), ASSETS / f"gather_rows_{name}.onnx")
