"""The issue's "must show" experiments, run through the benchmark's own code with its quick
settings. Minutes of training each, so marked slow: `pytest -m slow tests/distill`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_distill.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_distill", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_distill"] = mod
    spec.loader.exec_module(mod)
    return mod


def _quiet(*_: Any) -> None:
    return None


@pytest.mark.slow
def test_hinton_distilled_students_make_fewer_errors(bench: ModuleType) -> None:
    res = bench.hinton(bench.QUICK, log=_quiet)
    assert res["test_samples"] == 1000
    for label in ("2x300", "2x30"):
        s = res["students"][label]
        assert len(s["hard_errors"]["runs"]) == 3 and len(s["distilled_errors"]["runs"]) == 3
        assert s["distilled_errors"]["mean"] < s["hard_errors"]["mean"], (label, s)
    # The teacher is the better model the students learn from.
    assert res["teacher"]["test_errors"] < res["students"]["2x30"]["hard_errors"]["mean"]


@pytest.mark.slow
def test_distillation_recovers_more_after_95pct_pruning(bench: ModuleType) -> None:
    res = bench.prune_recovery(bench.QUICK, log=_quiet)
    assert res["sparsity"] == pytest.approx(0.95, abs=1e-3)
    small = res["sets"]["500 labeled"]
    assert small["distilled_accuracy"]["mean"] > small["plain_accuracy"]["mean"], small
    assert small["plain_accuracy"]["mean"] > res["pruned_accuracy"]  # fine-tuning itself helps


@pytest.mark.slow
def test_half_depth_gpt_student_learns_more_with_teacher(bench: ModuleType) -> None:
    res = bench.gpt(bench.QUICK, log=_quiet)
    fresh = res["students"]["fresh"]
    assert fresh["distilled_val_loss"] < fresh["hard_val_loss"], fresh
    assert fresh["hard_val_loss"] < 0.5 * fresh["init_val_loss"]  # both students really trained
