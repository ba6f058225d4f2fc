"""Weight-only quantization recipes: which MatMul weights become 8- or 4-bit MatMulNBits, and how.

References: onnxruntime 1.32's `onnxruntime.quantization.matmul_nbits_quantizer` (MatMulNBitsQuantizer with
DefaultWeightOnlyQuantConfig = round-to-nearest blocks, HQQWeightOnlyQuantConfig, GPTQWeightOnlyQuantConfig);
HQQ (Badri & Shaji 2023), GPTQ (Frantar et al. 2022); llama.cpp's Q4 files, which keep the tied embedding /
LM head at higher precision. A recipe is data (`WeightRecipe`), named in `RECIPES`, recorded in export.json.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CLI reads the recipe names without loading onnx
    import onnx

ALGORITHMS = ("rtn", "hqq", "gptq")
EIGHT_BIT_SETS = ("none", "lm_head", "edges")  # edges: the LM head and every MatMul of the first and last block
LM_HEAD_NODE = "lm_head"
# GPTQ's calibration: windows of this many tokens, at most this many of them.
CALIBRATION_WINDOW, CALIBRATION_WINDOWS = 128, 32
INT8_BLOCK_SIZE = 128  # int8 weights' blocks, and the 8-bit matrices' blocks in the int4 recipes
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MLAS's blockwise quantizer (onnxruntime 1.32) accepts


class QuantizationError(ValueError):
    """The recipe cannot be applied as asked; the message names the fix."""


@dataclass(frozen=True)
class WeightRecipe:
    """How the MatMul weights are quantized; `eight_bit` names the matrices kept at 8 bits."""

    bits: int
    block_size: int
    symmetric: bool = True
    algorithm: str = "rtn"  # "rtn" (round to nearest), "hqq" (half-quadratic, asymmetric), "gptq" (calibrated)
    eight_bit: str = "none"
    accuracy_level: int = 4  # MatMulNBits: 4 multiplies in int8 (VNNI / AMX), 0 in fp32
    eight_bit_block_size: int = INT8_BLOCK_SIZE  # the 8-bit matrices' blocks

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise QuantizationError(f"unknown algorithm {self.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        if self.eight_bit not in EIGHT_BIT_SETS:
            raise QuantizationError(f"unknown 8-bit set {self.eight_bit!r}: choose one of {', '.join(EIGHT_BIT_SETS)}")
        if self.bits not in (4, 8):
            raise QuantizationError(f"{self.bits}-bit weights are not supported: MatMulNBits here takes 4 or 8")
        if self.algorithm != "rtn" and self.bits != 4:
            raise QuantizationError(f"{self.algorithm} makes 4-bit weights only: use the rtn recipe for int8")

    def to_dict(self) -> dict:
        """The recipe as export.json records it."""
        return asdict(self)


# int4 recipes (agreement on the trained fixture and decode speed for each in README / benchmarks/int4_recipes.py).
RECIPES: dict[str, WeightRecipe] = {
    "int8": WeightRecipe(bits=8, block_size=INT8_BLOCK_SIZE),
    "rtn-sym": WeightRecipe(bits=4, block_size=32),
    "rtn-asym": WeightRecipe(bits=4, block_size=32, symmetric=False),
    "hqq": WeightRecipe(bits=4, block_size=32, symmetric=False, algorithm="hqq"),
    "gptq": WeightRecipe(bits=4, block_size=32, symmetric=False, algorithm="gptq"),
    "rtn-sym-head8": WeightRecipe(bits=4, block_size=128, eight_bit="lm_head"),
    "rtn-asym-head8": WeightRecipe(bits=4, block_size=32, symmetric=False, eight_bit="lm_head"),
    "hqq-head8": WeightRecipe(bits=4, block_size=32, symmetric=False, algorithm="hqq", eight_bit="lm_head"),
    "gptq-head8": WeightRecipe(bits=4, block_size=32, symmetric=False, algorithm="gptq", eight_bit="lm_head"),
}
# The LM head (the tied embedding) is what 4 bits hurt most: at 8 bits it lifts agreement on the trained fixture from
# 0.960 to 0.983 for ~4% decode time on GPT-2 small (0.94-1.12x over five runs); zero points add ~0.3 points but
# 5-10% decode time, so they stay opt-in. Blocks of 128 (GPTQ's and AWQ's usual group) decode 0.83-0.92x the time of
# blocks of 32 in MatMulNBits at the same agreement (0.984 vs 0.983): its per-block work, not the bytes, is the wall
# (benchmarks/results/int4_recipes.md).
DEFAULT_RECIPES = {"int8": "int8", "int4": "rtn-sym-head8"}
INT4_RECIPES = tuple(name for name, recipe in RECIPES.items() if recipe.bits == 4)


def recipe_for(weights: str, name: str | None, block_size: int | None) -> WeightRecipe:
    """The recipe of `--weights int8|int4 [--int4-recipe NAME] [--block-size N]`."""
    if weights == "int8":
        if name not in (None, "int8"):
            raise QuantizationError(f"--int4-recipe {name} applies to --weights int4: drop it or use --weights int4")
        recipe = RECIPES["int8"]
    else:
        name = name or DEFAULT_RECIPES["int4"]
        if name not in INT4_RECIPES:
            raise QuantizationError(f"unknown int4 recipe {name!r}: choose one of {', '.join(INT4_RECIPES)}")
        recipe = RECIPES[name]
    return replace(recipe, block_size=block_size) if block_size is not None else recipe


def eight_bit_nodes(model: onnx.ModelProto, which: str) -> list[str]:
    """Names of the MatMul nodes a recipe keeps at 8 bits."""
    if which == "none":
        return []
    names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    chosen = [LM_HEAD_NODE] if LM_HEAD_NODE in names else []
    if which == "edges":
        layers = sorted({int(name.split(".")[1]) for name in names if name.startswith("h.")})
        if layers:
            chosen += [name for name in names if name.startswith((f"h.{layers[0]}.", f"h.{layers[-1]}."))]
    return chosen


def _quiet_quantizer():
    """The quantizer logs every node it visits at INFO."""
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.WARNING)
    return logger, level


def _run(model: onnx.ModelProto, config, block_size: int, symmetric: bool, accuracy_level: int,
         exclude: Sequence[str]) -> onnx.ModelProto:
    """One MatMulNBitsQuantizer pass over every constant-weight MatMul not in `exclude`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, nodes_to_exclude=list(exclude),
                                     algo_config=config)
    import onnxruntime as ort

    logger, level = _quiet_quantizer()
    # GPTQ prints a progress bar to stdout and its calibration sessions warn about logits_to_keep's default.
    ort.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # HQQ's from_numpy
            quantizer.process()
    finally:
        logger.setLevel(level)
        ort.set_default_logger_severity(2)
    return quantizer.model.model


def _rtn(model: onnx.ModelProto, bits: int, block_size: int, symmetric: bool, accuracy_level: int,
         exclude: Sequence[str]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=accuracy_level, bits=bits)
    return _run(model, config, block_size, symmetric, accuracy_level, exclude)


class _CalibrationReader:
    """GPTQ's calibration feeds: windows of the user's token ids, each an empty-past prefill.

    GPTQ deep-copies the reader and iterates the copy, so the state is a plain index (generators do not copy).
    """

    def __init__(self, model: onnx.ModelProto, windows: list[np.ndarray]):
        self.windows = windows
        self.cache_dims = {}  # past input name -> (heads, head size)
        for value in model.graph.input:
            if value.name.startswith("past_key_values."):
                dims = value.type.tensor_type.shape.dim
                self.cache_dims[value.name] = (dims[1].dim_value, dims[3].dim_value)
        self.position = 0

    def feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        t = ids.shape[-1]
        feeds = {"input_ids": ids[None], "attention_mask": np.ones((1, t), np.int64),
                 "position_ids": np.arange(t, dtype=np.int64)[None]}
        for name, (heads, size) in self.cache_dims.items():
            feeds[name] = np.zeros((1, heads, 0, size), np.float32)  # (B, nh, P=0, hs)
        return feeds

    def get_next(self) -> dict[str, np.ndarray] | None:  # onnxruntime's CalibrationDataReader protocol
        if self.position >= len(self.windows):
            return None
        self.position += 1
        return self.feeds(self.windows[self.position - 1])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self.feeds(ids) for ids in self.windows)


def calibration_windows(ids: Sequence[int], n_positions: int) -> list[np.ndarray]:
    """Up to CALIBRATION_WINDOWS non-overlapping windows of the calibration text's token ids, evenly spread."""
    width = min(CALIBRATION_WINDOW, n_positions)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        raise QuantizationError(
            f"the calibration text has {ids.size} token(s): GPTQ needs text (hundreds of tokens or more)"
        )
    starts = np.arange(0, max(ids.size - width, 0) + 1, width)
    if starts.size > CALIBRATION_WINDOWS:  # spread over the whole text, not its first pages
        starts = starts[np.linspace(0, starts.size - 1, CALIBRATION_WINDOWS).round().astype(int)]
    return [ids[s : s + width] for s in starts.tolist()]


def quantize_weights(model: onnx.ModelProto, recipe: WeightRecipe,
                     calibration: list[np.ndarray] | None = None) -> onnx.ModelProto:
    """Every MatMul with a constant weight (blocks and LM head) to MatMulNBits, as the recipe says."""
    keep8 = eight_bit_nodes(model, recipe.eight_bit) if recipe.bits == 4 else []
    if recipe.algorithm == "gptq":
        if not calibration:
            raise QuantizationError("the gptq recipe needs calibration text: pass --calibration FILE")
        from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig

        if keep8:  # GPTQ's pass ignores nodes_to_exclude: the 8-bit matrices go first, GPTQ takes what is left
            others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep8]
            model = _rtn(model, 8, recipe.eight_bit_block_size, True, recipe.accuracy_level, others)
        reader = _CalibrationReader(model, calibration)
        # GPTQ's block_size is how many columns one Hessian update sweeps; the scale blocks are recipe.block_size.
        config = GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=128, perchannel=True)
        config.accuracy_level = recipe.accuracy_level
        model = _run(model, config, recipe.block_size, recipe.symmetric, recipe.accuracy_level, [])
        _set_accuracy_level(model, recipe.accuracy_level)
        return model
    if recipe.algorithm == "hqq":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

        config = HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=4)
        model = _run(model, config, recipe.block_size, False, recipe.accuracy_level, keep8)
        _set_accuracy_level(model, recipe.accuracy_level)
    else:
        model = _rtn(model, recipe.bits, recipe.block_size, recipe.symmetric, recipe.accuracy_level, keep8)
    if keep8:
        model = _rtn(model, 8, recipe.eight_bit_block_size, True, recipe.accuracy_level, [])
    return model


def _set_accuracy_level(model: onnx.ModelProto, level: int) -> None:
    """HQQ's and GPTQ's passes write no accuracy_level attribute (0, fp32 compute): give them the recipe's."""
    import onnx

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: a for a in node.attribute}
            if "accuracy_level" in attributes:
                attributes["accuracy_level"].i = level
            else:
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))

