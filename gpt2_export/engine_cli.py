"""`gpt2-export build-engine`: a thin command over gpt2_export.engine (registered on the group in cli.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("build-engine")
@click.argument("export_folder", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output", type=click.Path(file_okay=False), required=True, help="Engine folder to write (must be new or empty)."
)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest batch (prompts x beams) the engine serves.")
@click.option("--max-sequence", type=click.IntRange(min=2), default=None,
              help="Most positions (prompt + new tokens) per row  [default: the model's n_positions]")
@click.option("--opt-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="The batch TensorRT tunes its kernels for.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache to reuse and update  [default: ENGINE_FOLDER/timing.cache]")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder (its timing cache is reused).")
def build_engine_command(export_folder, output, max_batch, max_sequence, opt_batch, timing_cache, overwrite):
    """Build a TensorRT engine folder from a plain export (`export --plain --dtype fp16`), on this machine's GPU.

    One engine with two optimization profiles: context (the prompt, past 0) and generation (one token on a
    past of 1..max-1). Run it with `gpt2-export generate ENGINE_FOLDER` or `runtime.load(ENGINE_FOLDER)`.
    """
    from .engine import EngineOptions, build_engine
    from .progress import stderr_reporter

    try:
        options = EngineOptions(
            max_batch=max_batch,
            max_sequence=max_sequence,
            opt_batch=opt_batch,
            overwrite=overwrite,
            timing_cache=Path(timing_cache) if timing_cache else None,
        )
        result = build_engine(export_folder, output, options, stderr_reporter)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
        raise click.ClickException(str(e)) from e
    m = result.manifest
    click.echo(
        f"built {result.folder}: TensorRT {m.tensorrt_version} on {m.gpu_name} (compute capability "
        f"{m.compute_capability[0]}.{m.compute_capability[1]}), {m.export['dtype']}, batch <= "
        f"{m.options['max_batch']}, sequence <= {m.options['max_sequence']}"
    )
