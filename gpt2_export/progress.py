"""Stage-by-stage progress on stderr: one line when a stage starts, one with its duration when it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Reporter = Callable[[str], None]


def stderr_reporter(message: str) -> None:
    """Print a progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


def silent(message: str) -> None:
    """Discard progress (library default)."""


@contextmanager
def stage(name: str, report: Reporter) -> Iterator[None]:
    """Report `name ...` on entry and `name done in 1.2 s` on exit."""
    start = time.perf_counter()
    report(f"[{name}] ...")
    yield
    report(f"[{name}] done in {time.perf_counter() - start:.1f} s")
