"""The fused GPT-2 graph, written node by node from the reference model's weights (no tracing).

ONNX Runtime's transformer optimizer cannot find GPT-2's attention in current exports
(shared/ENVIRONMENT.md), so the exporter emits the fused operators itself, as onnxruntime-genai's
model builder does:
- embeddings: Gather(wte) + Gather(wpe) + Add;
- per block: SkipLayerNormalization (residual add + LayerNorm + the previous projection's bias),
  one MatMul for q, k, v, fused attention, MatMul for c_proj, MatMul + FastGelu (bias folded in) + MatMul;
- the LM head: Gemm(transB=1) on wte itself, so a tied head is stored once.

Attention comes in two layouts (`kv_cache`):
- "growing": com.microsoft.MultiHeadAttention with past_key/past_value (B, nh, P, hs) and
  present (B, nh, P + T, hs), a 2-D key padding mask, causal (unidirectional): the same I/O contract as
  the plain graph, so any loop that feeds present.* back as past_key_values.* works unchanged;
- "shared": com.microsoft.GroupQueryAttention with past and present both (B, nh, max_length, hs) and the
  same buffer bound to both (in-place, no per-step copy of the cache). Rows are right-aligned ragged
  sequences: row b's tokens fill positions [0, n_b) of the cache and attention_mask is 1 exactly there
  (seqlens_k = sum(mask) - 1 is computed in the graph, as onnxruntime-genai's decoder graphs do).
Shape legend: B batch, T new tokens, P past, S = P + T, C embedding, nh heads, hs head size, V vocab.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import models
from runtime.manifest import IOContract, TensorSpec, past_name, present_name

from .contract import BATCH, PAST, SEQUENCE, TOTAL, past_names, present_names

MAX_LENGTH = "max_sequence_length"
LOGITS_TO_KEEP = "logits_to_keep"
KV_CACHE_LAYOUTS = ("growing", "shared")

# Activation -> (op, domain, takes a bias input). FastGelu is the tanh approximation of gelu_new.
ACTIVATIONS = {
    "gelu_new": ("FastGelu", "com.microsoft", True),
    "gelu_fast": ("FastGelu", "com.microsoft", True),
    "gelu_pytorch_tanh": ("FastGelu", "com.microsoft", True),
    "gelu_python_tanh": ("FastGelu", "com.microsoft", True),
    "gelu": ("BiasGelu", "com.microsoft", True),
    "gelu_python": ("BiasGelu", "com.microsoft", True),
    "relu": ("Relu", "", False),
    "tanh": ("Tanh", "", False),
    "sigmoid": ("Sigmoid", "", False),
}


class FusedGraphError(ValueError):
    """The model uses something the fused graph cannot express; the plain export can."""


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy()


class FusedGraphBuilder:
    """Collects nodes and initializers; `build()` returns the ModelProto."""

    def __init__(self, model: models.GPT2PreTrainedModel, head: str, kv_cache: str, opset: int,
                 lm_head_as_matmul: bool = False):
        config = model.config
        if head not in ("lm", "base"):
            raise FusedGraphError(f"the fused graph covers the lm and base heads, not {head!r}: export it with --plain")
        if kv_cache not in KV_CACHE_LAYOUTS:
            raise FusedGraphError(f"unknown kv_cache layout {kv_cache!r}: use growing or shared")
        if config.activation_function not in ACTIVATIONS:
            raise FusedGraphError(
                f"activation_function {config.activation_function!r} has no fused kernel: export with --plain"
            )
        if config.add_cross_attention:
            raise FusedGraphError("cross-attention layers are not fused: export with --plain")
        if any(block.attn.num_heads != config.n_head for block in model.base_model.h):
            raise FusedGraphError("pruned heads give layers different head counts, which the fused graph does "
                                  "not take: export with --plain")
        if kv_cache == "shared" and config.head_dim % 8:
            raise FusedGraphError(f"GroupQueryAttention (--kv-cache shared) needs a head_dim that is a multiple of 8, "
                                  f"got {config.head_dim}: use --kv-cache growing")
        self.model, self.config, self.head, self.kv_cache, self.opset = model, config, head, kv_cache, opset
        # Quantized variants read the LM head through MatMul (MatMulNBits / int8 kernels take MatMul only),
        # which needs wte transposed: a second copy, but one that quantization shrinks.
        self.lm_head_as_matmul = lm_head_as_matmul
        self.nodes: list[onnx.NodeProto] = []
        self.optional_inputs: list[onnx.ValueInfoProto] = []  # graph inputs backed by a default initializer
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    # ---- small helpers ---------------------------------------------------------------------------

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", name: str = "",
             **attrs) -> list[str]:
        name = name or f"{op}_{len(self.nodes)}"
        if isinstance(outputs, int):
            outputs = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def contract(self) -> IOContract:
        """Inputs and outputs of the fused graph (float32; fp16 conversion rewrites the float types)."""
        c, nh, hs = self.config, self.config.n_head, self.config.head_dim
        past_len, total = (PAST, TOTAL) if self.kv_cache == "growing" else (MAX_LENGTH, MAX_LENGTH)
        inputs = [
            TensorSpec("input_ids", "int64", (BATCH, SEQUENCE)),
            TensorSpec("attention_mask", "int64", (BATCH, TOTAL)),
            TensorSpec("position_ids", "int64", (BATCH, SEQUENCE)),
        ]
        inputs += [TensorSpec(n, "float32", (BATCH, nh, past_len, hs)) for n in past_names(c.n_layer)]
        main = ("logits", (BATCH, SEQUENCE, c.vocab_size)) if self.head == "lm" else (
            "last_hidden_state", (BATCH, SEQUENCE, c.n_embd))
        outputs = [TensorSpec(main[0], "float32", main[1])]
        outputs += [TensorSpec(n, "float32", (BATCH, nh, total, hs)) for n in present_names(c.n_layer)]
        return IOContract(tuple(inputs), tuple(outputs))

    # ---- the graph -------------------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        base = self.model.base_model
        wte = self.weight("wte.weight", _array(base.wte.weight))
        wpe = self.weight("wpe.weight", _array(base.wpe.weight))
        tokens = self.node("Gather", [wte, "input_ids"], name="embed_tokens")[0]  # (B, T, C)
        positions = self.node("Gather", [wpe, "position_ids"], name="embed_positions")[0]
        mask_inputs = self._mask_inputs()

        # The first SkipLayerNorm adds the two embeddings, so no LayerNormalization (opset 17) is needed.
        residual, pending_bias = positions, (tokens, None)
        for i, block in enumerate(base.h):
            prefix = f"h.{i}"
            normed, residual = self._skip_layer_norm(f"{prefix}.ln_1", residual, pending_bias, block.ln_1)
            attn, pending = self._attention(prefix, i, normed, block.attn, mask_inputs)
            normed, residual = self._skip_layer_norm(f"{prefix}.ln_2", residual, (attn, pending), block.ln_2)
            pending_bias = self._mlp(prefix, normed, block.mlp)
        final, _ = self._skip_layer_norm("ln_f", residual, pending_bias, base.ln_f)

        if self.head == "lm":
            self._lm_head(final, wte)
        else:
            self.node("Identity", [final], ["last_hidden_state"], name="last_hidden_state")
        contract = self.contract()
        graph = helper.make_graph(
            self.nodes, f"gpt2-{self.head}-fused-{self.kv_cache}",
            [value_info(spec) for spec in contract.inputs] + self.optional_inputs,
            [value_info(spec) for spec in contract.outputs],
            self.initializers,
        )
        model = helper.make_model(
            graph, producer_name="gpt2-export",
            opset_imports=[helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)],
        )
        model.ir_version = 8
        return model

    def _mask_inputs(self) -> dict[str, str]:
        if self.kv_cache == "growing":
            # MultiHeadAttention's 2-D key padding mask: int32 (B, S), 1 for real tokens.
            return {"key_padding_mask": self.node("Cast", ["attention_mask"], name="mask_int32",
                                                  to=TensorProto.INT32)[0]}
        # GroupQueryAttention: seqlens_k = tokens per row - 1, total_sequence_length = mask width.
        ones = self.weight("one_int64", np.array([1], dtype=np.int64))
        lengths = self.node("ReduceSum", ["attention_mask", ones], name="row_lengths", keepdims=0)[0]
        minus_one = self.node("Sub", [lengths, self.weight("one_scalar", np.array(1, np.int64))], name="seqlens")[0]
        seqlens = self.node("Cast", [minus_one], name="seqlens_k", to=TensorProto.INT32)[0]
        shape = self.node("Shape", ["attention_mask"], name="mask_shape")[0]
        width = self.node("Gather", [shape, self.weight("axis_one", np.array(1, np.int64))], name="mask_width")[0]
        total = self.node("Cast", [width], name="total_sequence_length", to=TensorProto.INT32)[0]
        return {"seqlens_k": seqlens, "total_sequence_length": total}

    def _skip_layer_norm(self, name: str, residual: str, pending, ln: torch.nn.LayerNorm) -> tuple[str, str]:
        """LayerNorm(residual + x + bias), returning (normed, residual + x + bias); bias may be None."""
        gamma = self.weight(f"{name}.weight", _array(ln.weight))
        beta = self.weight(f"{name}.bias", _array(ln.bias))
        x, bias = pending
        outputs = [f"{name}/out", f"{name}/mean", f"{name}/inv_std", f"{name}/sum"]
        inputs = [x, residual, gamma, beta] + ([bias] if bias is not None else [])
        self.node("SkipLayerNormalization", inputs, outputs, domain="com.microsoft", name=name, epsilon=ln.eps)
        return outputs[0], outputs[3]

    def _matmul(self, name: str, x: str, weight: torch.Tensor) -> str:
        """x @ W for a Conv1D weight stored (in, out)."""
        w = self.weight(f"{name}.weight", _array(weight))
        return self.node("MatMul", [x, w], name=name)[0]

    def _attention(self, prefix: str, layer: int, x: str, attn, mask_inputs: dict[str, str]) -> tuple[str, str]:
        """Returns (c_proj output without bias, c_proj bias name) for the next SkipLayerNorm to add."""
        c = self.config
        qkv = self._matmul(f"{prefix}.attn.c_attn", x, attn.c_attn.weight)  # (B, T, 3C)
        qkv = self.node("Add", [qkv, self.weight(f"{prefix}.attn.c_attn.bias", _array(attn.c_attn.bias))],
                        name=f"{prefix}.attn.c_attn.add_bias")[0]
        split = self.weight(f"{prefix}.attn.split", np.array([c.n_embd] * 3, dtype=np.int64))
        q, k, v = self.node("Split", [qkv, split], 3, name=f"{prefix}.attn.split_qkv", axis=-1)
        past_k, past_v = past_name(layer, "key"), past_name(layer, "value")
        present = [present_name(layer, "key"), present_name(layer, "value")]
        out = f"{prefix}.attn/out"
        if self.kv_cache == "growing":
            self.node("MultiHeadAttention", [q, k, v, "", mask_inputs["key_padding_mask"], "", past_k, past_v],
                      [out, *present], domain="com.microsoft", name=f"{prefix}.attn.mha", num_heads=c.n_head,
                      unidirectional=1, scale=attn.scale, mask_filter_value=-10000.0)
        else:
            self.node("GroupQueryAttention",
                      [q, k, v, past_k, past_v, mask_inputs["seqlens_k"], mask_inputs["total_sequence_length"]],
                      [out, *present], domain="com.microsoft", name=f"{prefix}.attn.gqa", num_heads=c.n_head,
                      kv_num_heads=c.n_head, scale=attn.scale)
        proj = self._matmul(f"{prefix}.attn.c_proj", out, attn.c_proj.weight)
        return proj, self.weight(f"{prefix}.attn.c_proj.bias", _array(attn.c_proj.bias))

    def _mlp(self, prefix: str, x: str, mlp) -> tuple[str, str]:
        fc = self._matmul(f"{prefix}.mlp.c_fc", x, mlp.c_fc.weight)
        op, domain, takes_bias = ACTIVATIONS[self.config.activation_function]
        fc_bias = self.weight(f"{prefix}.mlp.c_fc.bias", _array(mlp.c_fc.bias))
        if takes_bias:
            act = self.node(op, [fc, fc_bias], domain=domain, name=f"{prefix}.mlp.act")[0]
        else:
            biased = self.node("Add", [fc, fc_bias], name=f"{prefix}.mlp.c_fc.add_bias")[0]
            act = self.node(op, [biased], domain=domain, name=f"{prefix}.mlp.act")[0]
        proj = self._matmul(f"{prefix}.mlp.c_proj", act, mlp.c_proj.weight)
        return proj, self.weight(f"{prefix}.mlp.c_proj.bias", _array(mlp.c_proj.bias))

    def _lm_head(self, final: str, wte: str) -> None:
        weight = self.model.lm_head.weight
        tied = weight is self.model.base_model.wte.weight
        final = self._keep_last(final)  # (B, T', C)
        if self.lm_head_as_matmul:
            head = self.weight("lm_head.weight_transposed", _array(weight).T.copy())
            self.node("MatMul", [final, head], ["logits"], name="lm_head")
            return
        head = wte if tied else self.weight("lm_head.weight", _array(weight))
        # Gemm wants 2-D: (B, T', C) -> (B*T', C) -> Gemm -> (B, T', V).
        flat = self.node("Reshape", [final, self.weight("flat_shape", np.array([-1, self.config.n_embd], np.int64))],
                         name="lm_head.flatten")[0]
        logits2d = self.node("Gemm", [flat, head], name="lm_head", transB=1)[0]
        # Shape then Slice, not Shape(end=2): Shape's start/end attributes need opset 15, and opset 14 is supported.
        full_shape = self.node("Shape", [final], name="lm_head.hidden_shape")[0]  # (B, T', C)
        starts = self.weight("lm_head.dims_start", np.array([0], np.int64))
        ends = self.weight("lm_head.dims_end", np.array([2], np.int64))
        hidden_shape = self.node("Slice", [full_shape, starts, ends], name="lm_head.batch_and_tokens")[0]  # (B, T')
        vocab = self.weight("vocab_dim", np.array([self.config.vocab_size], np.int64))
        out_shape = self.node("Concat", [hidden_shape, vocab], name="lm_head.out_shape", axis=0)[0]
        self.node("Reshape", [logits2d, out_shape], ["logits"], name="lm_head.unflatten")

    def _keep_last(self, final: str) -> str:
        """hidden[:, -k:] with k from the optional input `logits_to_keep` (default 0: every position).

        A decoding loop needs the last position only; at a 512-token prompt the other 511 rows of logits
        cost most of the prefill. The input is an overridable initializer, so loops that do not know it
        (Optimum's, onnxruntime-genai's) get every position, as the I/O contract says.
        """
        keep = self.weight(LOGITS_TO_KEEP, np.array([0], dtype=np.int64))
        self.optional_inputs.append(helper.make_tensor_value_info(keep, TensorProto.INT64, [1]))
        start = self.node("Neg", [keep], name="lm_head.keep_start")[0]  # -k; -0 = 0 keeps everything
        end = self.weight("keep_end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
        axis = self.weight("keep_axis", np.array([1], dtype=np.int64))
        return self.node("Slice", [final, start, end, axis], name="lm_head.keep_last")[0]


def value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    """A graph input or output declared from its contract spec."""
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
    return helper.make_tensor_value_info(spec.name, types[spec.dtype], list(spec.shape))


def build_fused(model: models.GPT2PreTrainedModel, head: str, kv_cache: str = "growing", opset: int = 17,
                lm_head_as_matmul: bool = False) -> tuple[onnx.ModelProto, IOContract]:
    """The fused graph of `model` and its I/O contract."""
    builder = FusedGraphBuilder(model, head, kv_cache, opset, lm_head_as_matmul)
    return builder.build(), builder.contract()
