"""How the command fails: one `error: ...` line on stderr and exit code 2, never a traceback,
for anything the user can fix (a bad option, file, name or data set)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from torchshrink.errors import ConfigError, ShrinkError

__all__ = ["UsageError", "one_line", "run_guarded"]

USAGE_EXIT = 2


class UsageError(ConfigError):
    """A command line argparse rejects (unknown option, missing or malformed value)."""


def one_line(e: object) -> str:
    return " ".join(str(e).split())


def _os_message(e: OSError) -> str:
    where = f" {e.filename!r}" if e.filename else ""
    return f"cannot access{where}: {e.strerror or e}"


def run_guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`run(args)`, with every expected failure turned into one line and exit code 2."""
    try:
        return int(run(args))
    except ShrinkError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USAGE_EXIT
    except OSError as e:  # a disk, permission or path problem the checks up front could not foresee
        print(f"error: {one_line(_os_message(e))}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
