"""`gpt2-export bench` and `gpt2-export bench-serve`: the benchmarks' commands on the exporter's command line.

The benchmarks sit above the exporter (they export what they time), so the exporter's CLI never imports them:
these commands register under the `gpt2_export.commands` entry-point group (pyproject.toml), which
`gpt2_export.cli.main` reads, as click plugins and the `llm` / flask command lines do.
"""

from __future__ import annotations

import sys

import click

from gpt2_export.command_errors import errors_as_messages
from gpt2_export.progress import stderr_reporter


@click.command("bench")
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
@click.option("--rounds", type=click.IntRange(min=0), default=None,
              help="Interleaved rounds of the floor, our CPU backends and the peers (default 5; quick 1; 0: none).")
@click.option("--round-steps", type=click.IntRange(min=1), default=None,
              help="Decode steps timed per prompt length per round (default 8; quick 2).")
@click.option("--positions", default=None,
              help="Prompt lengths the rounds decode after (default: 32, 900 and eighths of n_positions to its end).")
@click.option("--profile-steps", type=click.IntRange(min=0), default=None,
              help="After the rounds: decode steps ONNX Runtime's profiler records for each floor target's backend, "
                   "where its time goes (default 16; quick 2; 0: none).")
@click.option("--peers", default=None,
              help="Peers in the rounds: llama-cpp-f32, llama-cpp-q8_0, llama-cpp-q4_0, ct2-float32, ct2-int8, all "
                   "(default) or none; each skipped with the reason when absent.")
@click.option("--llama-cpp", "llama_cpp", type=click.Path(file_okay=False), default=None,
              help="llama.cpp build folder with llama-bench, llama-quantize (and the source's convert_hf_to_gguf.py) "
                   "[default: $GPT2_EXPORT_LLAMA_CPP].")
@errors_as_messages
def bench_command(model_path, output, quick, backends, repeats, prompt_lengths, batch_sizes, new_tokens, decode_batch,
                  threads, rounds, round_steps, positions, profile_steps, peers, llama_cpp):
    """Benchmark every backend side by side: prefill, per-token decode, tokens/s, peak RSS, ratios, targets."""
    from . import BenchConfig, run_benchmark
    from .config import parse_backends, parse_ints, parse_peers

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
        rounds=rounds,
        round_steps=round_steps,
        positions=parse_ints(positions, "--positions"),
        profile_steps=profile_steps,
        peers=parse_peers(peers),
        llama_cpp=llama_cpp,
        extra={"command": " ".join(["gpt2-export", *sys.argv[1:]])},
    )
    result = run_benchmark(config, stderr_reporter)
    click.echo(result.markdown)
    click.echo(f"wrote {', '.join(str(path) for path in result.files.values())}", err=True)


def _ints(value: str, name: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,4,8,16",
                                 param_hint=name) from e
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{value!r} must list integers >= 1", param_hint=name)
    return numbers


def _check_workload(folder: str, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse, before any server starts, an export the load test cannot run: every request would fail."""
    from runtime.manifest import Manifest

    manifest = Manifest.load(folder)
    if manifest.head != "lm":
        raise click.ClickException(
            f"{folder} holds the {manifest.head!r} head: bench-serve needs an lm export (re-export with --head lm)"
        )
    limit = manifest.shape.n_positions
    if prompt_tokens + max_tokens > limit:
        raise click.ClickException(
            f"--prompt-tokens {prompt_tokens} + --max-tokens {max_tokens} = {prompt_tokens + max_tokens} exceeds the "
            f"model's n_positions {limit}: lower them to fit {limit} positions"
        )


@click.command("bench-serve")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--concurrency", default="1,4,8,16", show_default=True, help="Concurrent streaming clients per level.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="The continuous-batching server's batch slots.")
@click.option("--baseline-max-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="The comparison server's batch slots.")
@click.option("--requests-per-client", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Greedy tokens per request (eos ignored, so every request has this length).")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="The servers' ONNX Runtime threads.")
@click.option("--ray-replicas", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also measure `serve --ray --replicas N` (the ray extra); each replica gets cores // N threads "
                   "unless --threads says otherwise. 0: no Ray server.")
@click.option("--output", type=click.Path(file_okay=False), default="bench-serve-results", show_default=True,
              help="Folder for serve_results.json, serve_results.md, the PNG and the server logs.")
def bench_serve_command(folder, concurrency, max_batch, baseline_max_batch, requests_per_client, max_tokens,
                        prompt_tokens, threads, ray_replicas, output) -> None:
    """Load-test the server on an export FOLDER: 1-16 streaming clients, continuous batching vs --max-batch 1.

    With --ray-replicas N, the batching server also runs as a Ray Serve deployment of N replicas beside them.

    Reports aggregate tokens/s, time to first token and inter-token latency p50/p99 and errors per level,
    and checks the targets at 8 clients (>= 2.5x the tokens/s of --max-batch 1, p99 inter-token latency
    <= 3x a lone client's, no errors). Servers run on 127.0.0.1 and are stopped when the run ends.
    """
    from .serve_load import ServeBenchConfig, run_serve_bench

    try:
        config = ServeBenchConfig(
            folder=folder, output=output, concurrency=_ints(concurrency, "--concurrency"), max_batch=max_batch,
            baseline_max_batch=baseline_max_batch, requests_per_client=requests_per_client, max_tokens=max_tokens,
            prompt_tokens=prompt_tokens, threads=threads, ray_replicas=ray_replicas,
            extra={"command": " ".join(["gpt2-export", *sys.argv[1:]])},
        )
        _check_workload(folder, prompt_tokens, max_tokens)  # after the options' own checks (usage errors first)
        result = run_serve_bench(config, lambda line: click.echo(line, err=True))
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(result.markdown)
    click.echo(f"wrote {', '.join(str(path) for path in result.files.values())}", err=True)
