"""`torchshrink export` and `torchshrink bench`, in process."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import torchshrink as ts
from torchshrink import models
from torchshrink.cli import main
from torchshrink.export.onnx import OrtRunner


@pytest.fixture()
def artifact(tmp_path: Any) -> str:
    """A small LeNet-300-100 artifact that records its data set (digits, 8x8 inputs)."""
    torch.manual_seed(0)
    model = models.create("lenet300", in_features=64)
    path = f"{tmp_path}/lenet.tsz"
    ts.save(model, path, metadata={"data": "digits"})
    return path


def test_export_artifact_checks_on_its_data(artifact: str, tmp_path: Any, capsys: Any) -> None:
    out = f"{tmp_path}/lenet.onnx"
    assert main(["export", artifact, "--format", "onnx", "--out", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == out and report["format"] == "onnx"
    parity = report["parity"]
    assert parity["passed"] and parity["relative_error"] <= 1e-4
    # the artifact's test split was the check data: labels, so accuracy on both sides
    assert parity["accuracy_reference"] == parity["accuracy_exported"]
    assert parity["samples"] >= 64
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        want = ts.load(artifact).eval()(x).numpy()
    assert abs(OrtRunner(out)((x,))[0] - want).max() <= 1e-5


def test_export_starts_from_the_inference_form_and_keeps_codebooks_packed(tmp_path: Any, capsys: Any) -> None:
    torch.manual_seed(0)
    model = ts.cluster(ts.prune(models.create("lenet300", in_features=64), ts.MagnitudePruning(sparsity=0.9)),
                       ts.KMeansSharing(bits=4))
    path = f"{tmp_path}/dc.tsz"
    ts.save(model, path, metadata={"data": "digits"})
    sizes = {}
    for form in ("inference", "training"):
        out = f"{tmp_path}/{form}.onnx"
        assert main(["export", path, "--out", out, "--form", form, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["from_form"] == form and report["parity"]["passed"]
        sizes[form] = report["bytes"]
    assert sizes["inference"] <= 1.01 * sizes["training"]
    fp32 = 4 * sum(p.numel() for p in models.create("lenet300", in_features=64).parameters())
    assert sizes["inference"] < fp32 / 4


def test_export_pt2_from_suffix(artifact: str, tmp_path: Any, capsys: Any) -> None:
    out = f"{tmp_path}/lenet.pt2"
    assert main(["export", artifact, "--out", out]) == 0
    assert "pt2" in capsys.readouterr().out
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ts.load_pt2(out)(x), ts.load(artifact).eval()(x))


def test_export_errors_are_one_line(artifact: str, tmp_path: Any, capsys: Any) -> None:
    assert main(["export", artifact, "--format", "tensorrt", "--out", f"{tmp_path}/m.engine"]) == 2
    assert "unsupported export format 'tensorrt'; supported formats: onnx, pt2" in capsys.readouterr().err
    assert main(["export", artifact, "--out", f"{tmp_path}/m.engine"]) == 2
    assert (f"--out '{tmp_path}/m.engine': the suffix '.engine' does not name an export format; "
            "use .onnx (onnx) or .pt2 (pt2)") in capsys.readouterr().err
    assert main(["export", artifact, "--format", "onnx", "--out", f"{tmp_path}/m.pt2"]) == 2
    assert "the suffix '.pt2' does not name an export format; use .onnx for --format onnx" in capsys.readouterr().err
    assert main(["export", artifact, "--batch", "2", "--out", f"{tmp_path}/m.onnx"]) == 2
    assert "unrecognized arguments: --batch 2" in capsys.readouterr().err


def test_export_creates_missing_directories(artifact: str, tmp_path: Any, capsys: Any) -> None:
    out = tmp_path / "new" / "dir" / "m.onnx"
    assert main(["export", artifact, "--out", str(out), "--trace-batch", "3"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_bench_side_by_side(artifact: str, capsys: Any) -> None:
    code = main(["bench", artifact, "--runtime", "torch,onnxruntime", "--batch", "1,8", "--rounds", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    targets = [r["target"] for r in out["rows"]]
    # a thinner input than the reference model's: no fp32 baseline, the inference form beside it
    assert targets == [f"{t} b={b}" for b in (1, 8) for t in ("torch", "torch inference form", "onnxruntime")]
    for r in out["rows"]:
        assert r["runs"] == 2 * 3 and 0 < r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
    assert out["parity"]["passed"]


def test_bench_times_the_fp32_reference_and_the_inference_form(tmp_path: Any, capsys: Any) -> None:
    torch.manual_seed(0)
    pruned = ts.prune(models.create("lenet300"), ts.MagnitudePruning(sparsity=0.9))
    ts.save(pruned, f"{tmp_path}/p.tsz")
    assert main(["bench", f"{tmp_path}/p.tsz", "--runtime", "torch", "--batch", "1", "--rounds", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["target"] for r in rows] == ["torch fp32 baseline b=1", "torch b=1", "torch inference form b=1"]
    assert all(r["median_ms"] > 0 for r in rows)


def test_bench_rejects_unknown_runtime(artifact: str, capsys: Any) -> None:
    assert main(["bench", artifact, "--runtime", "tensorrt"]) == 2
    assert "unknown runtime 'tensorrt'; runtimes: torch, onnxruntime" in capsys.readouterr().err
    assert main(["bench", artifact, "--batch", "0"]) == 2
    assert "argument --batch: must be positive integers like 1,32, got '0'" in capsys.readouterr().err
