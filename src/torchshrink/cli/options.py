"""Options shared by the subcommands, defined once, and the types that check them while the
command line is parsed (so a bad value fails before any data is loaded).

One name, one meaning, in every subcommand:

  --batch-size N     training batch size (train; the baseline and fine-tuning of compress,
                     plan and demo)
  --batch B[,B...]   batch size(s) at which latency is measured (bench: several; plan: one)
  --trace-batch N    the example batch export traces and checks with (export)
  --out PATH         the file a command writes (demo: the directory it writes into)
  --report PATH      a JSON report file
  --html PATH        an HTML report page (tables, plots, energy estimate)
  --json             the result as JSON on stdout; human-readable lines go to stderr
  --quiet            no progress bars
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import NoReturn

from torchshrink.cli.errors import UsageError

__all__ = [
    "SCHEME",
    "Parser",
    "add_baseline",
    "add_html",
    "add_json",
    "add_quiet",
    "add_report",
    "add_seed",
    "add_training",
    "batch_list",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "seed_int",
]

SCHEME = ("--batch-size is the training batch size; --batch the batch size(s) latency is measured at; "
          "--json prints JSON on stdout")


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as UsageError so they print as one `error:` line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text!r}")
    return value


def batch_list(text: str) -> list[int]:
    parts = [v.strip() for v in text.split(",")]
    try:
        values = [int(v) for v in parts if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be positive integers like 1,32, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive integers like 1,32, got {text!r}")
    return values


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (progress lines go to stderr)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed_int, default=0, help="seed for initialization and shuffling (default 0)")


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", default=None, help="JSON report file to write (checked before any work)")


def add_html(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", default=None, metavar="PATH",
                   help="also write an HTML report page: before/after, per layer, file bytes, energy "
                        "(checked before any work)")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def add_training(p: argparse.ArgumentParser, *, what: str = "training") -> None:
    """--epochs, --lr, --batch-size: the training options, overriding the model's recipe."""
    p.add_argument("--epochs", type=positive_int, default=None, help=f"{what} epochs (default: the model's recipe)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"{what} learning rate, a finite number > 0 (default: the model's recipe)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="training batch size (default: the model's recipe); latency batches are --batch")


def add_baseline(p: argparse.ArgumentParser, model_names: Sequence[str], data_names: Sequence[str]) -> None:
    """Where a command's starting model comes from: --model (trained here) or --checkpoint."""
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", default=None,
                       help="reference model to train as the baseline: " + ", ".join(model_names))
    start.add_argument("--checkpoint", default=None,
                       help="start from this artifact instead of training (not with --model)")
    p.add_argument("--data", required=True, help="data set: " + ", ".join(data_names))
    add_training(p, what="baseline")
    add_seed(p)
    add_quiet(p)

