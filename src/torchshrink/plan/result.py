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
    # joint search: the cost model's prediction for this plan before its file was measured
    predicted: dict[str, float] = dataclasses.field(default_factory=dict)

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
    refinements: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # local searches run
    # per verified plan: predicted vs measured costs and the corrections made (plan.calibrate)
    calibration: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"search": self.search, "baseline": self.baseline.to_dict(),
                               "candidates": [c.to_dict() for c in self.candidates],
                               "best": None if self.best is None else self.best.name, "budget": self.budget}
        if self.search != "menu":
            out.update(per_layer=self.per_layer, pareto=self.pareto, seconds=self.seconds,
                       refinements=self.refinements,
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

    def plot_pareto(self, path: str | os.PathLike[str], *, title: str | None = None) -> None:
        """The joint search's fronts as PNG: one panel per swept budget (file bytes, latency),
        the measured metric of the verified points against their measured cost (solid), the
        DP's predicted error of every point on a second axis (dashed), the baseline and the
        chosen plan marked. Needs matplotlib: pip install 'torchshrink[plot]'."""
        if not self.pareto:
            raise ConfigError("this plan has no Pareto front: run ts.plan(search='joint', pareto_points=8)")
        try:
            import matplotlib

            matplotlib.use("Agg")  # no display needed
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ConfigError("PlanResult.plot_pareto needs matplotlib: pip install 'torchshrink[plot]'") from e
        axes_present = [a for a in ("bytes", "latency_ms") if any(p.get("axis", "bytes") == a for p in self.pareto)]
        fig, panels = plt.subplots(1, len(axes_present), figsize=(6.2 * len(axes_present), 4.2), dpi=120,
                                   squeeze=False)
        for ax, axis in zip(panels[0], axes_present):
            rows = [p for p in self.pareto if p.get("axis", "bytes") == axis]
            measured_key = "file_bytes" if axis == "bytes" else "latency_ms"
            done = sorted((float(p[measured_key]), float(p["metric"])) for p in rows
                          if p.get(measured_key) is not None and p.get("metric") is not None)
            if done:
                ax.plot(*zip(*done), "o-", color="tab:green", label="verified plans (measured)")
            b = self.baseline
            base_x = b.file_bytes if axis == "bytes" else b.latency_ms
            if base_x is not None and b.metric is not None:
                ax.scatter([base_x], [b.metric], marker="s", color="tab:blue", label="fp32 (as given)", zorder=3)
            best = self.best
            best_x = None if best is None else (best.file_bytes if axis == "bytes" else best.latency_ms)
            if best is not None and best_x is not None and best.metric is not None:
                ax.scatter([best_x], [best.metric], s=200, facecolors="none", edgecolors="tab:red", linewidths=1.5,
                           label="chosen plan", zorder=4)
            limit = self.budget.get("max_bytes" if axis == "bytes" else "max_latency_ms")
            if limit is not None:
                ax.axvline(float(limit), color="tab:red", linestyle="--", linewidth=1, label="budget")
            twin = ax.twinx()
            pred = sorted((float(p["predicted"] if "predicted" in p else p["predicted_bytes"]),
                           float(p["predicted_error"])) for p in rows if p.get("feasible"))
            if pred:
                twin.plot(*zip(*pred), "x--", color="tab:gray", label="DP predicted error")
            twin.set_ylabel("predicted error (sum over layers)", color="tab:gray")
            ax.set_xscale("log")
            ax.set_xlabel("file bytes (log)" if axis == "bytes" else "latency ms, inference form (log)")
            ax.set_ylabel("metric (higher is better)")
            ax.grid(True, which="both", alpha=0.3)
            handles = ax.get_legend_handles_labels()
            more = twin.get_legend_handles_labels()
            ax.legend(handles[0] + more[0], handles[1] + more[1], loc="lower right", fontsize=7)
        fig.suptitle(title or "ts.plan(search='joint'): Pareto fronts")
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)

