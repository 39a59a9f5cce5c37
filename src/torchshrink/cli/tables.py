"""The Deep Compression tables: the per-layer table (the paper's Table 2) of an artifact and
the stage table (its Table 7: pruned, + shared weights, + coding) of a compression run."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["dense_bytes", "inspect_table", "layer_rows", "layer_table", "paper_style_bits", "stage_rows",
           "stage_table"]


def _weight(m: nn.Module) -> torch.Tensor:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters stored as dense fp32 (the paper's baseline size)."""
    return sum(p.numel() for p in model.parameters()) * 4


# --------------------------------------------------------------------------------------------
# per-layer table (the paper's Table 2 / Table 3)


def _layer_records(info: Any) -> dict[str, int]:
    """Stored payload bytes per module (all tensors whose key starts with the module name)."""
    out: dict[str, int] = {}
    for r in info.tensors:
        key = r.key
        module = key.split(".parametrizations.")[0] if ".parametrizations." in key else key.rpartition(".")[0]
        out[module] = out.get(module, 0) + r.nbytes
    return out


def _split_bits(indices: np.ndarray, k: int) -> tuple[int, int]:
    """(value bytes, position bytes) of a codebook index tensor coded as sparse gaps + values
    (the `sparse_ans` layout), so the table can say what positions and values cost."""
    from torchshrink.codec import sparse
    from torchshrink.codec.entropy_encodings import Writer, _write_ans

    flat = indices.reshape(-1).astype(np.int64)
    pos = np.flatnonzero(flat != k)
    if pos.size == 0:
        return 0, 0
    cap = sparse.best_cap(pos)
    gw = Writer()
    _write_ans(gw, sparse.escaped_gaps(pos, cap), cap + 1)
    vw = Writer()
    _write_ans(vw, flat[pos], k)
    return len(vw.bytes()), len(gw.bytes())


def layer_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per weight layer of an artifact: weights, percent kept, bits per kept weight for
    values and for positions, and the layer's stored share of its dense fp32 size."""
    import torchshrink as ts
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.nn import params, select_layers

    info = ts.read_info(path)
    model = ts.load(path)
    stored = _layer_records(info)
    rows: list[dict[str, Any]] = []
    for name, m in select_layers(model):
        w = _weight(m)
        n = w.numel()
        nz = int((w != 0).sum())
        bias = getattr(m, "bias", None)
        dense = (n + (bias.numel() if isinstance(bias, torch.Tensor) else 0)) * 4
        cb = params.find(m, Codebook)
        stored_bytes = stored.get(name, 0)
        if cb is not None:
            vb, pb = _split_bits(cb.indices.cpu().numpy(), cb.k)
            weight_bits = 8 * vb / max(1, nz)
            index_bits = 8 * pb / max(1, nz)
            shared = cb.k
        else:
            weight_bits = 8 * stored_bytes / max(1, nz)
            index_bits = 0.0
            shared = None
        rows.append({"layer": name, "weights": n, "kept_percent": 100 * nz / max(1, n), "shared_values": shared,
                     "weight_bits": weight_bits, "index_bits": index_bits, "stored_bytes": stored_bytes,
                     "dense_bytes": dense, "share_percent": 100 * stored_bytes / max(1, dense)})
    total_dense = sum(int(r["dense_bytes"]) for r in rows)
    total_w = sum(int(r["weights"]) for r in rows)
    total_nz = sum(float(r["weights"]) * float(r["kept_percent"]) / 100 for r in rows)
    rows.append({"layer": "total (file)", "weights": total_w, "kept_percent": 100 * total_nz / max(1, total_w),
                 "shared_values": None, "weight_bits": None, "index_bits": None, "stored_bytes": info.file_bytes,
                 "dense_bytes": total_dense, "share_percent": 100 * info.file_bytes / max(1, total_dense),
                 "header_bytes": info.header_bytes})
    return rows


def layer_table(path: str | os.PathLike[str], rows: list[dict[str, Any]] | None = None) -> str:
    """The per-layer table, formatted like Deep Compression's Table 2."""
    rows = rows if rows is not None else layer_rows(path)
    head = f"{'layer':<14}{'weights':>9}{'kept':>8}{'k':>4}{'weight bits':>12}{'index bits':>11}" \
           f"{'bytes':>9}{'of fp32':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        k = "" if r["shared_values"] is None else str(r["shared_values"])
        wb = "" if r["weight_bits"] is None else f"{r['weight_bits']:.2f}"
        ib = "" if r["index_bits"] is None else f"{r['index_bits']:.2f}"
        lines.append(f"{r['layer']:<14}{r['weights']:>9,}{r['kept_percent']:>7.1f}%{k:>4}{wb:>12}{ib:>11}"
                     f"{r['stored_bytes']:>9,}{r['share_percent']:>8.2f}%")
    total = rows[-1]
    lines.append(f"(bits are per kept weight, from the sparse split of the coded indices; the total row is the "
                 f"whole file, header {total.get('header_bytes', 0):,} B included; "
                 f"ratio {total['dense_bytes'] / max(1, total['stored_bytes']):.1f}x)")
    return "\n".join(lines)


def inspect_table(path: str | os.PathLike[str]) -> str:
    """The per-layer table for `torchshrink inspect`; never fails the command it decorates."""
    try:
        return layer_table(path)
    except Exception as e:  # noqa: BLE001 - an extra table must not break inspect
        return f"(no per-layer table: {type(e).__name__}: {e})"


# --------------------------------------------------------------------------------------------
# stage table (the paper's Table 7: pruned, + shared weights, + coding)


def paper_style_bits(model: nn.Module) -> int:
    """Bits of the model stored the way the paper counts before entropy coding: per weight layer,
    kept weights at fp32 (or `bits`-bit codebook indices plus the codebook) with fixed-width
    relative positions (best width, fillers counted) when sparse, biases at fp32."""
    from torchshrink.cluster.codebook import Codebook
    from torchshrink.codec import sparse
    from torchshrink.nn import params, select_layers

    total = 0
    for p in model.parameters():
        total += 32 * p.numel()  # start dense; weight layers are corrected below
    for _, m in select_layers(model):
        w = _weight(m)
        cb = params.find(m, Codebook)
        total -= 32 * w.numel()
        if cb is not None:
            total -= 32 * cb.k  # the codebook was counted as a parameter
            value_bits = max(1, math.ceil(math.log2(max(2, cb.k))))
            extra = 32 * cb.k
        else:
            value_bits, extra = 32, 0
        flat = w.reshape(-1).cpu().numpy()
        pos = np.flatnonzero(flat != 0)
        dense_cost = w.numel() * value_bits
        best = dense_cost
        if pos.size < flat.size:
            for gb in range(1, 13):
                gaps, _ = sparse.fixed_gaps(pos, gb)
                best = min(best, gaps.size * (gb + value_bits))
        total += best + extra
    return total


def stage_rows(baseline_model_bytes: int, baseline_metric: float | None, stages: list[dict[str, Any]],
               final: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"stage": "dense fp32", "accuracy": baseline_metric, "bytes": baseline_model_bytes,
             "ratio": 1.0, "how": "4 bytes per parameter"}]
    for s in stages:
        rows.append({"stage": s["label"], "accuracy": s["metric"], "bytes": s["paper_bytes"],
                     "ratio": baseline_model_bytes / max(1, s["paper_bytes"]),
                     "how": "fixed-width positions, values at index width (no entropy coding)"})
    rows.append({"stage": "+ coding (file)", "accuracy": final["accuracy"], "bytes": final["bytes"],
                 "ratio": baseline_model_bytes / max(1, final["bytes"]),
                 "how": "the .tsz file read back, every header byte included"})
    return rows


def stage_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'stage':<22}{'accuracy':>10}{'bytes':>11}{'ratio':>9}  how counted"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f}%"
        lines.append(f"{r['stage']:<22}{acc:>10}{r['bytes']:>11,}{r['ratio']:>8.1f}x  {r['how']}")
    return "\n".join(lines)
