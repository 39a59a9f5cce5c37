"""`torchshrink plan`: train or load a baseline, measure candidate recipes, keep the best one
within a size/latency budget. Candidates are chosen on the validation split; the winner's test
accuracy is then taken once, on the file read back, so the choice does not peek at the test set."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from torchshrink.errors import ConfigError

__all__ = ["plan_args", "cmd_plan"]


def plan_args(p: argparse.ArgumentParser) -> None:
    from torchshrink.cli_compress import baseline_args

    baseline_args(p)
    p.add_argument("--max-bytes", type=float, default=None,
                   help="file size budget: <= 1 is a fraction of the baseline file, larger is bytes")
    p.add_argument("--max-latency", type=float, default=None,
                   help="latency budget: <= 1 is a fraction of the baseline, larger is milliseconds")
    p.add_argument("--recipe", action="append", default=None,
                   help="a candidate recipe YAML (repeat for several; default: the built-in menu)")
    p.add_argument("--batch", type=int, default=1, help="batch size at which latency is measured (default 1)")
    p.add_argument("--out", default=None, help="write the best model to this artifact (F.tsz)")
    p.add_argument("--report", default=None, help="JSON report to write")
    p.add_argument("--plot", default=None, help="PNG of bytes against accuracy for every candidate")


def cmd_plan(args: argparse.Namespace) -> int:
    import torch

    from torchshrink.cli_compress import baseline
    from torchshrink.codec.container import load, save
    from torchshrink.plan import plan
    from torchshrink.train import evaluate

    if args.max_bytes is None and args.max_latency is None:
        raise ConfigError("give a budget: --max-bytes and/or --max-latency (<= 1: a fraction of the baseline)")
    for r in args.recipe or []:
        if not os.path.isfile(r):
            raise ConfigError(f"--recipe {r!r} does not exist; give a YAML recipe such as "
                              "recipes/deep_compression_lenet300.yaml")
    b = baseline(model_name=args.model, data_name=args.data, checkpoint=args.checkpoint, epochs=args.epochs,
                 seed=args.seed, progress=not args.quiet)

    def val_accuracy(m: torch.nn.Module) -> float:
        return evaluate(m, b.val)["accuracy"]

    example = next(iter(b.test))[0][: args.batch]
    res = plan(b.model, args.recipe, evaluate=val_accuracy, max_bytes=args.max_bytes, max_latency=args.max_latency,
               example=example, train=b.train, val=b.val, calibration=b.train, progress=not args.quiet)
    print(res.table())
    report = res.to_dict()
    if res.best is None:
        print("\nno candidate meets the budget; relax it or pass --recipe with stronger recipes")
    else:
        print(f"\nbest within budget: {res.best.name} (validation accuracy {res.best.metric:.2f}%)")
        if args.out:
            assert res.model is not None
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            save(res.model, args.out, metadata={"data": args.data, "plan": res.best.name})
            test_acc = b.accuracy(load(args.out))
            report["best_test_accuracy_from_file"] = test_acc
            report["baseline_test_accuracy"] = b.accuracy(b.model)
            print(f"wrote {args.out}: test accuracy {test_acc:.2f}% read back from the file "
                  f"(baseline {report['baseline_test_accuracy']:.2f}%), {os.path.getsize(args.out):,} bytes")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        res.plot(args.plot)
        print(f"wrote {args.plot}")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0 if res.best is not None else 1
