"""`torchshrink plan`: train or load a baseline, then either measure candidate recipes and keep
the best one within a size/latency budget (`--search menu`), or choose one option per layer
jointly under the budget (`--search joint`: option database, dynamic program, verified file). Candidates are chosen on the validation split; the winner's test
accuracy is then taken once, on the file read back, so the choice does not peek at the test set."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torchshrink.cli.options as options
from torchshrink.cli.baseline import baseline, check_baseline, data_names, model_names
from torchshrink.cli.paths import prepare_output, write_text
from torchshrink.errors import ConfigError

NAME = "plan"
HELP = "compress to a size/latency budget: the best menu recipe, or a joint per-layer plan (--search joint)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_baseline(p, model_names(), data_names())
    p.add_argument("--max-bytes", type=options.positive_float, default=None,
                   help="file size budget: <= 1 is a fraction of the baseline file, larger is bytes")
    p.add_argument("--max-latency", type=options.positive_float, default=None,
                   help="latency budget: <= 1 is a fraction of the baseline, larger is milliseconds")
    p.add_argument("--max-macs", type=options.positive_float, default=None,
                   help="MAC budget (--search joint): <= 1 is a fraction of the baseline, larger is MACs")
    p.add_argument("--search", choices=("menu", "joint"), default="menu",
                   help="menu: run whole-model recipes, keep the best in budget (default); joint: choose "
                        "sparsity, bits, k-means bits or SVD rank per layer under the budget")
    p.add_argument("--finetune", type=options.positive_int, default=None,
                   help="--search joint: epochs of fine-tuning after applying the plan")
    p.add_argument("--finetune-lr", type=options.positive_float, default=1e-3,
                   help="--search joint: learning rate of that fine-tuning (default 0.001)")
    p.add_argument("--refine", type=options.positive_int, default=None,
                   help="--search joint: validation evaluations for a local search after the DP (exchanges "
                        "options between layers where the real metric improves)")
    p.add_argument("--workers", type=options.positive_int, default=None,
                   help="--search joint: processes measuring the option database in parallel")
    p.add_argument("--threads-per-worker", type=options.positive_int, default=None,
                   help="--search joint: torch threads of each worker (default 1)")
    p.add_argument("--ray-address", default=None,
                   help="--search joint: measure the option database as tasks on this Ray cluster "
                        "('auto', 'ray://host:10001'; pip install 'torchshrink[ray]')")
    p.add_argument("--recipe-out", default=None,
                   help="--search joint: write the YAML recipe that reproduces the plan")
    p.add_argument("--recipe", action="append", default=None,
                   help="a candidate recipe: a YAML file or a bundled name (repeat for several; "
                        "default: the built-in menu)")
    p.add_argument("--batch", type=options.positive_int, default=1,
                   help="batch size latency is measured at (default 1)")
    p.add_argument("--out", default=None, help="write the best model to this artifact (F.tsz)")
    options.add_report(p)
    p.add_argument("--plot", default=None, help="PNG of bytes against accuracy for every candidate")
    options.add_html(p)
    options.add_json(p)


def run(args: argparse.Namespace) -> int:
    import torch

    import torchshrink as ts

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout)

    if args.max_bytes is None and args.max_latency is None and args.max_macs is None:
        raise ConfigError("give a budget: --max-bytes and/or --max-latency (<= 1: a fraction of the baseline)")
    joint = args.search == "joint"
    if not joint:
        used = [f for f, v in (("--max-macs", args.max_macs), ("--finetune", args.finetune),
                               ("--recipe-out", args.recipe_out), ("--refine", args.refine),
                               ("--workers", args.workers), ("--threads-per-worker", args.threads_per_worker),
                               ("--ray-address", args.ray_address)) if v is not None]
        if used:
            raise ConfigError(f"{', '.join(used)} belong to the joint search: add --search joint")
    elif args.recipe:
        raise ConfigError("--recipe gives candidates to --search menu; --search joint chooses per layer itself")
    check_baseline(model_name=args.model, data_name=args.data, checkpoint=args.checkpoint, epochs=args.epochs,
                   lr=args.lr)
    recipes = [ts.load_recipe(r) for r in args.recipe] if args.recipe else None
    for flag in ("out", "report", "plot", "html", "recipe_out"):
        if getattr(args, flag):
            prepare_output(getattr(args, flag), f"--{flag.replace('_', '-')}")
    b = baseline(model_name=args.model, data_name=args.data, checkpoint=args.checkpoint, epochs=args.epochs,
                 lr=args.lr, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, print_fn=say)

    def val_accuracy(m: torch.nn.Module) -> float:
        return float(ts.evaluate(m, b.val)["accuracy"])

    example = next(iter(b.test))[0][: args.batch]
    extra: dict[str, Any] = {}
    if joint:
        extra = {"search": "joint", "max_macs": args.max_macs, "finetune": args.finetune or 0,
                 "finetune_lr": args.finetune_lr, "refine": args.refine or 0, "workers": args.workers or 1,
                 "threads_per_worker": args.threads_per_worker or 1, "ray_address": args.ray_address}
    res = ts.plan.plan(b.model, recipes, evaluate=val_accuracy, max_bytes=args.max_bytes,
                  max_latency=args.max_latency, example=example, train=b.train, val=b.val, calibration=b.train,
                  progress=not args.quiet, **extra)
    say(res.table())
    report: dict[str, Any] = res.to_dict()
    if joint:
        report.pop("database", None)
        say("\nper layer:\n" + _per_layer_table(res.per_layer))
        if args.recipe_out and res.recipe is not None:
            write_text(args.recipe_out, res.recipe.to_yaml(), "--recipe-out")
            say(f"wrote {args.recipe_out} (the recipe that reproduces the plan: torchshrink compress --recipe)")
    if res.best is None:
        say("\nno candidate meets the budget; relax it or pass --recipe with stronger recipes")
    else:
        say(f"\nbest within budget: {res.best.name} (validation accuracy {res.best.metric:.2f}%)")
        if args.out:
            assert res.model is not None
            ts.save(res.model, args.out, metadata={"data": args.data, "plan": res.best.name})
            test_acc = b.accuracy(ts.load(args.out))
            report["best_test_accuracy_from_file"] = test_acc
            report["baseline_test_accuracy"] = b.accuracy(b.model)
            say(f"wrote {args.out}: test accuracy {test_acc:.2f}% read back from the file "
                f"(baseline {report['baseline_test_accuracy']:.2f}%), {os.path.getsize(args.out):,} bytes")
    if args.html:
        if res.model is None:
            say(f"no report page {args.html}: no candidate meets the budget")
        else:
            from torchshrink.report import report as html_report

            html_report(args.out if args.out else res.model, before=b.model, out=args.html, example=example[:1],
                        evaluate=b.accuracy, plan=res, batch_sizes=(args.batch,), energy_batches=(args.batch,))
            report["html"] = args.html
            say(f"wrote the report page {args.html}")
    if args.plot:
        res.plot(args.plot)
        say(f"wrote {args.plot}")
    if args.report:
        write_text(args.report, json.dumps(report, indent=2), "--report")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if res.best is not None else 1


def _per_layer_table(rows: list[dict[str, Any]]) -> str:
    from torchshrink.measure.report import format_table

    body = [(r["layer"], r["option"], f"{r['bytes']:,}", f"{100 * r['bytes_share']:.1f}%", f"{r['error']:.3g}",
             f"{100 * r['error_share']:.1f}%") for r in rows]
    return format_table(("layer", "option", "bytes", "share", "error", "share"), body, right=(2, 3, 4, 5))

