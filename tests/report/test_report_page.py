"""ts.report on a small compressed LeNet-300-100: every section, the numbers the page shows,
a self-contained page, output paths checked before any work, and the page without matplotlib."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import torchshrink as ts
import torchshrink.report as rep
from torchshrink.plan import Candidate, PlanResult
from torchshrink.report.streams import file_streams

SECTIONS = ("summary", "layers", "streams", "energy", "stages", "plan", "sensitivity", "recipe", "machine")


def _accuracy(loader: Any) -> Any:
    def accuracy(m: torch.nn.Module) -> float:
        return float(ts.evaluate(m, loader)["accuracy"])
    return accuracy


def _plan() -> PlanResult:
    base = Candidate("baseline (fp32)", {}, file_bytes=1_066_992, latency_ms=0.1, metric=97.0)
    a = Candidate("prune 0.9", {}, file_bytes=120_000, latency_ms=0.1, metric=96.5, meets_budget=True)
    b = Candidate("prune 0.95", {}, file_bytes=150_000, latency_ms=0.1, metric=96.0, meets_budget=True)
    c = Candidate("int4", {}, skipped="group size does not divide 300")
    return PlanResult(base, [a, b, c], a, None, {"max_bytes": 200_000.0, "max_latency": None})


@pytest.fixture(scope="module")
def page(lenet_files: tuple[Path, Path], labeled: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    base, small = lenet_files
    out = tmp_path_factory.mktemp("page") / "sub" / "report.html"   # missing directories are created
    stages = [{"stage": "dense fp32", "accuracy": 97.0, "bytes": 1_066_440},
              {"stage": "pruned", "accuracy": 96.8, "bytes": 120_000}]
    got = ts.report(small, before=base, out=out, example=labeled[0][0][:1], evaluate=_accuracy(labeled),
                    stages=stages, plan=_plan(), recipe="deep_compression_lenet300", batch_sizes=(1, 8), runs=3)
    assert got == out and out.is_file()
    return out.read_text()


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, flags=re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_every_section_is_there(page: str) -> None:
    for sid in SECTIONS:
        body = _section(page, sid)
        assert "<table>" in body or "<pre>" in body, sid
        assert f'href="#{sid}"' in page
    for sid in ("streams", "energy", "plan", "sensitivity"):
        assert re.search(r'<img class="plot" [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"',
                         _section(page, sid)), sid


def test_page_is_self_contained_and_phone_ready(page: str) -> None:
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count('<div class="scroll">') == page.count("<table>")   # every table pans on a phone


def test_numbers_on_the_page(page: str, lenet_files: tuple[Path, Path]) -> None:
    base, small = lenet_files
    summary = _section(page, "summary")
    for needle in ("bytes on disk", "resident bytes", "parameters", "nonzero parameters", "MACs per sample",
                   "latency ms, batch 1, 1 thread", "latency ms, batch 8, 1 thread", "IQR", "accuracy"):
        assert needle in summary, needle
    assert f"{small.stat().st_size:,}" in summary and f"{base.stat().st_size:,}" in summary
    layers = _section(page, "layers")
    assert "Table 2" in layers and "index bits" in layers and "of fp32" in layers
    assert re.search(r"<td>fc1</td><td class=\"num\">235,200</td><td>8\.0%</td><td class=\"num\">16</td>", layers)
    fs = file_streams(small)
    assert sum(fs.totals().values()) == small.stat().st_size               # every byte is in one stream
    zero = '<td class="num">0</td>'
    assert (f'<td>header / manifest</td>{zero * 4}<td class="num">{fs.header_bytes:,}</td>'
            in _section(page, "streams"))
    energy = _section(page, "energy")
    assert "Horowitz" in energy and "DRAM" in energy and "x less" in energy and "Assumptions" in energy
    plan = _section(page, "plan")
    assert "* prune 0.9" in plan and "group size does not divide 300" in plan
    assert "deep_compression_lenet300" in _section(page, "recipe")
    machine = _section(page, "machine")
    assert f"<td>{torch.__version__}</td>" in machine and "threads (latency)" in machine


def test_pareto_front() -> None:
    from torchshrink.report.sections import pareto_front

    pts = [{"name": n, "bytes": b, "metric": m} for n, b, m in
           (("a", 100, 90.0), ("b", 200, 95.0), ("c", 300, 94.0), ("d", 50, 80.0))]
    assert pareto_front(pts) == ["a", "b", "d"]


def test_streams_split_a_sparse_coded_tensor() -> None:
    from torchshrink.codec.encodings import TensorHint
    from torchshrink.codec.entropy_encodings import SparseAnsEncoding, SparseFixedEncoding
    from torchshrink.report.streams import _positions_bytes

    g = torch.Generator().manual_seed(0)
    t = torch.where(torch.rand(300, 784, generator=g) < 0.05, torch.randint(0, 16, (300, 784), generator=g), 16)
    t = t.to(torch.uint8)
    for enc in (SparseAnsEncoding(), SparseFixedEncoding()):
        got = enc.encode(t, TensorHint(module="fc1", tensor="x", key="fc1.x", is_index=True))
        assert got is not None
        pos = _positions_bytes(enc.name, got[0], torch.uint8)
        # ~5% kept: each position costs a few bits, each value ~4 bits; both are real parts
        assert 0.2 * len(got[0]) < pos < 0.8 * len(got[0]), (enc.name, pos, len(got[0]))


def test_without_baseline_energy_is_against_the_dense_equivalent(lenet_files: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    _, small = lenet_files
    data = rep.collect(small, latency=False, energy_batches=(1,))
    assert data.before is None and data.energy[0]["before_label"] == "dense fp32 equivalent"
    assert data.energy[0]["before"].total_pj == pytest.approx(171_862_890.0)
    out = rep.write_page(data, tmp_path / "r.html")
    assert "dense fp32 equivalent" in out.read_text()


def test_bad_out_path_fails_before_any_work(lenet_files: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, small = lenet_files

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("measured before checking the output path")

    monkeypatch.setattr(rep, "collect", boom)
    with pytest.raises(ts.ConfigError, match="is a directory; give a file name such as report.html"):
        ts.report(small, out=tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ts.ConfigError, match=r"out '.*a_file/r.html': cannot write in"):
        ts.report(small, out=blocker / "r.html")
    with pytest.raises(ts.ConfigError, match=r"energy_batches must be positive integers"):
        ts.report(small, out=tmp_path / "r.html", energy_batches=(0,))
    with pytest.raises(ts.ArtifactError, match="does not exist"):
        monkeypatch.undo()
        ts.report(tmp_path / "missing.tsz", out=tmp_path / "r.html")


def test_page_without_matplotlib_says_so(lenet_files: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    base, small = lenet_files
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib now raises ImportError
    text = ts.report(small, before=base, out=tmp_path / "r.html", latency=False, energy_batches=(1,)).read_text()
    assert "<img" not in text
    assert "matplotlib is not installed" in text and "pip install 'torchshrink[plot]'" in text
    assert "<table>" in _section(text, "energy")
