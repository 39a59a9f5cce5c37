"""What a plan returns: every measured candidate, the winner and its model; a joint search
adds the per-layer table, the Pareto front and the recipe that reproduces it."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["Candidate", "PlanResult"]


@dataclasses.dataclass
class Candidate:
    """One measured recipe. `skipped` holds the reason where the model could not take it."""

    name: str
    recipe: dict[str, Any]
    file_bytes: int | None = None
    latency_ms: float | None = None
    metric: float | None = None
    seconds: float = 0.0
    meets_budget: bool = False
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PlanResult:
    baseline: Candidate
    candidates: list[Candidate]
    best: Candidate | None
    model: nn.Module | None  # the best candidate's compressed model
    budget: dict[str, float | None]
    search: str = "menu"
    # joint search only: one row per layer (what it got, its bytes and error and their shares),
    # the bytes-vs-metric front of a budget sweep, the recipe that reproduces the plan, and
    # the wall time of each phase
    per_layer: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pareto: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    recipe: Any = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    database: Any = None  # the option database, to solve another budget: plan(..., database=)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"search": self.search, "baseline": self.baseline.to_dict(),
                               "candidates": [c.to_dict() for c in self.candidates],
                               "best": None if self.best is None else self.best.name, "budget": self.budget}
        if self.search != "menu":
            out.update(per_layer=self.per_layer, pareto=self.pareto, seconds=self.seconds,
                       recipe=None if self.recipe is None else self.recipe.to_dict())
        return out

    def table(self) -> str:
        """A markdown table: every candidate against the baseline, the chosen one marked."""
        from torchshrink.measure.report import format_table

        b = self.baseline
        rows = [("", "recipe", "file bytes", "smaller", "latency ms", "faster", "metric", "meets budget")]

        def ratio(a: float | None, c: float | None) -> str:
            return "-" if a is None or not c else f"{a / c:.2f}x"

        for c in [b, *self.candidates]:
            if c.skipped is not None:
                rows.append(("", c.name, "-", "-", "-", "-", "-", f"skipped: {c.skipped}"))
                continue
            mark = "*" if self.best is not None and c is self.best else ""
            rows.append((mark, c.name, f"{c.file_bytes:,}" if c.file_bytes is not None else "-",
                         ratio(b.file_bytes, c.file_bytes),
                         f"{c.latency_ms:.3f}" if c.latency_ms is not None else "-",
                         ratio(b.latency_ms, c.latency_ms),
                         f"{c.metric:.4g}" if c.metric is not None else "-",
                         "baseline" if c is b else ("yes" if c.meets_budget else "no")))
        return format_table(rows[0], rows[1:], right=(2, 3, 4, 5, 6))


    def plot(self, path: str | os.PathLike[str]) -> None:
        """File bytes (log scale) against the metric for every measured candidate, the
        baseline and the budget marked, the winner ringed; written as PNG (needs matplotlib:
        pip install 'torchshrink[plot]')."""
        try:
            import matplotlib

            matplotlib.use("Agg")  # no display needed
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ConfigError("PlanResult.plot needs matplotlib: pip install 'torchshrink[plot]'") from e
        done = [c for c in self.candidates if c.skipped is None and c.file_bytes and c.metric is not None]
        def xy(c: Candidate) -> tuple[float, float]:
            return float(c.file_bytes or 0), float(c.metric if c.metric is not None else float("nan"))

        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
        for i, c in enumerate(done, 1):
            ax.scatter(*xy(c), color="tab:green" if c.meets_budget else "tab:gray", zorder=3)
            ax.annotate(str(i), xy(c), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.scatter(*xy(self.baseline), marker="s", color="tab:blue", label="baseline", zorder=3)
        if self.best is not None:
            ax.scatter(*xy(self.best), s=220, facecolors="none", edgecolors="tab:red", linewidths=1.5,
                       label="chosen", zorder=4)
        if self.budget.get("max_bytes") is not None:
            ax.axvline(float(self.budget["max_bytes"]), color="tab:red", linestyle="--", linewidth=1,  # type: ignore[arg-type]
                       label="byte budget")
        ax.set_xscale("log")
        ax.set_xlabel("file bytes (log scale)")
        ax.set_ylabel("metric (higher is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        key = "\n".join(f"{i}: {c.name}" + ("" if c.meets_budget else " (over budget)") for i, c in enumerate(done, 1))
        fig.text(0.01, -0.02, key, fontsize=7, va="top", family="monospace")
        ax.set_title("ts.plan: every candidate measured (green: within budget)")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
