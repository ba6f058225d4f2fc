"""The `gpt2-export` command line: each command is a thin wrapper that turns library errors into messages.

Commands of packages above the exporter (the benchmarks' `bench` and `bench-serve`) register under the
`gpt2_export.commands` entry-point group and are imported only when used, so this module never imports them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

import click

from . import __version__
from .command_errors import errors_as_messages
from .engine_cli import build_engine_command
from .quantize import DEFAULT_RECIPES, INT4_RECIPES
from .serve_cli import serve_command

COMMAND_GROUP = "gpt2_export.commands"  # entry points: name = "package.module:click_command"


def registered_commands() -> dict[str, EntryPoint]:
    """The commands other installed packages add to gpt2-export, by name."""
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def _unavailable(name: str, entry: EntryPoint, error: Exception) -> click.Command:
    """A stand-in for a registered command that cannot be imported: it fails with the reason and the fix."""

    def fail() -> None:
        raise click.ClickException(
            f"the `{name}` command comes from {entry.value}, which cannot be loaded ({type(error).__name__}: "
            f"{error}): reinstall the project (pip install -e .) from a checkout that has it"
        )

    return click.Command(name, callback=fail, help=f"(unavailable: {entry.value} cannot be loaded)",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class CommandGroup(click.Group):
    """The gpt2-export group: its own commands, plus the registered ones, loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *registered_commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        entry = registered_commands().get(name) if command is None else None
        if entry is None:
            return command
        try:
            command = entry.load()
        except Exception as e:  # an entry point's import can fail in any way its module can
            return _unavailable(name, entry, e)
        self.add_command(command, name)
        return command


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


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpt2-export")
def main() -> None:
    """Export GPT-2 to ONNX, validate it against PyTorch, and run it without torch."""


@main.command("reference-generate")
@click.option(
    "--model", "model_path", default=None, help="Hugging Face folder or cached hub id (default: random GPT-2 small)."
)
@click.option("--prompt", required=True, help="Text to continue.")
@_sampling_options
@errors_as_messages
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
    help="With --weights: elements per quantization scale, 16, 32, 64, 128 or 256 [default: 128].",
)
@click.option(
    "--int4-recipe",
    type=click.Choice(list(INT4_RECIPES)),
    default=None,
    help=f"With --weights int4: how the 4-bit weights are made [default: {DEFAULT_RECIPES['int4']}] (README).",
)
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file GPTQ calibrates on (--int4-recipe gptq / gptq-head8).")
@errors_as_messages
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
@errors_as_messages
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
@errors_as_messages
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


main.add_command(build_engine_command)
main.add_command(serve_command)


if __name__ == "__main__":
    main()
