"""`torchshrink report` and the --html option of compress, plan and demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchshrink.cli import main, run_demo


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_command(capsys: pytest.CaptureFixture[str], lenet_files: tuple[Path, Path], tmp_path: Path) -> None:
    base, small = lenet_files
    out = tmp_path / "r" / "report.html"
    code, text, err = run(capsys, "report", str(small), "--baseline", str(base), "--out", str(out),
                          "--batch", "1,4", "--runs", "3", "--json")
    assert code == 0, err
    got = json.loads(text)
    assert got["out"] == str(out) and out.is_file()
    assert got["bytes"] == small.stat().st_size == sum(got["streams"].values())
    assert [e["batch"] for e in got["energy"]] == [1, 4]
    assert all(e["ratio"] > 1 for e in got["energy"]) and got["energy"][0]["baseline"] == "before"
    assert "energy per inference at batch 1" in err and "x less" in err
    page = out.read_text()
    assert '<section id="energy">' in page and '<section id="layers">' in page


def test_report_command_errors(capsys: pytest.CaptureFixture[str], lenet_files: tuple[Path, Path],
                               tmp_path: Path) -> None:
    _, small = lenet_files
    code, _, err = run(capsys, "report", str(small), "--out", str(tmp_path))
    assert code == 2 and "error: --out" in err and "is a directory" in err
    code, _, err = run(capsys, "report", str(small), "--data", "mnist6k", "--out", str(tmp_path / "r.html"))
    assert code == 2 and "unknown data set 'mnist6k'" in err
    code, _, err = run(capsys, "report", str(tmp_path / "none.tsz"), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "report", str(small), "--out", str(tmp_path / "r.html"), "--sram-bytes", "-1")
    assert code == 2 and "--sram-bytes" in err
    assert not (tmp_path / "r.html").exists()


def test_compress_and_plan_write_html(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\nstages:\n  - method: magnitude_pruning\n    sparsity: 0.9\n"
                      "  - method: kmeans_sharing\n    bits: 4\n")
    page = tmp_path / "compress.html"
    code, text, err = run(capsys, "compress", "--model", "lenet300", "--data", "synthetic", "--epochs", "1",
                          "--recipe", str(recipe), "--out", str(tmp_path / "c.tsz"), "--html", str(page), "--quiet")
    assert code == 0, err
    html = page.read_text()
    assert "wrote the report page" in text
    for sid in ("summary", "layers", "streams", "energy", "stages", "recipe"):
        assert f'<section id="{sid}">' in html, sid
    assert "+ shared weights" in html and "+ coding (file)" in html        # the stage table's rows
    w4 = tmp_path / "w4.yaml"
    w4.write_text("stages:\n  - method: weight_only\n    bits: 4\n    group_size: null\n")
    page = tmp_path / "plan.html"
    code, text, err = run(capsys, "plan", "--model", "lenet300", "--data", "synthetic", "--epochs", "1",
                          "--max-bytes", "0.2", "--recipe", str(w4), "--html", str(page), "--quiet")
    assert code == 0, err
    html = page.read_text()
    assert '<section id="plan">' in html and "WeightOnly(bits=4, group_size=None)" in html
    code, _, err = run(capsys, "plan", "--model", "lenet300", "--data", "synthetic", "--max-bytes", "0.2",
                       "--html", str(tmp_path))
    assert code == 2 and "error: --html" in err


@pytest.mark.slow
def test_demo_writes_html(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\nstages:\n  - method: magnitude_pruning\n    sparsity: 0.9\n")
    page = tmp_path / "demo.html"
    result = run_demo(out_dir=tmp_path / "demo", epochs=1, recipe=str(recipe), progress=False, runs=3,
                      print_fn=lambda line: None, html=page)
    assert str(page) in result["files"]
    html = page.read_text()
    assert '<section id="stages">' in html and "magnitude_pruning" in html and "accuracy" in html
