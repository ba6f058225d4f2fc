"""`python -m runtime.serve FOLDER` (torch-free) and the options `gpt2-export serve` shares with it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import click

from runtime.manifest import ManifestError
from runtime.providers import ProviderUnavailableError

from .config import API_KEY_ENV, DEFAULT_HOST, ServeConfig


def serve_options(fn: Callable) -> Callable:
    """The serve command's arguments and options, as one decorator bundle."""
    options = [
        click.argument("folder", type=click.Path(exists=True, file_okay=False)),
        click.option("--host", default=DEFAULT_HOST, show_default=True,
                     help="Address to bind; 0.0.0.0 exposes the server to the network."),
        click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
        click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Requests decoded together (continuous batching slots)."),
        click.option("--max-model-len", type=click.IntRange(min=2), default=None,
                     help="Longest prompt + completion, at most the model's n_positions (default): the batch cache "
                     "holds --max-batch rows of this many positions."),
        click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
                     help="Requests waiting for a slot; beyond it, 429 with Retry-After."),
        click.option("--api-key", envvar=API_KEY_ENV, default=None, show_envvar=True,
                     help="Require 'Authorization: Bearer KEY' on every route but /health."),
        click.option("--model-name", default=None, help="Model id in /v1/models (default: the folder's name)."),
        click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads."),
        click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True),
        click.option("--max-n", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Largest n (completions per prompt)."),
        click.option("--max-prompts", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Most prompts in one request."),
        click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
                     help="On SIGTERM, seconds in-flight requests get to finish."),
        click.option("--keep-alive-timeout", type=click.FloatRange(min=0, min_open=True), default=75.0,
                     show_default=True, help="Seconds an idle HTTP keep-alive connection stays open; keep it above "
                     "the idle timeout of the proxy or load balancer in front (uvicorn; Ray's proxy has its own)."),
        click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
                     default="info", show_default=True),
        click.option("--ray", "use_ray", is_flag=True, help="Serve as a Ray Serve deployment (the ray extra)."),
        click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --ray: replicas, each loading the folder."),
        click.option("--ray-address", default=None,
                     help="With --ray: the cluster to join ('auto' on a cluster node); default: a local Ray."),
        click.option("--ray-num-cpus", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
                     help="With --ray: CPUs each replica reserves."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_serve(folder, host, port, max_batch, max_model_len, max_queue, api_key, model_name, provider, threads,
              max_body_bytes, max_n, max_prompts, drain_timeout, keep_alive_timeout, log_level, use_ray, replicas,
              ray_address, ray_num_cpus) -> int:
    """Build the config from the options and serve; returns the exit status. Errors are click messages."""
    try:
        config = ServeConfig(folder=folder, host=host, port=port, max_batch=max_batch, max_model_len=max_model_len,
                             max_queue=max_queue, api_key=ServeConfig.api_key_from_env(api_key),
                             model_name=model_name, provider=provider, threads=threads,
                             max_body_bytes=max_body_bytes, max_n=max_n, max_prompts=max_prompts,
                             drain_timeout=drain_timeout, keep_alive_timeout=keep_alive_timeout)
        logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        if use_ray:
            try:
                from . import ray_app
            except ImportError as e:
                raise click.ClickException(
                    f"--ray needs Ray Serve ({e}): pip install 'gpt2-export[ray]'") from e
            return ray_app.run(config, replicas, ray_address, ray_num_cpus)
        if replicas != 1:
            raise click.ClickException("--replicas needs --ray: one uvicorn server runs one batcher")
        try:
            from .server import serve
        except ImportError as e:
            raise click.ClickException(f"serving needs the serve extra ({e}): pip install 'gpt2-export[serve]'") from e
        return serve(config, log_level=log_level)
    except (ValueError, ManifestError, FileNotFoundError, ProviderUnavailableError) as e:
        raise click.ClickException(str(e)) from e


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@serve_options
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Serve an export FOLDER with OpenAI-compatible routes (/v1/completions, /v1/models, /health, /metrics)."""
    ctx.exit(run_serve(**options))
