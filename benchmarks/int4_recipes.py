"""Agreement and decode speed of each int8 / int4 weight recipe (the measurements behind quantize.DEFAULT_RECIPES).

    python -m benchmarks.int4_recipes [--model DIR] [--positions N] [--speed] [--only NAME,...]

Agreement: teacher-forced next-token argmax of each quantized fused graph against the fp32 transformers-faithful
reference, on the held-out topics of the trained fixture (tests/fixtures/trained_gpt2.py), windows of 128 tokens.
GPTQ calibrates on the fixture's training text (never the held-out text). Speed (--speed): ms per decoded token,
batch 1, after a 128-token prompt, best of 5 rounds of 16 steps, GPT-2-small-shaped random weights, 2 threads;
indicative only on a shared host.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from gpt2_export.quantize import RECIPES, WeightRecipe, calibration_windows, quantize_weights

# Every recipe of quantize.RECIPES plus the block-size and accuracy-level variations the issue asks about.
SWEEP: dict[str, WeightRecipe] = {
    **RECIPES,
    "rtn-sym/block16": replace(RECIPES["rtn-sym"], block_size=16),
    "rtn-sym/block64": replace(RECIPES["rtn-sym"], block_size=64),
    "rtn-sym/block128": replace(RECIPES["rtn-sym"], block_size=128),
    "rtn-asym/block16": replace(RECIPES["rtn-asym"], block_size=16),
    "rtn-asym/block64": replace(RECIPES["rtn-asym"], block_size=64),
    "rtn-asym/block128": replace(RECIPES["rtn-asym"], block_size=128),
    "rtn-asym-edges8": replace(RECIPES["rtn-asym"], eight_bit="edges"),
    "rtn-asym-head8/block64": replace(RECIPES["rtn-asym-head8"], block_size=64),
    "rtn-sym-head8/block64": replace(RECIPES["rtn-sym"], eight_bit="lm_head", block_size=64),
    "rtn-sym-head8/block128": replace(RECIPES["rtn-sym"], eight_bit="lm_head", block_size=128),
    "rtn-asym-head8/block128": replace(RECIPES["rtn-asym-head8"], block_size=128),
    "rtn-sym-head8/block256": replace(RECIPES["rtn-sym"], eight_bit="lm_head", block_size=256),
    "rtn-asym-head8/block256": replace(RECIPES["rtn-asym-head8"], block_size=256),
    "rtn-sym-head8/block256/head256": replace(RECIPES["rtn-sym"], eight_bit="lm_head", block_size=256,
                                             eight_bit_block_size=256),
    "int8/block32": replace(RECIPES["int8"], block_size=32),
    "int8/block64": replace(RECIPES["int8"], block_size=64),
    "int8/block256": replace(RECIPES["int8"], block_size=256),
    "rtn-asym/acc0": replace(RECIPES["rtn-asym"], accuracy_level=0),
    "rtn-asym-head8/acc0": replace(RECIPES["rtn-asym-head8"], accuracy_level=0),
}


def fp32_export(model: str | None, folder: Path):
    """The fp32 fused export (its manifest and graph) that every recipe quantizes."""
    from gpt2_export.export import ExportOptions, export
    from gpt2_export.fused import build_fused

    result = export(model, folder, ExportOptions(validate=False, overwrite=True))
    from gpt2_export.checkpoints import load_reference

    ref = load_reference(model)
    proto, _ = build_fused(ref.model.float().eval(), "lm", "growing", 17, lm_head_as_matmul=True)
    return ref, result.manifest, proto


class DecodeTimer:
    """One session's decode loop: batch 1, after a `prompt`-token prefill, `steps` tokens per round."""

    def __init__(self, path: Path, manifest, threads: int = 2, prompt: int = 128, steps: int = 16):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        shape = manifest.shape
        self.pasts = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.outputs = [o.name for o in self.session.get_outputs()]
        ids = np.random.default_rng(0).integers(0, shape.vocab_size, (1, prompt), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(prompt)[None],
                 **{name: np.zeros((1, shape.n_head, 0, shape.head_dim), np.float32) for name in self.pasts}}
        self.first = dict(zip(self.outputs, self.session.run(None, feeds), strict=True))
        self.prompt, self.steps, self.best = prompt, steps, float("inf")

    def round(self) -> None:
        """Time one round; keep the best mean ms per step."""
        cache = {p: self.first[p.replace("past_key_values", "present")] for p in self.pasts}  # (1, nh, P, hs)
        start = time.perf_counter()
        for step in range(self.steps):
            t = self.prompt + step
            out = dict(zip(self.outputs, self.session.run(None, {
                "input_ids": np.array([[step + 1]], np.int64), "attention_mask": np.ones((1, t + 1), np.int64),
                "position_ids": np.array([[t]], np.int64), **cache}), strict=True))
            cache = {p: out[p.replace("past_key_values", "present")] for p in self.pasts}
        self.best = min(self.best, (time.perf_counter() - start) / self.steps * 1e3)


def decode_speeds(names: list[str], work: Path, rounds: int = 5) -> dict[str, float]:
    """ms per decode step of fp32 and each recipe on GPT-2-small-shaped random weights, rounds interleaved."""
    from tests.fixtures import trained_gpt2

    ref, manifest, proto = fp32_export(None, work / "small-fp32")
    calibration = calibration_windows(ref.tokenizer.encode(trained_gpt2.topics_text(False)), 1024)
    timers = {"fp32": DecodeTimer(work / "small-fp32" / "model.onnx", manifest)}
    for name in names:
        path = work / f"small-{name.replace('/', '_')}.onnx"
        onnx.save(quantize_weights(copy.deepcopy(proto), SWEEP[name], calibration), str(path))
        timers[name] = DecodeTimer(path, manifest)
        print(f"built {name}", flush=True)
    for _ in range(rounds):
        for timer in timers.values():
            timer.round()
    return {name: timer.best for name, timer in timers.items()}


def main() -> None:
    from dataclasses import replace as with_fields

    from gpt2_export.validate import measure_text_agreement
    from tests.fixtures import trained_gpt2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(trained_gpt2.FIXTURE))
    parser.add_argument("--positions", type=int, default=None, help="held-out positions scored (default: all)")
    parser.add_argument("--speed", action="store_true", help="also time decode on GPT-2-small-shaped random weights")
    parser.add_argument("--only", default=None, help="comma-separated recipe names")
    parser.add_argument("--no-agreement", action="store_true", help="only the speed measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best of)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SWEEP)
    work = Path(tempfile.mkdtemp(prefix="int4-recipes-"))
    held_out = trained_gpt2.held_out_ids(Path(args.model))
    train_ids = trained_gpt2.encode(trained_gpt2.topics_text(held_out=False))
    ref, manifest, proto = fp32_export(args.model, work / "fp32")
    calibration = calibration_windows(train_ids, ref.model.config.n_positions)
    reference = ref.model.float().eval()
    print(f"{'recipe':<26} {'agreement':>9} {'positions':>9}")
    for name in [] if args.no_agreement else names:
        recipe = SWEEP[name]
        path = work / f"{name.replace('/', '_')}.onnx"
        onnx.save(quantize_weights(copy.deepcopy(proto), recipe, calibration), str(path))
        weights = "int8" if recipe.bits == 8 else "int4"
        agreement = measure_text_agreement(reference, with_fields(manifest, weights=weights), path, held_out,
                                           max_positions=args.positions)
        print(f"{name:<26} {agreement.rate:>9.4f} {agreement.positions:>9}", flush=True)
        path.unlink()
    if args.speed:
        speeds = decode_speeds(names, work, args.rounds)
        print(f"{'recipe':<26} {'ms/token':>9}  (GPT-2 small shape, random weights, 2 threads, best of {args.rounds})")
        for name, ms in speeds.items():
            print(f"{name:<26} {ms:>9.2f}")


if __name__ == "__main__":
    main()
