"""The report's sections, each a function from the collected data to an HTML fragment.

Every section is a `<section id=...>` with a heading, a table (numbers right-aligned, inside a
scrolling box so a phone can pan it) and, where it helps, a figure from `plots`."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from torchshrink.report import plots
from torchshrink.report.build import ReportData, Side
from torchshrink.report.streams import STREAMS

__all__ = ["SECTIONS", "pareto_front", "table"]


def _cell(v: Any) -> tuple[str, bool]:
    """(text, is_number) of a table cell."""
    if v is None:
        return "-", False
    if isinstance(v, bool):
        return ("yes" if v else "no"), False
    if isinstance(v, int):
        return f"{v:,}", True
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"
        return text, True
    return str(v), False


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for v in r:
            text, num = _cell(v)
            cells.append(f'<td class="num">{html.escape(text)}</td>' if num else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _join(*parts: str) -> str:
    return "".join(parts)


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def _ratio(b: float | None, a: float | None, smaller: str, larger: str) -> str:
    if b is None or a is None or not a or not b:
        return "-"
    r = b / a
    return "same" if abs(r - 1) < 1e-9 else (f"{r:.2f}x {smaller}" if r > 1 else f"{1 / r:.2f}x {larger}")


def summary(d: ReportData) -> str:
    a, b = d.after.measured, d.before.measured if d.before else None
    rows: list[list[Any]] = []

    def row(name: str, get: Any, smaller: str = "smaller", larger: str = "larger") -> None:
        va, vb = get(a), get(b) if b is not None else None
        rows.append([name, vb, va, _ratio(vb, va, smaller, larger)] if d.before else [name, va])

    if a.metric is not None:
        va, vb = a.metric, b.metric if b is not None else None
        rows.append([d.metric_name, vb, va, "-" if vb is None else f"{va - vb:+.2f}"] if d.before
                    else [d.metric_name, va])
    row("bytes on disk", lambda r: r.artifact_bytes)
    row("resident bytes (in memory)", lambda r: r.resident_bytes)
    row("dense fp32 bytes", lambda r: r.dense_bytes)
    row("parameters", lambda r: r.params)
    row("nonzero parameters", lambda r: r.nonzero_params, "fewer", "more")
    row("MACs per sample", lambda r: r.macs, "fewer", "more")
    after_runs = {(s.batch, s.threads): s for s in a.latency_runs}
    before_runs = {(s.batch, s.threads): s for s in b.latency_runs} if b is not None else {}
    for key in sorted(set(after_runs) | set(before_runs)):
        sa, sb = after_runs.get(key), before_runs.get(key)
        label = f"latency ms, batch {key[0]}, {key[1]} thread{'s' if key[1] != 1 else ''}"

        def fmt(s: Any) -> str | None:
            return None if s is None else f"{s.median_ms:.4f} (IQR {s.iqr_ms:.4f}, {s.min_ms:.4f}-{s.max_ms:.4f})"

        ratio = _ratio(sb.median_ms if sb else None, sa.median_ms if sa else None, "faster", "slower")
        rows.append([label, fmt(sb), fmt(sa), ratio] if d.before else [label, fmt(sa)])
    header = ["", "before", "after", "change"] if d.before else ["", "model"]
    runs = a.latency_runs[0] if a.latency_runs else None
    note = (f"latency: median of {runs.runs} runs after {runs.warmup} warm-up, with the interquartile range and "
            "the full range; compare only numbers from one run on one machine" if runs else "latency not measured")
    execs = sorted({r.execution for r in a.layers if r.execution != "dense"})
    parts = [table(header, rows), _p(note, "note")]
    if execs:
        parts.append(_p("how the compressed layers execute: " + "; ".join(execs), "note"))
    sources = [f"after: {d.after.source}"] + ([f"before: {d.before.source}"] if d.before else [])
    parts.append(_p("; ".join(sources), "note"))
    parts += [_p(n, "note") for n in d.notes]
    return _join(*parts)


def _layer_rows(side: Side) -> list[list[Any]]:
    out = []
    for r in side.layers:
        out.append([r["layer"], r["weights"], f"{r['kept_percent']:.1f}%", r["shared_values"],
                    f"{r['weight_bits']:.2f}", f"{r['index_bits']:.2f}" + (" *" if r["estimated"] else ""),
                    r["table_bytes"], r["bytes"], f"{r['share_percent']:.2f}%"])
    fs = side.streams
    dense = sum(int(r["dense_bytes"]) for r in side.layers)
    out.append(["file total", sum(int(r["weights"]) for r in side.layers), "", None, "", "", None, fs.file_bytes,
                f"{100 * fs.file_bytes / max(1, dense):.2f}%"])
    return out


def layers(d: ReportData) -> str:
    header = ["layer", "weights", "kept", "shared values", "weight bits", "index bits", "codebook+scale bytes",
              "bytes", "of fp32"]
    parts = [table(header, _layer_rows(d.after), caption="after (in the style of Deep Compression, Table 2)"),
             _p("bits are per kept weight, from the file's real bytes: weight bits are the value stream (biases "
                "left out), index bits the position stream; bytes include biases and tables; * marks a layer whose positions and values one entropy coder codes together "
                "(split by the entropy identity, see streams); the total row is the whole file, header included",
                "note")]
    if d.before:
        parts.append(table(header, _layer_rows(d.before), caption="before"))
    return _join(*parts)


def streams(d: ReportData) -> str:
    header = ["layer", *STREAMS[:4], "total"]
    rows = [[r.layer or "(root)", *[r.bytes.get(s, 0) for s in STREAMS[:4]], r.total] for r in d.after.streams.layers]
    rows.append(["header / manifest", 0, 0, 0, 0, d.after.streams.header_bytes])
    tot = d.after.streams.totals()
    rows.append(["file", *[tot[s] for s in STREAMS[:4]], d.after.streams.file_bytes])
    bars = [(r.layer, r.bytes) for r in d.after.streams.layers] + [("header", {"header": d.after.streams.header_bytes})]
    files = ([("before", d.before.streams.totals())] if d.before else []) + [("after", tot)]
    return _join(plots.layer_streams_plot(bars, "after: bytes per layer and stream"),
                    plots.file_streams_plot(files), table(header, rows))


def energy(d: ReportData) -> str:
    rows = []
    for r in d.energy:
        for label, e in ((r["before_label"], r["before"]), ("after", r["after"])):
            rows.append([r["batch"], label, e.stored_bytes, "SRAM" if e.weights_on_chip else "DRAM",
                         e.weight_pj / 1e6, e.activation_pj / 1e6, e.compute_pj / 1e6, e.total_uj])
        rows.append([r["batch"], "ratio", None, "", None, None, None,
                     f"{r['before'].total_pj / max(1e-12, r['after'].total_pj):.2f}x less"])
    header = ["batch", "model", "weight bytes", "weights from", "weights µJ", "activations µJ", "arithmetic µJ",
              "total µJ"]
    per_layer = [[e.name, e.precision, e.macs, e.effective_macs, e.stored_bits // 8, e.weight_pj / 1e6,
                  e.activation_pj / 1e6, e.compute_pj / 1e6] for e in d.energy[0]["after"].layers] if d.energy else []
    assumptions = "".join(f"<li>{html.escape(a)}</li>" for a in d.energy[0]["after"].assumptions) if d.energy else ""
    return _join(plots.energy_plot(d.energy), table(header, rows),
        f'<div class="assumptions"><h3>Assumptions</h3><ul>{assumptions}</ul></div>',
        table(["layer", "precision", "MACs", "MACs done", "weight bytes", "weights µJ", "activations µJ",
               "arithmetic µJ"], per_layer, caption=f"after, per layer, batch {d.energy[0]['batch']}")
        if per_layer else "")


def stages(d: ReportData) -> str:
    if not d.stages:
        return ""
    keys: list[str] = []
    for r in d.stages:
        keys += [k for k in r if k not in keys]
    return _join(table(keys, [[r.get(k) for k in keys] for r in d.stages]))


def pareto_front(points: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the candidates no other beats on both bytes (fewer) and metric (higher)."""
    front = []
    for p in points:
        if not any(q is not p and q["bytes"] <= p["bytes"] and q["metric"] >= p["metric"]
                   and (q["bytes"] < p["bytes"] or q["metric"] > p["metric"]) for q in points):
            front.append(p["name"])
    return front


def plan(d: ReportData) -> str:
    res = d.plan
    if res is None:
        return ""
    done = [c for c in [res.baseline, *res.candidates] if c.skipped is None and c.file_bytes and c.metric is not None]
    points = [{"name": c.name, "bytes": c.file_bytes, "metric": c.metric, "meets_budget": c.meets_budget,
               "best": res.best is not None and c is res.best, "baseline": c is res.baseline} for c in done]
    front = pareto_front(points)
    rows = [[("* " if res.best is not None and c is res.best else "") + c.name, c.file_bytes, c.latency_ms, c.metric,
             "baseline" if c is res.baseline else c.meets_budget, c.name in front, c.skipped]
            for c in [res.baseline, *res.candidates]]
    budget = ", ".join(f"{k} {v:,.4g}" for k, v in res.budget.items() if v is not None) or "none"
    return _join(plots.pareto_plot(points, front),
                    table(["recipe", "file bytes", "latency ms", "metric", "meets budget", "on the front", "skipped"],
                          rows), _p(f"budget: {budget}; * the chosen candidate", "note"))


def sensitivity(d: ReportData) -> str:
    if not d.sensitivity:
        return ""
    rows = [[r["layer"], r["metric"], f"{r['change']:+.2f}"] for r in d.sensitivity]
    return _join(plots.sensitivity_plot(d.sensitivity, d.metric_name),
                    table(["layer", d.metric_name, "change"], rows),
                    _p("each row: the baseline with only that layer's weight replaced by its compressed value",
                       "note"))


def recipe(d: ReportData) -> str:
    if not d.recipe_text:
        return ""
    return _join(f"<pre>{html.escape(d.recipe_text)}</pre>")


def machine(d: ReportData) -> str:
    return _join(table(["", ""], d.environment))


# (id, heading, fragment function); a function returns "" when the report has nothing for it.
SECTIONS = (
    ("summary", "Before and after", summary),
    ("layers", "Per layer", layers),
    ("streams", "Where the file's bytes go", streams),
    ("energy", "Energy per inference (estimate)", energy),
    ("stages", "Recipe stages", stages),
    ("plan", "Planner: candidates and Pareto front", plan),
    ("sensitivity", "Per-layer sensitivity", sensitivity),
    ("recipe", "Recipe", recipe),
    ("machine", "Machine and versions", machine),
)
