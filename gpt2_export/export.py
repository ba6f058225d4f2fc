"""`export()`: load a checkpoint, trace one head to ONNX, write a self-describing folder, validate it.

The folder: model.onnx (+ model.onnx.data past protobuf's 2 GB), config.json, the tokenizer files,
and export.json (runtime.manifest.Manifest). Tracing uses torch.onnx's TorchScript exporter
(`dynamo=False`): the dynamo exporter fails when past + new length is 1 (shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

import models
from runtime.bpe_vocab import TOKENIZER_JSON
from runtime.manifest import MANIFEST_NAME, IOContract, Manifest, ModelShape, TensorSpec
from runtime.tokenizer import ADDED_TOKENS, GPT2_RANKS_RESOURCE, Tokenizer, TokenizerNotFoundError

from . import __version__
from .checkpoints import ReferenceModel, load_reference
from .contract import dynamic_axes, io_contract
from .fused import KV_CACHE_LAYOUTS, FusedGraphError, build_fused, value_info
from .graphs import HEAD_CLASSES, graph_for
from .progress import Reporter, silent, stage
from .quantize import (
    BLOCK_SIZES,
    DEFAULT_RECIPES,
    INT8_BLOCK_SIZE,
    RECIPES,
    WeightRecipe,
    calibration_windows,
    quantize_weights,
    recipe_for,
)
from .validate import ValidationReport, measure_text_agreement, raise_if_failed, validate

MODEL_FILE = "model.onnx"
DTYPES = ("fp32", "fp16")
VARIANTS = ("fused", "plain")
WEIGHTS = ("float", "int8", "int4")
# Elements per quantization scale. int8: 128 is as accurate as 64 here and faster; int4: 32, the finest block
# ONNX Runtime's CPU kernels serve well (128 decodes ~25% faster, with visibly worse logits). The int4 recipe
# (zero points, 8-bit LM head, ...) is gpt2_export/quantize.py's DEFAULT_RECIPES["int4"].
DEFAULT_BLOCK_SIZES = {"int8": INT8_BLOCK_SIZE, "int4": RECIPES[DEFAULT_RECIPES["int4"]].block_size}
FUSED_HEADS = ("lm", "base")
# The TorchScript exporter emits opsets up to 20; below 14 it cannot express the attention's dynamic slices.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 14, 20, 17
PROTOBUF_LIMIT = 2**31 - 1
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# The padding mask's fill value: fp32's most negative number, or -1e4 where fp16 must not overflow to -inf.
MASK_VALUES = {"fp32": float(torch.finfo(torch.float32).min), "fp16": -1e4}


class ExportError(ValueError):
    """The export cannot be done as asked; the message names the fix."""


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how."""

    head: str = "lm"
    opset: int = DEFAULT_OPSET
    dtype: str = "fp32"
    validate: bool = True
    overwrite: bool = False
    external_data: bool | None = None  # None: only when the model passes protobuf's 2 GB
    variant: str | None = None  # None: fused where it applies (lm, base), else plain
    kv_cache: str = "growing"  # fused only: "shared" writes the cache in place
    weights: str = "float"  # "int8" / "int4": quantized MatMul weights (fused, fp32 only)
    block_size: int | None = None  # quantized weights: elements per scale; None: DEFAULT_BLOCK_SIZES
    int4_recipe: str | None = None  # --weights int4: a quantize.RECIPES name; None: DEFAULT_RECIPES["int4"]
    calibration: str | None = None  # a text file for the gptq recipes (tokenized with the checkpoint's tokenizer)

    @property
    def weight_recipe(self) -> WeightRecipe | None:
        """The quantization recipe (None for float weights)."""
        if self.weights == "float":
            return None
        return recipe_for(self.weights, self.int4_recipe, self.block_size)

    @property
    def weight_block_size(self) -> int | None:
        """The block size the quantizer uses (None for float weights)."""
        recipe = self.weight_recipe
        return None if recipe is None else recipe.block_size

    def __post_init__(self) -> None:
        if self.head not in HEAD_CLASSES:
            raise ExportError(f"unknown head {self.head!r}: choose one of {', '.join(HEAD_CLASSES)}")
        if self.dtype not in DTYPES:
            raise ExportError(f"unknown dtype {self.dtype!r}: choose fp32 or fp16")
        if self.variant not in (None, *VARIANTS):
            raise ExportError(f"unknown variant {self.variant!r}: choose fused or plain")
        if self.kv_cache not in KV_CACHE_LAYOUTS:
            raise ExportError(f"unknown kv_cache {self.kv_cache!r}: choose growing or shared")
        if self.weights not in WEIGHTS:
            raise ExportError(f"unknown weights {self.weights!r}: choose float, int8 or int4")
        plain = self.variant == "plain" or (self.variant is None and self.head not in FUSED_HEADS)
        fused_only = [f"--kv-cache {self.kv_cache}"] * (self.kv_cache != "growing")
        fused_only += [f"--weights {self.weights}"] * (self.weights != "float")
        if plain and fused_only:
            asked = " and ".join(fused_only)
            no_fused = f"drop {asked} (the {self.head} head has no fused graph)"
            fix = "drop --plain" if self.head in FUSED_HEADS else no_fused
            raise ExportError(
                f"{asked} would need the fused graph, which covers the {' and '.join(FUSED_HEADS)} heads: {fix}"
            )
        if self.kv_cache == "shared" and self.head != "lm":
            raise ExportError(
                f"--kv-cache shared serves the lm head's decoding loop, not the {self.head} head: "
                "drop --kv-cache shared (or use head lm)"
            )
        if self.weights != "float" and self.dtype != "fp32":
            raise ExportError(f"--weights {self.weights} quantizes an fp32 graph: use --dtype fp32")
        if self.block_size is not None:
            if self.weights == "float":
                raise ExportError("--block-size sets the quantization block: add --weights int8 or --weights int4")
            size = self.block_size
            if size not in BLOCK_SIZES:
                raise ExportError(
                    f"block size {size!r} is not supported: onnxruntime's MatMulNBits quantizer takes "
                    f"{', '.join(map(str, BLOCK_SIZES))}"
                )
        if self.int4_recipe is not None and self.weights != "int4":
            raise ExportError(f"--int4-recipe {self.int4_recipe} sets how int4 weights are made: add --weights int4")
        if self.weights != "float":
            recipe = self.weight_recipe  # unknown recipe names fail here, before anything is loaded
            if self.calibration is not None and recipe.algorithm != "gptq":
                raise ExportError(
                    f"--calibration is read by the gptq recipes only (this export uses {recipe.algorithm}): "
                    "add --int4-recipe gptq (or gptq-head8), or drop --calibration"
                )
            if recipe.algorithm == "gptq" and self.calibration is None:
                raise ExportError(f"--int4-recipe {self.int4_recipe} calibrates on text: add --calibration FILE")
            if self.calibration is not None and not Path(self.calibration).is_file():
                raise ExportError(f"calibration file {self.calibration} does not exist: pass a text file")
        if self.opset < MIN_OPSET:
            raise ExportError(
                f"opset {self.opset} is too old: the graph needs opset >= {MIN_OPSET} (dynamic Slice/Trilu-free "
                f"attention and LayerNormalization); use --opset {DEFAULT_OPSET}"
            )
        if self.opset > MAX_OPSET:
            raise ExportError(
                f"opset {self.opset} is newer than torch.onnx's TorchScript exporter emits (<= {MAX_OPSET}): "
                f"use --opset {DEFAULT_OPSET}"
            )


@dataclass
class ExportResult:
    """Where the export went and what validation found."""

    folder: Path
    manifest: Manifest
    validation: ValidationReport | None


def recipe_name(options: ExportOptions) -> str:
    """The recipe's name as export.json records it (int8, or the int4 recipe; block size appended if changed)."""
    name = "int8" if options.weights == "int8" else options.int4_recipe or DEFAULT_RECIPES["int4"]
    base = RECIPES[name].block_size
    return name if options.block_size in (None, base) else f"{name}/block{options.block_size}"


def prepare_output(folder: Path, overwrite: bool) -> None:
    """Create the output folder; refuse a non-empty one unless overwriting; fail early if unwritable."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"output {folder} is a file: choose a folder path")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise ExportError(
                f"output folder {folder} already exists and is not empty: pass --overwrite or choose another"
            )
        shutil.rmtree(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ExportError(f"cannot write to output folder {folder} ({e.strerror}): choose a writable location") from e


def check_output_spares_checkpoint(model: str | os.PathLike | None, folder: Path) -> None:
    """Refuse an output folder that is, or holds, the checkpoint folder (--overwrite would delete it)."""
    if model is None or not Path(model).is_dir():
        return
    checkpoint, output = Path(model).resolve(), folder.resolve()
    if output == checkpoint or output in checkpoint.parents:
        raise ExportError(
            f"output folder {folder} holds the checkpoint {model} being exported (--overwrite would delete it): "
            "choose another output folder"
        )


def checkpoint_id(model: str | os.PathLike | None) -> str | None:
    """What export.json records to find the checkpoint again: an absolute path for a local folder, else the hub id."""
    if model is None:
        return None
    return str(Path(model).resolve()) if Path(model).is_dir() else str(model)


def check_head_matches(ref: ReferenceModel, head: str) -> None:
    """Refuse to export a head whose weights the checkpoint does not have (they would be random)."""
    new = [name for name in getattr(ref.model, "newly_initialized", []) if not name.startswith("lm_head")]
    if new and not ref.random_weights:
        saved_as = ", ".join(ref.model.config.architectures or ["an unknown class"])
        raise ExportError(
            f"the checkpoint has no weights for the {head} head ({', '.join(sorted(new))}); it was saved from "
            f"{saved_as}: export the head it was trained for, or fine-tune a {head} model first"
        )


def check_choice_scores(model: models.GPT2PreTrainedModel, head: str) -> None:
    """Refuse a double-heads model whose multiple-choice head gives a vector per choice, not one logit."""
    if head != "double-heads":
        return
    summary = model.multiple_choice_head.summary
    width = summary.out_features if isinstance(summary, torch.nn.Linear) else model.config.n_embd
    if width != 1:
        c = model.config
        raise ExportError(
            f"the multiple-choice head gives {width} values per choice (summary_use_proj={c.summary_use_proj}, "
            f"summary_proj_to_labels={c.summary_proj_to_labels}), but a double-heads export scores each choice with "
            "one logit (mc_logits (batch, choices)): export --head lm or --head base of this checkpoint instead"
        )


def _dummy_inputs(head: str, model: models.GPT2PreTrainedModel) -> tuple[torch.Tensor, ...]:
    """Small example inputs with a non-empty past, so every axis is traced as dynamic."""
    batch, new, past = 2, 3, 2
    rows = batch * 2 if head == "double-heads" else batch
    ids = torch.ones(rows, new, dtype=torch.long)
    mask = torch.ones(rows, past + new, dtype=torch.long)
    positions = torch.arange(past, past + new).expand(rows, new).contiguous()
    hd = model.config.head_dim
    pasts = []
    for block in model.base_model.h:
        pasts += [torch.zeros(rows, block.attn.num_heads, past, hd) for _ in range(2)]
    if head == "double-heads":
        shape = (batch, 2, -1)
        mc = torch.full((batch, 2), new - 1, dtype=torch.long)
        return (ids.reshape(shape), mask.reshape(shape), positions.reshape(shape), mc, *pasts)
    return (ids, mask, positions, *pasts)


def trace(model: models.GPT2PreTrainedModel, head: str, path: Path, options: ExportOptions) -> onnx.ModelProto:
    """Trace the head's graph to an in-memory ONNX model (fp32)."""
    config = model.config
    contract = io_contract(
        head,
        config.n_layer,
        [b.attn.num_heads for b in model.base_model.h],
        config.head_dim,
        config.n_embd,
        config.vocab_size,
        config.num_labels,
    )
    graph = graph_for(head, model, MASK_VALUES[options.dtype]).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic, by design
        torch.onnx.export(
            graph,
            _dummy_inputs(head, model),
            str(path),
            input_names=contract.input_names(),
            output_names=contract.output_names(),
            dynamic_axes=dynamic_axes(contract),
            opset_version=options.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path), load_external_data=True)
    restore_unused_inputs(proto, contract)
    return proto


def restore_unused_inputs(proto: onnx.ModelProto, contract: IOContract) -> None:
    """Put back, in contract order, inputs the tracer dropped because nothing reads them.

    Double heads read mc_token_ids only with summary_type "cls_index"; without it the traced graph has no such
    input and every caller feeding the contract's inputs gets "Invalid input name".
    """
    traced = {value.name: value for value in proto.graph.input}
    if all(spec.name in traced for spec in contract.inputs):
        return
    names = set(contract.input_names())
    inputs = [traced.get(spec.name) or value_info(spec) for spec in contract.inputs]
    inputs += [value for value in proto.graph.input if value.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


def build_graph(reference: models.GPT2PreTrainedModel, options: ExportOptions, onnx_path: Path,
                report: Reporter) -> tuple[str, onnx.ModelProto, IOContract]:
    """The fp32 graph of the requested variant: fused when asked or by default where it applies, else traced."""
    variant = options.variant or ("fused" if options.head in FUSED_HEADS else "plain")
    if variant == "fused":
        try:
            with stage(f"build fused graph (kv cache: {options.kv_cache})", report):
                proto, contract = build_fused(reference, options.head, options.kv_cache, options.opset,
                                              lm_head_as_matmul=options.weights != "float")
            return "fused", proto, contract
        except FusedGraphError as e:
            fused_only = [f"--kv-cache {options.kv_cache}"] * (options.kv_cache != "growing")
            fused_only += [f"--weights {options.weights}"] * (options.weights != "float")
            if fused_only and "--plain" in str(e):  # the plain graph takes neither: say so, or the advice goes round
                raise ExportError(f"{e}, without {' and '.join(fused_only)} (fused graphs only)") from e
            if options.variant == "fused" or fused_only:
                raise ExportError(str(e)) from e
            report(f"note: {e}; exporting the plain graph instead")
    with stage("trace", report):
        proto = trace(reference, options.head, onnx_path, options)
    config = reference.config
    contract = io_contract(
        options.head, config.n_layer, [b.attn.num_heads for b in reference.base_model.h], config.head_dim,
        config.n_embd, config.vocab_size, config.num_labels,
    )
    return "plain", proto, contract


def with_float_type(contract: IOContract, float_type: str) -> IOContract:
    """The contract with every float tensor retyped (fp16 conversion keeps ints as they are)."""
    def retype(spec: TensorSpec) -> TensorSpec:
        return TensorSpec(spec.name, float_type if spec.dtype.startswith("float") else spec.dtype, spec.shape)

    return IOContract(tuple(map(retype, contract.inputs)), tuple(map(retype, contract.outputs)))


def save_onnx(proto: onnx.ModelProto, path: Path, external_data: bool | None) -> bool:
    """Write the model, with weights in model.onnx.data when it passes 2 GB (or when asked)."""
    size = proto.ByteSize()
    use_external = size > PROTOBUF_LIMIT if external_data is None else external_data
    if size > PROTOBUF_LIMIT and not use_external:
        raise ExportError(
            f"the model is {size / 2**30:.2f} GiB, over protobuf's 2 GiB limit for one file: "
            "drop --no-external-data so the weights go to model.onnx.data"
        )
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    if use_external:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(path))
    return use_external


def write_tokenizer(ref: ReferenceModel, folder: Path) -> list[str]:
    """Copy the checkpoint's tokenizer files the runtime reads (vocab.json + merges.txt, else tokenizer.json, else
    a *.tiktoken), or write the bundled GPT-2 ranks for the default model."""
    if ref.folder is not None and all((ref.folder / name).is_file() for name in TOKENIZER_FILES):
        names = [*TOKENIZER_FILES, *([ADDED_TOKENS] if (ref.folder / ADDED_TOKENS).is_file() else [])]
        for name in names:
            shutil.copyfile(ref.folder / name, folder / name)
        return names
    if ref.folder is not None and (ref.folder / TOKENIZER_JSON).is_file():
        # A tokenizers-only checkpoint; lm exports then rewrite it for onnxruntime-genai from the same vocabulary.
        shutil.copyfile(ref.folder / TOKENIZER_JSON, folder / TOKENIZER_JSON)
        return [TOKENIZER_JSON]
    if ref.folder is not None:
        ranks = sorted(ref.folder.glob("*.tiktoken"))
        if ranks:
            shutil.copyfile(ranks[0], folder / ranks[0].name)
            return [ranks[0].name]
        return []
    bundled = resources.files("runtime") / GPT2_RANKS_RESOURCE
    (folder / "gpt2.tiktoken").write_bytes(bundled.read_bytes())
    return ["gpt2.tiktoken"]


def model_shape(model: models.GPT2PreTrainedModel) -> ModelShape:
    """The manifest's copy of what the runtime needs from config.json."""
    c = model.config
    return ModelShape(
        n_layer=c.n_layer,
        n_head=c.n_head,
        head_dim=c.head_dim,
        n_embd=c.n_embd,
        vocab_size=c.vocab_size,
        n_positions=c.n_positions,
        eos_token_id=c.eos_token_id,
        bos_token_id=c.bos_token_id,
        pad_token_id=c.pad_token_id,
        num_labels=c.num_labels,
        id2label={str(k): v for k, v in c.labels().items()},
        num_heads_per_layer=tuple(b.attn.num_heads for b in model.base_model.h),
        problem_type=c.problem_type,
    )


def check_shape_matches(ref: ReferenceModel, manifest: Manifest, checkpoint: str | None) -> None:
    """Refuse a checkpoint shaped unlike the export: comparing the two would only report broadcast errors."""
    names = ["n_layer", "n_head", "n_embd", "vocab_size", "n_positions"]
    if manifest.head == "seq-cls":
        names.append("num_labels")
    if manifest.shape.num_heads_per_layer:  # older export.json files do not record it
        names.append("num_heads_per_layer")
    have = model_shape(ref.model)
    wrong = [f"{name} {getattr(have, name)} (export: {getattr(manifest.shape, name)})" for name in names
             if getattr(have, name) != getattr(manifest.shape, name)]
    if wrong:
        raise ExportError(
            f"the checkpoint {checkpoint or '(the offline default)'} does not match the export: {', '.join(wrong)}: "
            "pass the checkpoint it was exported from with --model"
        )


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the graph."""
    return {
        "gpt2_export": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export(
    model: str | os.PathLike | None,
    output: str | os.PathLike,
    options: ExportOptions = ExportOptions(),
    report: Reporter = silent,
) -> ExportResult:
    """Export `model` (folder, hub id, or None for the offline default) as one head into `output`."""
    folder = Path(output)
    check_output_spares_checkpoint(model, folder)
    prepare_output(folder, options.overwrite)
    with stage("load", report):
        ref = load_reference(str(model) if model is not None else None, HEAD_CLASSES[options.head])
        report(f"model: {ref.source}")
        check_head_matches(ref, options.head)
        check_choice_scores(ref.model, options.head)
        reference = ref.model.float().eval()
    onnx_path = folder / MODEL_FILE
    variant, proto, contract = build_graph(reference, options, onnx_path, report)
    if options.weights != "float":
        recipe = options.weight_recipe
        with stage(f"quantize weights to {options.weights} ({recipe_name(options)})", report):
            calibration = None
            if options.calibration is not None:
                text = Path(options.calibration).read_text(encoding="utf-8", errors="replace")
                ids = ref.tokenizer.encode(text)
                calibration = calibration_windows(ids, reference.config.n_positions)
                report(f"calibration: {len(ids)} tokens of {options.calibration}, {len(calibration)} windows")
            proto = quantize_weights(proto, recipe, calibration)
    if options.dtype == "fp16":
        with stage("convert to fp16", report):
            from .precision import to_fp16

            proto = to_fp16(proto)
            contract = with_float_type(contract, "float16")
    with stage("save", report):
        external = save_onnx(proto, onnx_path, options.external_data)
        reference.config.save(folder)
        tokenizer_files = write_tokenizer(ref, folder)
        report(
            f"wrote {onnx_path}{' + external data' if external else ''}, config.json, "
            f"{', '.join(tokenizer_files) or 'no tokenizer files'}"
        )
    manifest = Manifest(
        head=options.head,
        variant=variant,
        dtype=options.dtype,
        opset=options.opset,
        model_file=MODEL_FILE,
        io=contract,
        shape=model_shape(reference),
        tokenizer_files=tokenizer_files,
        tools=tool_versions(),
        source=ref.source,
        checkpoint=checkpoint_id(model),
        kv_cache=options.kv_cache if variant == "fused" else "growing",
        weights=options.weights,
        weight_block_size=options.weight_block_size,
        weight_recipe=None if options.weights == "float" else {"name": recipe_name(options),
                                                                **options.weight_recipe.to_dict()},
        optional_inputs=[i.name for i in proto.graph.input if i.name in {t.name for t in proto.graph.initializer}],
    )
    manifest.save(folder)
    if options.head == "lm":
        from .genai import genai_unsupported, write_genai_config

        reason = genai_unsupported(manifest)
        if reason is None:
            write_genai_config(folder, manifest)  # onnxruntime-genai's "decoder" config and tokenizer.json
        else:
            report(f"note: no genai_config.json ({reason})")
    validation = None
    if options.validate:
        with stage("validate", report):
            validation = validate(reference, manifest, onnx_path, report)
            manifest.validation = validation.to_dict()
            manifest.save(folder)
        raise_if_failed(validation)
    return ExportResult(folder, manifest, validation)


def validate_folder(
    folder: str | os.PathLike, model: str | os.PathLike | None = None, report: Reporter = silent,
    text: str | None = None, min_agreement: float | None = None,
) -> ValidationReport:
    """Re-validate an export folder against its checkpoint (default: the folder's own config + source).

    With `text`, also the teacher-forced next-token agreement with the fp32 reference on it (lm head), stored in
    export.json's validation.text_agreement; below `min_agreement` it fails the validation.
    """
    folder = Path(folder)
    manifest = Manifest.load(folder)
    onnx_path = folder / manifest.model_file
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} is missing: the export folder is incomplete, re-export it")
    checkpoint = str(model) if model is not None else manifest.checkpoint
    ref = load_reference(checkpoint, HEAD_CLASSES[manifest.head])
    check_shape_matches(ref, manifest, checkpoint)
    check_head_matches(ref, manifest.head)
    reference = ref.model.float().eval()
    result = validate(reference, manifest, onnx_path, report)
    if text is not None:
        try:
            tokenizer = Tokenizer.from_folder(folder)
        except TokenizerNotFoundError:
            tokenizer = ref.tokenizer
        agreement = measure_text_agreement(reference, manifest, onnx_path, np.array(tokenizer.encode(text)))
        result.text_agreement = agreement.to_dict()
        report(agreement.line())
        if min_agreement is not None and not agreement.rate >= min_agreement:
            result.problems.append(f"next-token agreement {agreement.rate:.1%} on the text is below the "
                                   f"--min-agreement {min_agreement:.1%}")
    manifest.validation = result.to_dict()
    manifest.save(folder)
    raise_if_failed(result)
    return result


__all__ = ["MANIFEST_NAME", "ExportError", "ExportOptions", "ExportResult", "export", "validate_folder"]
