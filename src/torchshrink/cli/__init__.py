"""The `torchshrink` command line: one module per subcommand, shared options in `options`.

    torchshrink train --model lenet300 --data mnist5k --out lenet300.tsz
"""

from torchshrink.cli.baseline import DATA_SEED, EVAL_BATCH_SIZE, train_recipe
from torchshrink.cli.demo import run_demo
from torchshrink.cli.main import build_parser, main

__all__ = ["DATA_SEED", "EVAL_BATCH_SIZE", "build_parser", "main", "run_demo", "train_recipe"]
