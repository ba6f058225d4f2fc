"""What one benchmark run measures: `BenchConfig` (validated on construction) and the backends it can name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every backend the suite knows, in the order tables and plots list them: the CPU ones, then the GPU ones.
# transformers SDPA is the baseline of every ratio; on the GPU also transformers SDPA on CUDA (fp16).
BACKENDS = (
    "hf-eager",
    "hf-sdpa",
    "optimum-ort",
    "reference",
    "ort-plain",
    "ort-fused",
    "ort-fused-shared",
    "ort-int8",
    "ort-int4",
    "ort-int8-shared",
    "ort-int4-shared",
    "hf-eager-cuda",
    "hf-sdpa-cuda",
    "ort-fused-cuda",
    "ort-fused-cuda-fp16",
    "ort-fused-tensorrt",
    "tensorrt",
)
# Peer backends (benchmarks.rounds), timed in the interleaved rounds only: found, never installed.
PEERS = ("llama-cpp-f32", "llama-cpp-q8_0", "llama-cpp-q4_0", "ct2-float32", "ct2-int8")
BASELINE = "hf-sdpa"
GPU_BASELINE = "hf-sdpa-cuda"
# Other processes' share of the CPUs above which the machine is not quiet: wait before, measure again after.
QUIET_SHARE = 0.10
AGREEMENT_PROMPT_LENGTH = 16  # tokens per prompt of the int8 / int4 agreement check

# Shapes of a full run and of --quick (a smoke test on tiny shapes, not a measurement).
FULL = dict(prompt_lengths=(8, 32, 128, 512), batch_sizes=(1, 4, 8), decode_prompt=32, new_tokens=128,
            repeats=5, warmup=2, generate_repeats=3, agreement_prompts=8, agreement_tokens=32,
            bandwidth_mib=1024, quiet_wait_s=300, retries=2, rounds=5, round_steps=8, profile_steps=16)
QUICK = dict(prompt_lengths=(4, 8), batch_sizes=(1, 2), decode_prompt=4, new_tokens=4,
             repeats=1, warmup=1, generate_repeats=1, agreement_prompts=2, agreement_tokens=4,
             bandwidth_mib=128, quiet_wait_s=0, retries=0, rounds=1, round_steps=2, profile_steps=2)


class BenchConfigError(ValueError):
    """A benchmark option is out of range; the message names the value and the fix."""


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run; fields left None take the full-run or --quick default (see FULL / QUICK)."""

    model: str | Path | None = None  # local checkpoint folder; None: the offline random-weight GPT-2 small
    output: str | Path = "bench-results"
    quick: bool = False
    backends: tuple[str, ...] = BACKENDS
    threads: int = 2
    prompt_lengths: tuple[int, ...] | None = None  # prefill sweep, batch 1
    batch_sizes: tuple[int, ...] | None = None  # end-to-end tokens/s
    decode_batch: int | None = None  # batch of the second prefill and per-token decode timing; None: max(batch_sizes)
    decode_prompt: int | None = None  # prompt length before the per-token decode timing and generate()
    new_tokens: int | None = None  # decode steps timed, and new tokens per generate()
    repeats: int | None = None  # timed runs of prefill and decode (after warmup)
    warmup: int | None = None
    generate_repeats: int | None = None  # timed generate() calls per batch size (after one warm-up call)
    agreement_prompts: int | None = None  # int8 / int4 greedy agreement with fp32: prompts x tokens
    agreement_tokens: int | None = None
    bandwidth_mib: int | None = None  # size of the array read to measure memory bandwidth
    quiet_wait_s: int | None = None  # before each measurement, wait up to this long for other processes to idle
    retries: int | None = None  # measure a backend again when other processes used the CPUs meanwhile
    rounds: int | None = None  # interleaved rounds of the floor, our CPU backends and the peers (0: none)
    round_steps: int | None = None  # decode steps timed per position per round
    positions: tuple[int, ...] | None = None  # prompt lengths the rounds decode after; None: the context's sweep
    profile_steps: int | None = None  # decode steps profiled per floor target after the rounds (0: none)
    peers: tuple[str, ...] = PEERS
    llama_cpp: str | Path | None = None  # llama.cpp build folder; None: $GPT2_EXPORT_LLAMA_CPP
    seed: int = 0
    worker_timeout_s: float = 3600.0
    extra: dict[str, Any] = field(default_factory=dict)  # recorded as is (e.g. the command line)

    def __post_init__(self) -> None:
        defaults = QUICK if self.quick else FULL
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("prompt_lengths", "batch_sizes", "backends", "peers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(self.positions))
            if not self.positions or any(not isinstance(p, int) or p < 1 for p in self.positions):
                raise BenchConfigError(f"positions={self.positions!r} must be a non-empty list of integers >= 1")
        unknown_peers = [p for p in self.peers if p not in PEERS]
        if unknown_peers:
            raise BenchConfigError(f"unknown peer(s) {', '.join(unknown_peers)}: choose from {', '.join(PEERS)}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise BenchConfigError(f"unknown backend(s) {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")
        if not self.backends:
            raise BenchConfigError(f"no backends selected: name at least one of {', '.join(BACKENDS)}")
        for name in ("prompt_lengths", "batch_sizes"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise BenchConfigError(f"{name}={values!r} must be a non-empty list of integers >= 1")
        if self.decode_batch is None:  # the largest generate() batch: latency at the batch whose tokens/s is reported
            object.__setattr__(self, "decode_batch", max(self.batch_sizes))
        for name, minimum in (("threads", 1), ("decode_batch", 1), ("decode_prompt", 1), ("new_tokens", 1),
                              ("repeats", 1), ("warmup", 0), ("generate_repeats", 1), ("agreement_prompts", 1),
                              ("agreement_tokens", 1), ("bandwidth_mib", 1), ("quiet_wait_s", 0), ("retries", 0),
                              ("rounds", 0), ("round_steps", 1), ("profile_steps", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise BenchConfigError(f"{name}={value!r} must be an integer >= {minimum}")

    @property
    def output_dir(self) -> Path:
        """The output folder as a Path."""
        return Path(self.output)

    def largest_batch(self) -> int:
        """The most rows any measurement runs (a TensorRT engine must serve it)."""
        return max(*self.batch_sizes, self.decode_batch)

    def longest_sequence(self) -> int:
        """The most positions any measurement needs (checked against the model's n_positions)."""
        decode = self.decode_prompt + self.new_tokens
        return max(max(self.prompt_lengths), decode, AGREEMENT_PROMPT_LENGTH + self.agreement_tokens)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field."""
        data = dataclasses.asdict(self)
        data["model"] = str(self.model) if self.model is not None else None
        data["output"] = str(self.output)
        data["llama_cpp"] = str(self.llama_cpp) if self.llama_cpp is not None else None
        return data


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """'8,32,128' -> (8, 32, 128); None stays None; anything else names the option and the fix."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise BenchConfigError(f"{option} {text!r} is not a comma-separated list of integers, e.g. 8,32,128") from e
    if not values:
        raise BenchConfigError(f"{option} is empty: give a comma-separated list of integers, e.g. 8,32,128")
    return values


def parse_peers(text: str | None) -> tuple[str, ...]:
    """'llama-cpp-f32,ct2-int8' -> that tuple; None or 'all' selects every peer, 'none' none."""
    if text is None or text.strip() == "all":
        return PEERS
    if text.strip() == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_backends(text: str | None) -> tuple[str, ...]:
    """'hf-sdpa,ort-fused' -> ('hf-sdpa', 'ort-fused'); None or 'all' selects every backend."""
    if text is None or text.strip() == "all":
        return BACKENDS
    return tuple(part.strip() for part in text.split(",") if part.strip())
