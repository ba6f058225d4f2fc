"""`build_engine()`: one TensorRT engine, with a context and a generation profile, from a plain ONNX export.

Two verbs, as in TensorRT's samples: create the network (TensorRT's ONNX parser on the export's graph, rewritten
so TensorRT's attention fusion matches) and build the engine (two optimization profiles, the timing cache,
precision from the graph). The result is an engine folder (runtime/engine_manifest.py) that
`runtime.load(folder)` runs with the same API as an export folder.

Which exports: TensorRT's parser reads standard ONNX only, so the fused graph (com.microsoft MultiHeadAttention,
SkipLayerNormalization, ...) is refused; build from `gpt2-export export --plain --dtype fp16`. Heads lm, base
and seq-cls (inputs (batch, sequence)); double-heads' (batch, choices, sequence) inputs are not covered.

Precision: the network is strongly typed on every TensorRT version (TensorRT 11 has nothing else: it removed
the builder precision flags), so an fp16 export gives an fp16 engine with fp16 KV I/O, and an fp32 export an
fp32 one, with TF32 cleared so fp32 means fp32.

Attention fusion: TensorRT fuses softmax(Q K^T + mask) V into one kernel when Q (or K) is scaled BEFORE the
first MatMul; our traced graph divides the scores after it (graphs.py: `w = q @ k^T; w = w / sqrt(hs)`).
`prescale_queries` moves that scale onto Q: `(Q * 1/sqrt(hs)) @ K^T`, the same numbers up to rounding (checked
with onnxruntime by the tests). The other route, emitting ONNX's own `Attention` op (opset 23, which TensorRT
10.x parses into IAttention, with a lower-right causal mask for decode steps), needs the dynamo exporter or a
hand-built graph, which the plain export is not; the additive mask (padding + causal) stays an ordinary Add.

Profiles (data in the engine's engine.json; S = --max-sequence, B = --max-batch, b = --opt-batch):
    context     batch 1..B (opt b), new tokens 1..S (opt min(S, 128)), past 0
    generation  batch 1..B (opt b), new tokens 1, past 1..S-1 (opt S // 2)
Shape legend: B batch, T new tokens, P past length, S positions (P + T).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.engine_manifest import (
    CONTEXT,
    ENGINE_FILE,
    GENERATION,
    TIMING_CACHE,
    EngineManifest,
    ProfileSpec,
    ShapeRange,
)
from runtime.manifest import MANIFEST_NAME, Manifest
from runtime.tensorrt_backend import BufferPlan, import_tensorrt, open_cuda, resolve_shape, step_dims

from . import __version__
from .progress import Reporter, silent, stage

SUPPORTED_HEADS = ("lm", "base", "seq-cls")
CONTEXT_OPT_TOKENS = 128  # the prompt length the context profile is tuned for (clipped to --max-sequence)
PLAIN_EXPORT = "gpt2-export export --plain --dtype fp16"
SCALE_OPS = ("Div", "Mul")
MASK_PATH_OPS = ("Add", "Cast", "Where", "Sub")  # what may sit between the scaled scores and their Softmax


class EngineBuildError(ValueError):
    """The engine cannot be built as asked; the message names the fix."""


@dataclass(frozen=True)
class EngineOptions:
    """The shapes the engine serves, and where its folder and timing cache go."""

    max_batch: int = 8
    max_sequence: int | None = None  # None: the model's n_positions
    opt_batch: int = 1
    overwrite: bool = False
    timing_cache: Path | None = None  # None: timing.cache in the output folder

    def __post_init__(self) -> None:
        for name in ("max_batch", "opt_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise EngineBuildError(f"{name} must be a positive integer, got {value!r}")
        if self.opt_batch > self.max_batch:
            raise EngineBuildError(
                f"opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}: TensorRT tunes for a batch "
                f"inside the profile; use --opt-batch {self.max_batch} or less"
            )
        if self.max_sequence is not None and (not isinstance(self.max_sequence, int) or self.max_sequence < 2):
            raise EngineBuildError(
                f"max_sequence must be an integer >= 2 (a prompt token and a generated one), got {self.max_sequence!r}"
            )

    def sequence_limit(self, manifest: Manifest) -> int:
        """--max-sequence, defaulting to the model's n_positions and never beyond it."""
        limit = manifest.shape.n_positions
        if self.max_sequence is None:
            return limit
        if self.max_sequence > limit:
            raise EngineBuildError(
                f"max_sequence {self.max_sequence} exceeds the model's n_positions {limit}: GPT-2 has no position "
                f"embeddings past it; use --max-sequence {limit} or less"
            )
        return self.max_sequence


@dataclass
class EngineResult:
    """Where the engine went and what it records."""

    folder: Path
    manifest: EngineManifest


# ---- pure logic: what can be built, and the profiles -------------------------------------------------------


def check_export(manifest: Manifest, folder: Path) -> None:
    """Refuse exports TensorRT cannot parse or that the engine runtime does not serve, naming the export to make."""
    if manifest.variant != "plain":
        raise EngineBuildError(
            f"{folder} holds the {manifest.variant} graph (ONNX Runtime's com.microsoft operators), which "
            f"TensorRT's ONNX parser cannot read: export the plain graph with `{PLAIN_EXPORT} --output DIR` and "
            "build from that"
        )
    if manifest.weights != "float" or manifest.kv_cache != "growing":
        raise EngineBuildError(
            f"{folder} has {manifest.weights} weights and a {manifest.kv_cache} KV cache: TensorRT engines are built "
            f"from float weights with the growing cache; export with `{PLAIN_EXPORT}`"
        )
    if manifest.head not in SUPPORTED_HEADS:
        raise EngineBuildError(
            f"{folder} holds the {manifest.head} head: engines cover the {', '.join(SUPPORTED_HEADS)} heads, whose "
            "inputs are (batch, sequence); run double-heads with ONNX Runtime (`runtime.load(folder, provider=...)`)"
        )


def profiles(options: EngineOptions, manifest: Manifest) -> list[ProfileSpec]:
    """min / opt / max of every input in the context (index 0) and generation (index 1) profiles."""
    s = options.sequence_limit(manifest)
    b, ob = options.max_batch, options.opt_batch
    # (batch, new tokens, past) at min, opt and max of each profile.
    points = {
        CONTEXT: ((1, 1, 0), (ob, min(s, CONTEXT_OPT_TOKENS), 0), (b, s, 0)),
        GENERATION: ((1, 1, 1), (ob, 1, s // 2), (b, 1, s - 1)),
    }
    specs = []
    for index, (name, corners) in enumerate(points.items()):
        shapes = {}
        for spec in manifest.io.inputs:
            low, opt, high = (resolve_shape(spec, step_dims(manifest.io, *corner)) for corner in corners)
            shapes[spec.name] = ShapeRange(low, opt, high)
        specs.append(ProfileSpec(name, index, shapes))
    return specs


# ---- the graph rewrite ---------------------------------------------------------------------------------------


class _StaticValues:
    """Values of tensors computed from constants and static dimensions only (numpy), else None.

    Enough of ONNX to fold the traced scale `sqrt(Shape(v)[-1])`: Constant, Shape, Slice, Gather, (Un)Squeeze,
    Concat, Cast, ConstantOfShape and scalar arithmetic. Unknown dimensions are None in an object array, so any
    arithmetic on them fails and the value is unknown.
    """

    def __init__(self, graph: onnx.GraphProto, types: dict[str, Any]):
        self.producers = {out: node for node in graph.node for out in node.output}
        self.initializers = {init.name: init for init in graph.initializer}
        self.types = types
        self.cache: dict[str, np.ndarray | None] = {}

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.cache:
            try:
                self.cache[name] = self._compute(name)
            except (TypeError, ValueError, KeyError, IndexError):
                self.cache[name] = None
        return self.cache[name]

    def _compute(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            init = self.initializers[name]
            external = init.data_location == onnx.TensorProto.EXTERNAL
            return None if external else numpy_helper.to_array(init)
        node = self.producers.get(name)
        if node is None:
            return None  # a graph input
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Constant":
            return numpy_helper.to_array(attrs["value"]) if "value" in attrs else None
        if op == "Shape":
            dims = self.types[node.input[0]].shape.dim
            shape = np.array([d.dim_value if d.HasField("dim_value") else None for d in dims], dtype=object)
            return shape[attrs.get("start", 0) : attrs.get("end", len(shape))]
        args = [self.value(i) if i else None for i in node.input]
        if args and args[0] is None:
            return None
        x = args[0]
        if op == "Identity":
            return x
        if op == "Cast":
            return np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if op in ("Squeeze", "Unsqueeze"):
            axes = args[1] if len(args) > 1 and args[1] is not None else attrs.get("axes")
            axes = tuple(int(a) for a in np.atleast_1d(axes)) if axes is not None else None
            if op == "Squeeze":
                return np.squeeze(x, axis=axes)
            return np.expand_dims(x, axis=axes)
        if op == "Slice":
            starts, ends = args[1], args[2]
            axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
            steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), dtype=np.int64)
            index = [slice(None)] * x.ndim
            for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
                index[int(axis)] = slice(int(start), int(end), int(step))
            return x[tuple(index)]
        if op == "Gather":
            return np.take(x, args[1].astype(np.int64), axis=attrs.get("axis", 0))
        if op == "Concat":
            if any(a is None for a in args):
                return None
            return np.concatenate(args, axis=attrs["axis"])
        if op == "ConstantOfShape":
            fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, dtype=np.float32)
            return np.full(tuple(int(d) for d in x), fill.reshape(-1)[0], dtype=fill.dtype)
        if op in ("Sqrt", "Reciprocal"):
            return np.sqrt(x) if op == "Sqrt" else np.reciprocal(x)
        if op in ("Add", "Sub", "Mul", "Div", "Pow"):
            y = args[1]
            if y is None:
                return None
            x, y = np.asarray(x), np.asarray(y)
            if op == "Div" and x.dtype.kind in "iu":
                return np.trunc(x / y).astype(x.dtype)
            ufunc = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}[op]
            return ufunc(x, y).astype(x.dtype)
        return None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _reaches_softmax(tensor: str, users: dict[str, list[onnx.NodeProto]], hops: int = 3) -> bool:
    """Whether `tensor` flows into a Softmax through at most `hops` mask nodes (Add, Cast, ...), one consumer each."""
    for _ in range(hops + 1):
        nodes = users.get(tensor, [])
        if len(nodes) != 1:
            return False
        if nodes[0].op_type == "Softmax":
            return True
        if nodes[0].op_type not in MASK_PATH_OPS:
            return False
        tensor = nodes[0].output[0]
    return False


def _remove_identity_casts(graph: onnx.GraphProto, types: dict[str, Any]) -> int:
    """Drop Casts to the type their input already has (fp16 exports keep `softmax(...).type(v.dtype)` as one)."""
    graph_outputs = {o.name for o in graph.output}
    removed = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or node.output[0] in graph_outputs or node.input[0] not in types:
            continue
        target = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
        if types[node.input[0]].elem_type != target:
            continue
        for user in graph.node:
            for k, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[k] = node.input[0]
        graph.node.remove(node)
        removed += 1
    return removed


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is used (the folded scale's Shape -> ... -> Pow chains)."""
    while True:
        used = {o.name for o in graph.output} | {i for node in graph.node for i in node.input}
        dead = [n for n in graph.node if not any(out in used for out in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def prescale_queries(model: onnx.ModelProto) -> list[str]:
    """Rewrite every `Softmax(MatMul(Q, K^T) / s [+ mask])` into `Softmax(MatMul(Q * (1/s), K^T) [+ mask])`.

    The scale chain (Div or Mul by values that fold to scalars: sqrt(head size), and the layer index where
    scale_attn_by_inverse_layer_idx is set) is folded into one constant in Q's float type. Works in place on
    the graph; weights stored externally are not read. Casts to the type a tensor already has go too, so the
    Softmax feeds the second MatMul directly. Returns the names of the MatMuls it rewrote.
    """
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                   *inferred.graph.output)}
    values = _StaticValues(graph, types)
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    rewritten = []
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        chain, factor, tensor = [], 1.0, matmul.output[0]
        while tensor not in graph_outputs and len(users.get(tensor, [])) == 1:
            node = users[tensor][0]
            if node.op_type not in SCALE_OPS or node.input[0] != tensor:
                break
            scale = values.value(node.input[1])
            if scale is None or np.asarray(scale).size != 1:
                break
            scale = float(np.asarray(scale, dtype=np.float64).reshape(()))
            factor = factor / scale if node.op_type == "Div" else factor * scale
            chain.append(node)
            tensor = node.output[0]
        if not chain or not _reaches_softmax(tensor, users):
            continue
        query = matmul.input[0]
        elem_type = types[query].elem_type if query in types else onnx.TensorProto.FLOAT
        constant = numpy_helper.from_array(
            np.array(factor, dtype=helper.tensor_dtype_to_np_dtype(elem_type)), f"{matmul.name}/query_scale"
        )
        graph.initializer.append(constant)
        scaled = f"{matmul.name}/scaled_query"
        mul = helper.make_node("Mul", [query, constant.name], [scaled], name=f"{matmul.name}/ScaleQuery")
        graph.node.insert(list(graph.node).index(matmul), mul)
        matmul.input[0] = scaled
        for node in users.get(tensor, []):
            for k, name in enumerate(node.input):
                if name == tensor:
                    node.input[k] = matmul.output[0]
        for node in chain:
            graph.node.remove(node)
        users = _consumers(graph)
        rewritten.append(matmul.name)
    _remove_identity_casts(graph, types)
    _remove_dead_nodes(graph)
    return rewritten


def prepare_graph(model_path: Path, manifest: Manifest) -> tuple[bytes, dict[str, Any]]:
    """The export's graph, attention pre-scaled, serialized for TensorRT's parser (external weights stay put)."""
    model = onnx.load(str(model_path), load_external_data=False)
    foreign = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise EngineBuildError(
            f"{model_path} uses operators of {', '.join(foreign)}, which TensorRT's ONNX parser cannot read: "
            f"build from a plain export (`{PLAIN_EXPORT}`)"
        )
    rewritten = prescale_queries(model)
    attention = {
        "rewrite": "score scale moved onto Q before the first MatMul (TensorRT's MHA fusion pattern)",
        "prescaled_layers": len(rewritten),
        "layers": manifest.shape.n_layer,
    }
    return model.SerializeToString(), attention


# ---- TensorRT: create the network, build the engine ---------------------------------------------------------


def network_flags(trt: Any) -> int:
    """Strongly typed: precision comes from the graph. TensorRT 11 networks are always strongly typed."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def create_network(trt: Any, onnx_bytes: bytes, model_path: Path, report: Reporter) -> tuple[Any, ...]:
    """Parse the graph into a strongly typed network; log every I/O name, shape and dtype."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(model_path)):  # the path resolves external weights (model.onnx.data)
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {model_path}: {'; '.join(errors[:5])}")
    for kind, count, get in (("input ", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            tensor = get(i)
            report(f"  {kind} {tensor.name}: {tuple(tensor.shape)} {tensor.dtype}")
    return logger, builder, network, parser


def build_serialized(trt: Any, builder: Any, network: Any, specs: list[ProfileSpec], dtype: str,
                     timing_cache: bytes, report: Reporter) -> tuple[bytes, bytes, bool]:
    """(serialized engine, timing cache, whether the given cache was used) for the network and profiles."""
    config = builder.create_builder_config()
    if dtype == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # an fp32 export asks for fp32 matmuls
    for spec in specs:
        profile = builder.create_optimization_profile()
        for name, shapes in spec.shapes.items():
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        index = config.add_optimization_profile(profile)
        if index != spec.index:
            raise EngineBuildError(f"TensorRT numbered the {spec.name} profile {index}, expected {spec.index}")
        report(f"  profile {index} {spec.describe()}")
    cache = config.create_timing_cache(timing_cache)
    reused = bool(timing_cache)
    if not config.set_timing_cache(cache, False):
        report("  note: the timing cache is from another GPU or TensorRT version; starting a new one")
        cache, reused = config.create_timing_cache(b""), False
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT could not build the engine (TensorRT's log above says why)")
    return bytes(memoryview(serialized)), bytes(memoryview(config.get_timing_cache().serialize())), reused


# ---- the folder ----------------------------------------------------------------------------------------------


def prepare_output(folder: Path, overwrite: bool) -> None:
    """Create the engine folder; refuse a non-empty one unless overwriting."""
    if folder.exists() and not folder.is_dir():
        raise EngineBuildError(f"output {folder} is a file: choose a folder path")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise EngineBuildError(
                f"output folder {folder} already exists and is not empty: pass --overwrite or choose another"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def copy_export_files(export_folder: Path, manifest: Manifest, output: Path) -> None:
    """export.json, config.json and the tokenizer files, so the engine folder loads on its own."""
    for name in (MANIFEST_NAME, "config.json", *manifest.tokenizer_files):
        if (export_folder / name).is_file():
            shutil.copyfile(export_folder / name, output / name)


def build_engine(
    export_folder: str | os.PathLike,
    output: str | os.PathLike,
    options: EngineOptions = EngineOptions(),
    report: Reporter = silent,
) -> EngineResult:
    """Build `output` (an engine folder) from a plain export folder on this machine's GPU."""
    export_folder, output = Path(export_folder), Path(output)
    manifest = Manifest.load(export_folder)
    check_export(manifest, export_folder)
    specs = profiles(options, manifest)
    model_path = export_folder / manifest.model_file
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing: the export folder is incomplete, re-export it")
    purpose = "cannot build an engine"
    trt = import_tensorrt(purpose)
    gpu_name, compute_capability = open_cuda(purpose).device_properties()
    report(f"TensorRT {trt.__version__} on {gpu_name} (compute capability {compute_capability[0]}."
           f"{compute_capability[1]})")
    if manifest.dtype == "fp32":
        report(f"note: an fp32 export builds an fp32 engine (precision comes from the graph); `{PLAIN_EXPORT}` "
               "gives the fp16 engine")
    cache_path = options.timing_cache or output / TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""  # read before --overwrite clears it
    prepare_output(output, options.overwrite)
    with stage("rewrite the graph for TensorRT", report):
        onnx_bytes, attention = prepare_graph(model_path, manifest)
        report(f"  pre-scaled Q in {attention['prescaled_layers']} of {attention['layers']} attention layers")
    start = time.perf_counter()
    with stage("create the network", report):
        _logger, builder, network, _parser = create_network(trt, onnx_bytes, model_path, report)
    with stage("build the engine", report):
        engine_bytes, cache, reused = build_serialized(trt, builder, network, specs, manifest.dtype, cache_bytes,
                                                       report)
    seconds = time.perf_counter() - start
    (output / ENGINE_FILE).write_bytes(engine_bytes)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(cache)
    copy_export_files(export_folder, manifest, output)
    sequence = options.sequence_limit(manifest)
    plan = BufferPlan.for_call(manifest.io, options.max_batch, sequence)
    engine_manifest = EngineManifest(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        profiles=specs,
        options={"max_batch": options.max_batch, "max_sequence": sequence, "opt_batch": options.opt_batch},
        export={
            "folder": str(export_folder.resolve()),
            "head": manifest.head,
            "variant": manifest.variant,
            "dtype": manifest.dtype,
            "opset": manifest.opset,
            "source": manifest.source,
            "checkpoint": manifest.checkpoint,
        },
        attention=attention,
        builder={
            "gpt2_export": __version__,
            "onnx": onnx.__version__,
            "precision": f"strongly typed: {manifest.dtype} from the export"
                         + (", TF32 off" if manifest.dtype == "fp32" else ""),
            "timing_cache": {"path": str(cache_path), "reused": reused, "bytes": len(cache)},
            "build_seconds": round(seconds, 1),
        },
        device_memory=plan.to_dict(prompt_length=sequence - 1),
    )
    engine_manifest.save(output)
    report(f"wrote {output / ENGINE_FILE} ({len(engine_bytes) / 2**20:.1f} MiB), engine.json, {cache_path.name}")
    return EngineResult(output, engine_manifest)


__all__ = ["EngineBuildError", "EngineOptions", "EngineResult", "build_engine", "prescale_queries", "profiles"]
