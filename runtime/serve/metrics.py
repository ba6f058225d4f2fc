"""Prometheus metrics in the text exposition format (version 0.0.4), written out directly: no client library.

Counters and histograms belong to one Service; gauges (queue depth, active requests, batch size)
are read from the batcher when /metrics is scraped. Names follow Prometheus' conventions: `_total` counters,
`_seconds` histograms with cumulative `le` buckets, `_sum` and `_count`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable

PREFIX = "gpt2_serve"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (inc by {amount})")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Reading:
    """A value read from elsewhere when scraped: a gauge, or a counter kept by the batcher."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float], kind: str = "gauge"):
        self.name, self.help, self._read, self.kind = name, help_text, read, kind

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_number(self._read())}"


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        if list(buckets) != sorted(buckets):
            raise ValueError(f"histogram {name}: buckets must be increasing, got {buckets}")
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def samples(self) -> Iterable[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f"{self.name}_sum {_number(total)}"
        yield f"{self.name}_count {cumulative}"


class Metrics:
    """Every metric the service exports; `stats` reads the batcher's snapshot (None before the model loads)."""

    def __init__(self, stats: Callable[[], object | None]):
        self._stats = stats

        def stat(field: str) -> Callable[[], float]:
            return lambda: float(getattr(self._stats(), field, 0) if self._stats() is not None else 0)

        p = PREFIX
        self.http_requests = Counter(f"{p}_http_requests_total", "HTTP requests by route and status code.",
                                     ("route", "status"))
        self.completions = Counter(f"{p}_completions_total", "Completion choices finished, by finish reason.",
                                   ("finish_reason",))
        self.prompt_tokens = Counter(f"{p}_prompt_tokens_total", "Prompt tokens of accepted requests.")
        self.generated_tokens = Counter(f"{p}_generated_tokens_total", "Tokens generated and sent to clients.")
        self.rejected = Counter(f"{p}_rejected_requests_total", "Completion requests refused, by reason.",
                                ("reason",))
        self.ttft = Histogram(f"{p}_time_to_first_token_seconds",
                              "From the request's arrival to its first generated token.", TTFT_BUCKETS)
        self.itl = Histogram(f"{p}_inter_token_latency_seconds",
                             "Between consecutive tokens of one completion.", ITL_BUCKETS)
        self.duration = Histogram(f"{p}_request_duration_seconds",
                                  "From a completion request's arrival to its last token.", DURATION_BUCKETS)
        self._all = [
            self.http_requests, self.completions, self.prompt_tokens, self.generated_tokens, self.rejected,
            Reading(f"{p}_queue_depth", "Requests waiting for a batch slot.", stat("queue_depth")),
            Reading(f"{p}_active_requests", "Requests holding a batch slot.", stat("active")),
            Reading(f"{p}_max_batch", "Batch slots (--max-batch).", stat("max_batch")),
            Reading(f"{p}_batch_size", "Requests decoded in the batcher's last step.", stat("last_batch_size")),
            Reading(f"{p}_engine_steps_total", "Decode steps the batcher has run.", stat("steps"), "counter"),
            Reading(f"{p}_engine_tokens_total", "Tokens the batcher has generated.", stat("tokens_generated"),
                    "counter"),
            self.ttft, self.itl, self.duration,
        ]

    def render(self) -> str:
        lines = []
        for metric in self._all:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
