"""Load benchmark of the HTTP service: concurrent streaming clients against local servers (`gpt2-export bench-serve`).

Two servers of the same export run one after the other on 127.0.0.1 (`python -m runtime.serve`, torch-free):
continuous batching (--max-batch N), the one-request-at-a-time baseline (--max-batch 1) and, with
--ray-replicas R, the same batching server as a Ray Serve deployment of R replicas (`serve --ray`). Against each,
1, 4, 8 and 16 clients each send greedy streaming completions of a fixed length (ignore_eos) with distinct
random token-id prompts, back to back. Per level: aggregate tokens/s (tokens over the level's wall time),
time to first token and inter-token latency p50 / p99, errors. Written as results JSON, markdown and a PNG.

The clients are a minimal asyncio HTTP/1.1 reader (no client library), so the benchmark process costs the
two-core machine little next to the server it measures. Every request has a timeout and the run stops itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "serve_results.json", "serve_results.md", "serve_throughput_latency.png"
TARGET_CLIENTS = 8
TARGET_SPEEDUP = 2.5  # aggregate tokens/s at 8 clients, batched over --max-batch 1
TARGET_ITL_RATIO = 3.0  # p99 inter-token latency at 8 clients over a lone client's, same server


@dataclass(frozen=True)
class ServeBenchConfig:
    """One bench-serve run."""

    folder: Path
    output: Path = Path("bench-serve-results")
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    max_batch: int = 8
    baseline_max_batch: int = 1
    requests_per_client: int = 2
    min_requests: int = 8  # per level, so a lone client still gives several time-to-first-token samples
    max_tokens: int = 64
    prompt_tokens: int = 32
    threads: int | None = None  # the servers' ONNX Runtime threads (default: every core)
    ray_replicas: int = 0  # > 0: also `serve --ray --replicas R`; each replica gets cores // R threads by default
    request_timeout_s: float = 600.0
    quiet_share: float = 0.10  # a level during which other processes used more of the CPUs is measured again
    quiet_wait_s: float = 120.0  # before each level, wait up to this long for other processes to go quiet
    retries: int = 2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "concurrency", tuple(sorted(set(self.concurrency))))
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency {self.concurrency} must list client counts >= 1, e.g. 1,4,8,16")
        for name in ("max_batch", "baseline_max_batch", "requests_per_client", "max_tokens", "prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.ray_replicas < 0:
            raise ValueError(f"ray_replicas={self.ray_replicas} must be >= 0 (0: no Ray Serve server)")

    def servers(self) -> list[ServerSpec]:
        """The servers this run measures, in order."""
        specs = [ServerSpec("batched", self.max_batch, self.threads),
                 ServerSpec("baseline", self.baseline_max_batch, self.threads)]
        if self.ray_replicas:
            # Replicas share the machine: by default each gets its share of the cores, not all of them.
            threads = self.threads or max(1, (os.cpu_count() or 1) // self.ray_replicas)
            specs.append(ServerSpec("ray", self.max_batch, threads, self.ray_replicas))
        return specs


@dataclass(frozen=True)
class ServerSpec:
    """One server of the run: `python -m runtime.serve FOLDER --max-batch N`, as Ray Serve replicas when > 0."""

    name: str
    max_batch: int
    threads: int | None
    ray_replicas: int = 0

    @property
    def label(self) -> str:
        label = f"--max-batch {self.max_batch}"
        if self.ray_replicas:
            label = f"--ray --replicas {self.ray_replicas}, {label}"
        return label + (" (baseline)" if self.name == "baseline" else "")

    def arguments(self) -> list[str]:
        args = ["--max-batch", str(self.max_batch)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.ray_replicas:
            args += ["--ray", "--replicas", str(self.ray_replicas)]
        return args


@dataclass
class RequestResult:
    """One streamed completion as the client saw it."""

    tokens: int = 0
    ttft: float | None = None  # seconds from sending to the first token
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive token events
    error: str | None = None


# ---- the client ---------------------------------------------------------------------------------------------------


async def stream_completion(port: int, body: dict, timeout: float) -> RequestResult:
    """POST a streaming completion to 127.0.0.1:port and time its tokens; errors and timeouts are recorded."""
    result = RequestResult()
    try:
        await asyncio.wait_for(_stream(port, body, result), timeout)
    except (OSError, asyncio.TimeoutError, ValueError, IndexError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def _stream(port: int, body: dict, result: RequestResult) -> None:
    """HTTP/1.1 by hand: one request per connection, the response chunked (uvicorn) or read to EOF."""
    payload = json.dumps({**body, "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        sent = time.perf_counter()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 200:
            result.error = f"HTTP {status}: {(await reader.read()).decode('utf-8', 'replace')[:200]}"
            return
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        buffer, last = b"", None
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                buffer += (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event == b"data: [DONE]":
                    return
                if not event.startswith(b"data: "):
                    continue
                message = json.loads(event[6:])
                if "error" in message:
                    result.error = message["error"]["message"]
                    return
                new = sum(len(c.get("token_ids", [])) for c in message["choices"])
                if new:
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - sent
                    else:
                        result.gaps.append(now - last)
                    last = now
                    result.tokens += new
        result.error = "the stream ended without data: [DONE]"
    finally:
        writer.close()


async def run_level(port: int, clients: int, requests: int, prompts: list[list[int]], max_tokens: int,
                    timeout: float) -> tuple[list[RequestResult], float]:
    """`clients` concurrent clients sharing `requests` requests, each sent when its client's previous one ends."""
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for prompt in prompts[:requests]:
        queue.put_nowait(prompt)
    results: list[RequestResult] = []

    async def client() -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                    "return_token_ids": True}
            results.append(await stream_completion(port, body, timeout))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return results, time.perf_counter() - start


# ---- servers ------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`python -m runtime.serve FOLDER` on a free loopback port; stop() sends SIGTERM and returns the exit status."""

    def __init__(self, folder: Path, spec: ServerSpec, log_path: Path):
        self.port = _free_port()
        self.log = log_path.open("w")
        command = [sys.executable, "-m", "runtime.serve", str(folder), "--port", str(self.port), "--max-queue", "256",
                   "--log-level", "warning", *spec.arguments()]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}: see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if s.recv(64).split(b" ")[1:2] == [b"200"]:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not healthy within {timeout:.0f} s: see {self.log.name}")

    def stop(self, timeout: float = 120.0) -> int:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            self.log.close()


# ---- statistics and report -------------------------------------------------------------------------------------------


def _cpu_jiffies(pid: int | None = None) -> int | None:
    """Busy CPU time of the machine (pid None) or of one process and its descendants, in clock ticks; None off Linux.

    Descendants count because a Ray Serve server runs its replicas in worker processes under its raylet.
    """
    try:
        if pid is None:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
        stats = _process_stats()
        if pid not in stats:
            return None
        tree, frontier = {pid}, [pid]
        while frontier:
            parent = frontier.pop()
            children = [child for child, (ppid, _) in stats.items() if ppid == parent and child not in tree]
            tree.update(children)
            frontier += children
        return sum(stats[p][1] for p in tree if p in stats)
    except (OSError, ValueError, IndexError):
        return None


def _process_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime of every thread) for every process still readable."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


def other_cpu_share(start: dict, end: dict, wall: float) -> float | None:
    """The share of the machine's CPUs that processes other than the server and this client used meanwhile."""
    if any(v is None for v in (*start.values(), *end.values())) or wall <= 0:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    other = (end["machine"] - start["machine"]) - (end["server"] - start["server"]) - (end["self"] - start["self"])
    return max(0.0, other / ticks / (wall * (os.cpu_count() or 1)))


def _cpu_snapshot(server_pid: int) -> dict:
    return {"machine": _cpu_jiffies(), "server": _cpu_jiffies(server_pid), "self": _cpu_jiffies(os.getpid())}


def wait_for_quiet(server_pid: int, share: float, max_wait_s: float) -> float | None:
    """Sample other processes' CPU share a second at a time until it is below `share` (or time runs out)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, start = _cpu_snapshot(server_pid), time.monotonic()
        time.sleep(1.0)
        other = other_cpu_share(before, _cpu_snapshot(server_pid), time.monotonic() - start)
        if other is None or other < share or time.monotonic() > deadline:
            return other


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize_level(clients: int, results: list[RequestResult], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    errors = [r.error for r in results if r.error is not None]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50_ms": _ms(_percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(_percentile(ttfts, 99)),
        "itl_p50_ms": _ms(_percentile(gaps, 50)),
        "itl_p99_ms": _ms(_percentile(gaps, 99)),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def targets(servers: dict[str, dict]) -> dict[str, Any]:
    """The issue's targets at 8 clients: speed-up over --max-batch 1, p99 ITL against a lone client, no errors."""
    batched, baseline = servers["batched"]["levels"], servers["baseline"]["levels"]
    at = {level["clients"]: level for level in batched}
    base = {level["clients"]: level for level in baseline}
    out: dict[str, Any] = {"clients": TARGET_CLIENTS}
    if TARGET_CLIENTS in at and TARGET_CLIENTS in base and base[TARGET_CLIENTS]["tokens_per_s"] > 0:
        speedup = at[TARGET_CLIENTS]["tokens_per_s"] / base[TARGET_CLIENTS]["tokens_per_s"]
        out["speedup"] = {"value": speedup, "target": TARGET_SPEEDUP, "met": speedup >= TARGET_SPEEDUP}
    if TARGET_CLIENTS in at and 1 in at and at[1]["itl_p99_ms"]:
        ratio = at[TARGET_CLIENTS]["itl_p99_ms"] / at[1]["itl_p99_ms"]
        out["itl_p99_ratio"] = {"value": ratio, "target": TARGET_ITL_RATIO, "met": ratio <= TARGET_ITL_RATIO}
    ray = {level["clients"]: level for level in servers.get("ray", {}).get("levels", [])}
    if TARGET_CLIENTS in ray and TARGET_CLIENTS in at and at[TARGET_CLIENTS]["tokens_per_s"] > 0:
        out["ray_over_batched"] = {"value": ray[TARGET_CLIENTS]["tokens_per_s"] / at[TARGET_CLIENTS]["tokens_per_s"]}
    errors = sum(level["errors"] for s in servers.values() for level in s["levels"])
    out["errors"] = {"value": errors, "target": 0, "met": errors == 0}
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(data: dict[str, Any]) -> str:
    config = data["config"]
    lines = [
        f"Serving benchmark: {data['model']} on {data['machine']['cpu']} ({data['machine']['cpus']} CPUs), "
        f"{config['max_tokens']} greedy tokens per request after a {config['prompt_tokens']}-token prompt, "
        "streaming over loopback.",
        "",
        "| server | clients | requests | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) "
        "| errors | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in data["servers"].values():
        label = server["label"]
        for level in server["levels"]:
            lines.append(
                f"| {label} | {level['clients']} | {level['requests']} | {_fmt(level['tokens_per_s'])} | "
                f"{_fmt(level['ttft_p50_ms'])} | {_fmt(level['ttft_p99_ms'])} | {_fmt(level['itl_p50_ms'])} | "
                f"{_fmt(level['itl_p99_ms'])} | {level['errors']} | {_share(level.get('other_cpu_share'))} |"
            )
    t = data["targets"]
    lines.append("")
    lines.append(f"Targets at {t['clients']} clients:")
    if "speedup" in t:
        lines.append(f"- aggregate tokens/s over --max-batch {config['baseline_max_batch']}: "
                     f"{t['speedup']['value']:.2f}x (target >= {TARGET_SPEEDUP}x: "
                     f"{'met' if t['speedup']['met'] else 'NOT met'})")
    if "itl_p99_ratio" in t:
        lines.append(f"- p99 inter-token latency over a lone client's: {t['itl_p99_ratio']['value']:.2f}x "
                     f"(target <= {TARGET_ITL_RATIO}x: {'met' if t['itl_p99_ratio']['met'] else 'NOT met'})")
    if "ray_over_batched" in t:
        lines.append(f"- Ray Serve ({config['ray_replicas']} replicas) tokens/s over the single-process batching "
                     f"server: {t['ray_over_batched']['value']:.2f}x (no target: on this machine's "
                     f"{data['machine']['cpus']} CPUs the replicas share the same cores)")
    lines.append(f"- errors: {t['errors']['value']} (target 0: {'met' if t['errors']['met'] else 'NOT met'})")
    lines.append("")
    lines.append("'other load': the share of the CPUs that other processes used during the level (0% is a quiet "
                 "machine).")
    if data.get("command"):
        lines += ["", f"Command: `{data['command']}`"]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> Path | None:
    """Tokens/s and latency percentiles against clients, both servers; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for name, server in data["servers"].items():
        clients = [level["clients"] for level in server["levels"]]
        label = server["label"].removesuffix(" (baseline)")
        style = {"batched": "-", "baseline": "--"}.get(name, ":")
        left.plot(clients, [level["tokens_per_s"] for level in server["levels"]], style, marker="o", label=label,
                  color={"batched": "tab:blue", "baseline": "tab:gray"}.get(name, "tab:purple"))
        for key, marker, color in (("itl_p50_ms", "o", "tab:blue"), ("itl_p99_ms", "^", "tab:red"),
                                   ("ttft_p50_ms", "s", "tab:green")):
            values = [level[key] for level in server["levels"]]
            right.plot(clients, values, style, marker=marker, color=color, label=f"{label} {key.replace('_ms', '')}")
    left.set(title="Aggregate throughput", xlabel="concurrent streaming clients", ylabel="tokens/s")
    right.set(title="Latency", xlabel="concurrent streaming clients", ylabel="ms", yscale="log")
    for ax in (left, right):
        ax.set_xticks(data["config"]["concurrency"])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"gpt2-export serve: {data['model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- the run --------------------------------------------------------------------------------------------------------


@dataclass
class ServeBenchResult:
    data: dict[str, Any]
    markdown: str
    files: dict[str, Path]


def run_serve_bench(config: ServeBenchConfig, report: Callable[[str], None] = print) -> ServeBenchResult:
    """Start each server, run every concurrency level against it, stop it; write JSON, markdown and the PNG."""
    from runtime.manifest import Manifest

    manifest = Manifest.load(config.folder)
    if config.ray_replicas:
        import importlib.util

        if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
            raise RuntimeError(f"--ray-replicas {config.ray_replicas} needs Ray Serve, which is not installed: "
                               "pip install -e '.[ray]' (or leave --ray-replicas at 0)")
    config.output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    vocab = manifest.shape.vocab_size
    eos = manifest.shape.eos_token_id
    ids = [i for i in range(min(vocab, 50000)) if i != eos and not (isinstance(eos, list) and i in eos)]
    servers: dict[str, dict] = {}
    for spec in config.servers():
        name = spec.name
        report(f"starting the {spec.label} server ...")
        server = LocalServer(config.folder, spec, config.output / f"server-{name}.log")
        levels = []
        try:
            server.wait_healthy()
            warm = [rng.choice(ids, config.prompt_tokens).tolist() for _ in range(2)]
            asyncio.run(run_level(server.port, 2, 2, warm, config.max_tokens, config.request_timeout_s))
            for clients in config.concurrency:
                count = max(clients * config.requests_per_client, config.min_requests)
                prompts = [rng.choice(ids, config.prompt_tokens).tolist() for _ in range(count)]
                for attempt in range(config.retries + 1):
                    wait_for_quiet(server.process.pid, config.quiet_share, config.quiet_wait_s)
                    before = _cpu_snapshot(server.process.pid)
                    results, wall = asyncio.run(run_level(server.port, clients, count, prompts, config.max_tokens,
                                                          config.request_timeout_s))
                    level = summarize_level(clients, results, wall)
                    level["other_cpu_share"] = other_cpu_share(before, _cpu_snapshot(server.process.pid), wall)
                    level["attempts"] = attempt + 1
                    if (level["other_cpu_share"] or 0) <= config.quiet_share:
                        break
                    report(f"  {clients:>2} clients: other processes used {_share(level['other_cpu_share'])} of the "
                           "CPUs meanwhile; measuring again")
                levels.append(level)
                report(f"  {clients:>2} clients: {level['tokens_per_s']:7.1f} tokens/s, TTFT p50 "
                       f"{_fmt(level['ttft_p50_ms'])} ms, ITL p50 {_fmt(level['itl_p50_ms'])} / p99 "
                       f"{_fmt(level['itl_p99_ms'])} ms, {level['errors']} errors, other processes "
                       f"{_fmt(100 * (level['other_cpu_share'] or 0), 0)}% of the CPUs")
        finally:
            status = server.stop()
        servers[name] = {"max_batch": spec.max_batch, "label": spec.label, "threads": spec.threads,
                         "ray_replicas": spec.ray_replicas, "levels": levels, "exit_status": status}
        if status != 0:
            report(f"  warning: the server exited with status {status} after SIGTERM")
    data = {
        "model": f"{config.folder.name} ({manifest.shape.n_layer} layers, {manifest.shape.n_embd} wide, "
                 f"kv cache {manifest.kv_cache}, {manifest.dtype})",
        "config": {**asdict(config), "folder": str(config.folder), "output": str(config.output)},
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "servers": servers,
        "command": config.extra.get("command"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data["targets"] = targets(servers)
    text = markdown(data)
    files = {"json": config.output / RESULTS_JSON, "markdown": config.output / RESULTS_MD}
    files["json"].write_text(json.dumps(data, indent=2) + "\n")
    files["markdown"].write_text(text)
    png = plot(data, config.output / RESULTS_PNG)
    if png is not None:
        files["png"] = png
    return ServeBenchResult(data, text, files)
