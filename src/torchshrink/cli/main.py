"""The `torchshrink` command: the parser over every subcommand module, and `main()`.

Each subcommand is one module with NAME, HELP, add_arguments(parser) and run(args) -> exit code;
the options they share are defined once in `cli/options.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torchshrink.cli.bench as bench
import torchshrink.cli.compress as compress
import torchshrink.cli.demo as demo
import torchshrink.cli.eval as eval_cmd
import torchshrink.cli.export as export
import torchshrink.cli.inspect as inspect
import torchshrink.cli.plan as plan
import torchshrink.cli.report as report
import torchshrink.cli.train as train
from torchshrink.cli.errors import USAGE_EXIT, UsageError, one_line, run_guarded
from torchshrink.cli.options import SCHEME, Parser

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = (train, eval_cmd, inspect, compress, export, bench, plan, report, demo)


def build_parser() -> Parser:
    from torchshrink import __version__

    parser = Parser(prog="torchshrink", description="Compress trained PyTorch models and measure the result honestly.",
                    epilog=SCHEME)
    parser.add_argument("--version", action="version", version=f"torchshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.NAME, help=cmd.HELP, description=cmd.HELP, epilog=SCHEME)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `torchshrink` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USAGE_EXIT
    except SystemExit as e:  # --help and --version exit through argparse
        return int(e.code) if isinstance(e.code, int) else 0
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return USAGE_EXIT
    return run_guarded(args._run, args)
