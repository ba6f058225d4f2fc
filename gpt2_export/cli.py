"""The `gpt2-export` command line: each command is a thin wrapper that turns library errors into messages."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import click

from . import __version__
from .quantize import DEFAULT_RECIPES, INT4_RECIPES


def _errors_as_messages(fn: Callable) -> Callable:
    """Show expected failures (bad input, missing files) as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def _sampling_options(fn: Callable) -> Callable:
    """The decoding options shared by the generate commands."""
    options = [
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=20, show_default=True),
        click.option("--sample", is_flag=True, help="Sample instead of greedy decoding."),
        click.option("--temperature", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(min=0), default=50, show_default=True),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--seed", type=int, default=None, help="Seed for sampling (same seed, same text)."),
        click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _decoding_options(max_new_tokens, sample, temperature, top_k, top_p, seed, num_beams) -> dict:
    """The shared sampling options as generate() keyword arguments (the same names in models and runtime)."""
    return dict(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, num_beams=num_beams)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpt2-export")
def main() -> None:
    """Export GPT-2 to ONNX, validate it against PyTorch, and run it without torch."""


@main.command("reference-generate")
@click.option(
    "--model", "model_path", default=None, help="Hugging Face folder or cached hub id (default: random GPT-2 small)."
)
@click.option("--prompt", required=True, help="Text to continue.")
@_sampling_options
@_errors_as_messages
def reference_generate(model_path, prompt, max_new_tokens, sample, temperature, top_k, top_p, seed, num_beams):
    """Generate text with the PyTorch reference model (the baseline every export is checked against)."""
    import torch

    from .checkpoints import load_reference

    click.echo(f"loading {model_path or 'the offline default'} ...", err=True)
    ref = load_reference(model_path)
    click.echo(f"model: {ref.source}", err=True)
    if ref.random_weights:
        click.echo("note: random weights produce meaningless text; pass --model PATH for a real checkpoint", err=True)
    ids = ref.tokenizer.encode(prompt)
    if not ids:
        raise click.ClickException("the prompt encodes to no tokens: give a non-empty --prompt")
    options = _decoding_options(max_new_tokens, sample, temperature, top_k, top_p, seed, num_beams)
    output = ref.model.generate(torch.tensor([ids]), **options)
    click.echo(prompt + ref.tokenizer.decode(output[0, len(ids) :].tolist()))
    sys.stdout.flush()


@main.command("export")
@click.option(
    "--model", "model_path", default=None, help="Hugging Face folder or cached hub id (default: random GPT-2 small)."
)
@click.option("--head", type=click.Choice(["base", "lm", "double-heads", "seq-cls"]), default="lm", show_default=True)
@click.option(
    "--output", type=click.Path(file_okay=False), required=True, help="Folder to write (must be new or empty)."
)
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--no-validate", is_flag=True, help="Skip the comparison against PyTorch.")
@click.option(
    "--external-data/--no-external-data", default=None, help="Weights in model.onnx.data (default: past 2 GB)."
)
@click.option("--plain", is_flag=True, help="The traced, unfused graph (the reference) instead of the fused one.")
@click.option(
    "--kv-cache",
    type=click.Choice(["growing", "shared"]),
    default="growing",
    show_default=True,
    help="shared: a fused graph that writes the KV cache in place (GroupQueryAttention).",
)
@click.option(
    "--weights",
    type=click.Choice(["float", "int8", "int4"]),
    default="float",
    show_default=True,
    help="Quantize MatMul weights (fused fp32 graphs, for CPUs).",
)
@click.option(
    "--block-size",
    type=int,
    default=None,
    help="With --weights: elements per quantization scale, a power of two >= 16 [default: int8 128, int4 32].",
)
@click.option(
    "--int4-recipe",
    type=click.Choice(list(INT4_RECIPES)),
    default=None,
    help=f"With --weights int4: how the 4-bit weights are made [default: {DEFAULT_RECIPES['int4']}] (README).",
)
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file GPTQ calibrates on (--int4-recipe gptq / gptq-head8).")
@_errors_as_messages
def export_command(
    model_path, head, output, opset, dtype, overwrite, no_validate, external_data, plain, kv_cache, weights,
    block_size, int4_recipe, calibration,
):
    """Export one GPT-2 head to an ONNX folder and validate it against PyTorch."""
    from .export import ExportOptions, export
    from .progress import stderr_reporter

    options = ExportOptions(
        head=head,
        opset=opset,
        dtype=dtype,
        validate=not no_validate,
        overwrite=overwrite,
        external_data=external_data,
        variant="plain" if plain else None,
        kv_cache=kv_cache,
        weights=weights,
        block_size=block_size,
        int4_recipe=int4_recipe,
        calibration=calibration,
    )
    result = export(model_path, output, options, stderr_reporter)
    status = "validated" if result.validation is not None else "not validated (--no-validate)"
    m = result.manifest
    click.echo(
        f"exported {head} ({dtype}, opset {opset}, {m.variant} graph, kv cache {m.kv_cache}, weights {m.weights}) "
        f"to {result.folder}: {status}"
    )


@main.command("validate")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_path", default=None, help="Checkpoint to compare with (default: the one exported).")
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also report next-token agreement with the fp32 reference on this text (teacher-forced).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="With --text: fail when the agreement is below this share (e.g. 0.95).")
@_errors_as_messages
def validate_command(folder, model_path, text_file, min_agreement):
    """Re-run the export's validation: ONNX Runtime on CPU against the PyTorch reference."""
    from pathlib import Path

    from .export import validate_folder
    from .progress import stderr_reporter

    if min_agreement is not None and text_file is None:
        raise click.UsageError("--min-agreement needs --text FILE (the text the agreement is measured on)")
    text = Path(text_file).read_text(encoding="utf-8", errors="replace") if text_file else None
    result = validate_folder(folder, model_path, stderr_reporter, text=text, min_agreement=min_agreement)
    agreement = f"; next-token agreement {result.text_agreement['rate']:.1%} on {text_file}" if text else ""
    click.echo(f"{folder}: all outputs within tolerance{agreement}")


@main.command("generate")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@_sampling_options
@_errors_as_messages
def generate_command(
    folder, prompt, provider, threads, max_new_tokens, sample, temperature, top_k, top_p, seed, num_beams
):
    """Stream a continuation of --prompt from an export folder, with the torch-free runtime."""
    import runtime

    model = runtime.load(folder, provider=provider, threads=threads)
    options = _decoding_options(max_new_tokens, sample, temperature, top_k, top_p, seed, num_beams)
    if num_beams > 1:
        click.echo(prompt + model.generate_text(prompt, **options))
        return
    pieces = model.stream(prompt, **options)
    first = next(pieces, "")  # bad input (head, prompt length, options) fails here, before any text is printed
    click.echo(prompt + first, nl=False)
    for piece in pieces:
        click.echo(piece, nl=False)
    click.echo()


@main.command("bench")
@click.option("--model", "model_path", default=None, help="Local checkpoint folder (default: random GPT-2 small).")
@click.option("--output", type=click.Path(file_okay=False), default="bench-results", show_default=True,
              help="Folder for results.json, results.md, the PNGs, logs and the cached exports.")
@click.option("--quick", is_flag=True, help="Tiny shapes, one repeat: a smoke test, not a measurement.")
@click.option("--backends", default=None, help="Comma-separated backends (default: all available).")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed repeats (default 5; quick 1).")
@click.option("--prompt-lengths", default=None, help="Prefill prompt lengths (default 8,32,128,512).")
@click.option("--batch-sizes", default=None, help="generate() batch sizes (default 1,4,8).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=None, help="Decode steps / new tokens (default 128).")
@click.option("--decode-batch", type=click.IntRange(min=1), default=None,
              help="Batch of the second prefill / per-token decode measurement (default: the largest batch size).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads per backend.")
@_errors_as_messages
def bench_command(model_path, output, quick, backends, repeats, prompt_lengths, batch_sizes, new_tokens, decode_batch,
                  threads):
    """Benchmark every backend side by side: prefill, per-token decode, tokens/s, peak RSS, ratios, targets."""
    from benchmarks import BenchConfig, run_benchmark
    from benchmarks.config import parse_backends, parse_ints

    from .progress import stderr_reporter

    config = BenchConfig(
        model=model_path,
        output=output,
        quick=quick,
        backends=parse_backends(backends),
        repeats=repeats,
        prompt_lengths=parse_ints(prompt_lengths, "--prompt-lengths"),
        batch_sizes=parse_ints(batch_sizes, "--batch-sizes"),
        new_tokens=new_tokens,
        decode_batch=decode_batch,
        threads=threads,
        extra={"command": " ".join(["gpt2-export", *sys.argv[1:]])},
    )
    result = run_benchmark(config, stderr_reporter)
    click.echo(result.markdown)
    click.echo(f"wrote {', '.join(str(path) for path in result.files.values())}", err=True)


from .engine_cli import build_engine_command  # noqa: E402  (thin command modules register onto the group)

main.add_command(build_engine_command)

from .serve_cli import bench_serve_command, serve_command  # noqa: E402

main.add_command(serve_command)
main.add_command(bench_serve_command)


if __name__ == "__main__":
    main()
