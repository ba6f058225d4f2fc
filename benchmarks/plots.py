"""The PNGs (matplotlib, Agg): prefill latency vs prompt length, decode latency vs position, tokens/s vs batch,
and (from the interleaved rounds) decode latency over the whole context against the weights + KV floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import BACKENDS

PLOT_FILES = {
    "prefill": "prefill_latency_vs_prompt_length.png",
    "decode": "decode_latency_vs_position.png",
    "throughput": "tokens_per_s_vs_batch.png",
    "context": "decode_latency_vs_context.png",
}
PEER_STYLES = {"llama-cpp": ("--", "D"), "ct2": ("-.", "v")}
STYLES = {"hf-": ("--", "o"), "optimum": ("-.", "s"), "reference": (":", "^")}  # ours: solid lines


def _style(name: str) -> dict[str, Any]:
    """A fixed colour per backend (tab20's dark shades in BACKENDS order) and a line style per family."""
    from matplotlib import colormaps

    index = BACKENDS.index(name) if name in BACKENDS else 0
    color = colormaps["tab20"]((2 * index + index // 10) % 20)
    for prefix, (line, marker) in STYLES.items():
        if name.startswith(prefix):
            return {"linestyle": line, "marker": marker, "color": color}
    return {"linestyle": "-", "marker": ".", "color": color}


def _figure(title: str, xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=100)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    return plt, fig, ax


def _plain_numbers(ax, axes: str = "xy") -> None:
    """Log axes labelled 10, 20, 50 ... instead of 10^1, 2x10^1."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        if axis.get_scale() != "log":
            continue
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter() if name == "x" else "")


def _save(plt, fig, ax, path: Path) -> Path:
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_prefill(summaries: dict[str, dict], subtitle: str, path: Path) -> Path:
    """Median prefill ms vs prompt length (batch 1), log-log."""
    plt, fig, ax = _figure(f"Prefill latency vs prompt length (batch 1)\n{subtitle}", "prompt length (tokens)",
                           "median prefill latency (ms)")
    for name, s in summaries.items():
        lengths = sorted(int(k) for k in s["prefill_ms"])
        ax.plot(lengths, [s["prefill_ms"][str(k)]["median"] for k in lengths], label=name, **_style(name))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_numbers(ax, "y")
    all_lengths = sorted({int(k) for s in summaries.values() for k in s["prefill_ms"]})
    ax.set_xticks(all_lengths, [str(n) for n in all_lengths])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    return _save(plt, fig, ax, path)


def plot_decode(summaries: dict[str, dict], floor_ms: float | None, subtitle: str, path: Path) -> Path:
    """Median ms per decode step vs the new token's position (batch 1), with the memory floor."""
    plt, fig, ax = _figure(f"Decode latency per token vs position (batch 1)\n{subtitle}", "position of the new token",
                           "median latency per token (ms)")
    for name, s in summaries.items():
        by_position = s["decode_ms_by_position"]
        style = _style(name)
        ax.plot(by_position["positions"], by_position["median"], label=name, linewidth=1.2,
                linestyle=style["linestyle"], color=style["color"])
    if floor_ms:
        ax.axhline(floor_ms, color="black", linewidth=1, label=f"fp32 memory floor {floor_ms:.2f} ms")
    ax.set_yscale("log")
    _plain_numbers(ax, "y")
    return _save(plt, fig, ax, path)


def plot_throughput(summaries: dict[str, dict], subtitle: str, path: Path) -> Path:
    """End-to-end generate() tokens/s vs batch size."""
    plt, fig, ax = _figure(f"End-to-end tokens/s vs batch size\n{subtitle}", "batch size", "tokens/s (generate)")
    batches: set[int] = set()
    for name, s in summaries.items():
        sizes = sorted(int(k) for k in s["generate"])
        batches.update(sizes)
        ax.plot(sizes, [s["generate"][str(b)]["tokens_per_s"] for b in sizes], label=name, **_style(name))
    ax.set_xticks(sorted(batches))
    ax.set_yscale("log")
    _plain_numbers(ax, "y")
    return _save(plt, fig, ax, path)


def plot_context(summary: dict[str, Any], subtitle: str, path: Path) -> Path:
    """Best-round ms per decode step vs prompt length over the whole context, with the fp32 weights + KV floor."""
    from matplotlib import colormaps

    plt, fig, ax = _figure(f"Decode latency over the context (batch 1, best of {summary['rounds']} interleaved "
                           f"rounds)\n{subtitle}", "prompt length before the step (tokens)", "best ms per step")
    positions = [int(p) for p in summary["positions"]]
    names = [n for n, e in summary["participants"].items() if e["status"] == "ok"]
    for index, name in enumerate(names):
        entry = summary["participants"][name]
        points = [(int(p), s["best"]) for p, s in entry["decode_ms"].items() if s]
        if name in BACKENDS:
            style = _style(name)
        else:  # peers: their own colours and dashes
            line, marker = next((v for k, v in PEER_STYLES.items() if name.startswith(k)), ("-", "."))
            style = {"linestyle": line, "marker": marker, "color": colormaps["Dark2"](index % 8)}
        ax.plot([p for p, _ in points], [ms for _, ms in points], label=name, markersize=4, **style)
    floor = [summary["floor_ms"][str(p)]["best"] for p in positions]
    if all(v is not None for v in floor):
        ax.plot(positions, floor, color="black", linewidth=1.5, label="fp32 weights + KV floor")
    ax.set_yscale("log")
    _plain_numbers(ax, "y")
    return _save(plt, fig, ax, path)


def plot_all(summaries: dict[str, dict], floor_ms: float | None, subtitle: str, folder: Path) -> dict[str, Path]:
    """Write the three PNGs into `folder`; returns their paths by kind."""
    return {
        "prefill": plot_prefill(summaries, subtitle, folder / PLOT_FILES["prefill"]),
        "decode": plot_decode(summaries, floor_ms, subtitle, folder / PLOT_FILES["decode"]),
        "throughput": plot_throughput(summaries, subtitle, folder / PLOT_FILES["throughput"]),
    }
