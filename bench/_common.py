"""What the benchmark scripts share. `python bench/bench_x.py` puts this folder on sys.path, so
the scripts import it as `_common`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["table", "trained_gpt_tiny"]


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


def trained_gpt_tiny(quick: bool) -> tuple[Any, list[Any], list[Any], str]:
    """(model, calibration batches, held-out batches, held-out text) of the small LM several
    benches quantize: gpt_tiny 2 x 64 trained 300 steps (60 with `quick`; batch 32 x 64 bytes,
    seed 0) on 120 kB of the stdlib corpus; 8 calibration batches of 16 x 64 from the training
    split, 4 held-out batches and 20 kB of text from the validation split."""
    import torch
    from torch.utils.data import DataLoader

    import torchshrink as ts
    from torchshrink.models.gpt import GPTConfig, GPTTiny

    splits = ts.data.load_text(max_bytes=120_000, block_size=64)
    train = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    base = GPTTiny(GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=64))
    ts.fit(base, train, max_steps=60 if quick else 300, lr=3e-3, warmup_steps=30, progress=False, seed=0)
    base.eval()
    calib = [splits.train[i * 16:(i + 1) * 16][0] for i in range(8)]
    held = [splits.val[i * 16:(i + 1) * 16][0] for i in range(4)]
    text = bytes(splits.val.tensors[0].reshape(-1)[:20_000].tolist()).decode("latin-1")
    return base, calib, held, text
