"""The report's figures, drawn with matplotlib (the `[plot]` extra) and inlined as base64 PNG,
so the page needs neither the network nor JavaScript. Without matplotlib every figure becomes
a short note saying how to get it; the tables carry the same numbers."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COLORS", "available", "energy_plot", "figure", "file_streams_plot", "layer_streams_plot",
           "missing_note", "pareto_plot", "sensitivity_plot"]

COLORS = {"values": "#4c72b0", "positions": "#dd8452", "codebooks": "#55a868", "scales": "#c44e52",
          "header": "#8172b3", "weights": "#4c72b0", "activations": "#55a868", "arithmetic": "#dd8452"}
_DPI = 110


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def missing_note(what: str) -> str:
    return (f'<p class="note">({html.escape(what)}: not drawn, matplotlib is not installed; '
            "<code>pip install 'torchshrink[plot]'</code>. The table holds the same numbers.)</p>")


def figure(what: str, draw: Callable[[Any], None], size: tuple[float, float]) -> str:
    """`draw(fig)` on a new figure, returned as an inline <img>, or the note without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display
        import matplotlib.pyplot as plt
    except ImportError:
        return missing_note(what)
    fig = plt.figure(figsize=size, dpi=_DPI)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    w, h = round(size[0] * _DPI), round(size[1] * _DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="plot" alt="{html.escape(what)}" width="{w}" height="{h}" '
            f'src="data:image/png;base64,{data}">')


def layer_streams_plot(layers: Sequence[tuple[str, dict[str, int]]], title: str) -> str:
    """Horizontal stacked bars: each layer's bytes by stream (the header as its own row)."""
    streams = [s for s in ("values", "positions", "codebooks", "scales", "header")
               if any(b.get(s, 0) for _, b in layers)]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        names = [n or "(root)" for n, _ in layers][::-1]
        left = [0.0] * len(names)
        for s in streams:
            vals = [float(b.get(s, 0)) for _, b in layers][::-1]
            ax.barh(names, vals, left=left, color=COLORS[s], label=s)
            left = [a + v for a, v in zip(left, vals)]
        for i, total in enumerate(left):
            ax.annotate(f"{total:,.0f} B", (total, i), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_xlim(0, max(left or [1]) * 1.25)
        ax.set_xlabel("bytes in the file")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)

    return figure(title, draw, (7.0, 0.9 + 0.45 * len(layers)))


def file_streams_plot(files: Sequence[tuple[str, dict[str, int]]]) -> str:
    """One 100% bar per file: the share of each stream, total bytes written beside it."""
    title = "share of each file's bytes by stream"

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        names = [n for n, _ in files][::-1]
        totals = [max(1, sum(t.values())) for _, t in files][::-1]
        left = [0.0] * len(files)
        for s in ("values", "positions", "codebooks", "scales", "header"):
            vals = [100.0 * t.get(s, 0) / tot for (_, t), tot in zip(files[::-1], totals)]
            if not any(vals):
                continue
            ax.barh(names, vals, left=left, color=COLORS[s], label=s)
            left = [a + v for a, v in zip(left, vals)]
        for i, tot in enumerate(totals):
            ax.annotate(f"{tot:,} B", (100, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_xlim(0, 125)
        ax.set_xlabel("percent of the file")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.45, -0.45), frameon=False)

    return figure(title, draw, (7.0, 1.9 + 0.4 * len(files)))


def energy_plot(rows: Sequence[dict[str, Any]]) -> str:
    """Per batch size, before and after energy per inference, split into weight traffic,
    activations and arithmetic."""
    title = "energy per inference (45 nm model)"

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(rows), squeeze=False)[0]
        for ax, r in zip(axes, rows):
            labels = [r["before_label"], "after"]
            ests = [r["before"], r["after"]]
            bottom = [0.0, 0.0]
            for part, attr in (("weights", "weight_pj"), ("activations", "activation_pj"),
                               ("arithmetic", "compute_pj")):
                vals = [getattr(e, attr) / 1e6 for e in ests]
                ax.bar(labels, vals, bottom=bottom, color=COLORS[part], label=part)
                bottom = [a + v for a, v in zip(bottom, vals)]
            for i, tot in enumerate(bottom):
                ax.annotate(f"{tot:.3g} µJ", (i, tot), xytext=(0, 2), textcoords="offset points", ha="center",
                            fontsize=8)
            ax.set_ylim(0, max(bottom) * 1.18)
            ratio = ests[0].total_pj / max(1e-12, ests[1].total_pj)
            ax.set_title(f"batch {r['batch']}: {ratio:.1f}x less", fontsize=10)
            ax.set_ylabel("µJ per inference")
            ax.tick_params(axis="x", labelsize=8)
        axes[0].legend(fontsize=8)
        fig.suptitle(title, fontsize=10)

    return figure(title, draw, (3.4 * max(1, len(rows)), 3.4))


def pareto_plot(points: Sequence[dict[str, Any]], front: Sequence[str]) -> str:
    """File bytes (log) against the metric for the planner's candidates, the front joined."""
    title = "planner candidates: bytes against metric (Pareto front joined)"

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for p in points:
            color = "tab:blue" if p["baseline"] else ("tab:green" if p["meets_budget"] else "tab:gray")
            ax.scatter(p["bytes"], p["metric"], color=color, zorder=3, s=60 if p["best"] else 25,
                       edgecolors="tab:red" if p["best"] else "none", linewidths=1.5)
            ax.annotate(p["name"], (p["bytes"], p["metric"]), xytext=(4, 3), textcoords="offset points", fontsize=7)
        fr = sorted((p for p in points if p["name"] in front), key=lambda p: p["bytes"])
        ax.plot([p["bytes"] for p in fr], [p["metric"] for p in fr], color="tab:red", linewidth=1, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("file bytes (log scale)")
        ax.set_ylabel("metric")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title, fontsize=10)

    return figure(title, draw, (7.0, 4.0))


def sensitivity_plot(rows: Sequence[dict[str, Any]], metric: str) -> str:
    title = f"{metric} change when only one layer is compressed"

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        names = [r["layer"] for r in rows][::-1]
        vals = [r["change"] for r in rows][::-1]
        ax.barh(names, vals, color=["#c44e52" if v < 0 else "#55a868" for v in vals])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"{metric} change (points)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)

    return figure(title, draw, (7.0, 0.9 + 0.4 * len(rows)))
