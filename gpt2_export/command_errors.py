"""How every command fails on expected errors: one line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click


def errors_as_messages(fn: Callable) -> Callable:
    """Show expected failures (bad input, missing files) as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper
