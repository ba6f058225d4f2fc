"""`gpt2-export serve`: a thin click command over runtime.serve (`gpt2-export bench-serve` is benchmarks/cli.py's).

It does not import torch: it is the same command as the torch-free `python -m runtime.serve`.
"""

from __future__ import annotations

import click

from runtime.serve.cli import run_serve, serve_options


@click.command("serve")
@serve_options
@click.pass_context
def serve_command(ctx: click.Context, **options) -> None:
    """Serve an export FOLDER with OpenAI-compatible routes and continuous batching.

    POST /v1/completions (streaming with "stream": true), GET /v1/models, GET /health, GET /metrics.
    Binds 127.0.0.1 unless --host says otherwise; SIGTERM finishes in-flight requests, then exits 0.
    The same server runs without torch as `python -m runtime.serve FOLDER`.
    """
    ctx.exit(run_serve(**options))
