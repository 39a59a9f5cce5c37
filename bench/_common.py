"""What the benchmark scripts share. `python bench/bench_x.py` puts this folder on sys.path, so
the scripts import it as `_common`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["table"]


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *,
          style: Literal["markdown", "plain"] = "markdown", title: str | None = None,
          float_format: str | None = None) -> str:
    """A text table with left-aligned columns as wide as their widest cell.

    style "markdown": `| a | b |` rows under a `|---|---|` rule; "plain": cells two spaces
    apart under a dashed rule. `title` is a line above the table; `float_format` (e.g. ".4g")
    formats float cells, which are otherwise written with str().
    """

    def cell(v: Any) -> str:
        return format(v, float_format) if float_format is not None and isinstance(v, float) else str(v)

    cells = [[cell(v) for v in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if style == "markdown":
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    else:
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
        rule = "  ".join("-" * w for w in widths)
    lines.insert(1, rule)
    if title is not None:
        lines.insert(0, title)
    return "\n".join(lines)
