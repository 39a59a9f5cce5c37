"""The `torchshrink` command, run in-process through `main([...])`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchshrink.cli import main, run_demo

needs_artifact = pytest.mark.skipif(importlib.util.find_spec("torchshrink.codec.container") is None,
                                    reason="the artifact container (ts.save/ts.load) is not in this checkout")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("name", "params", "macs"), [("lenet300", 266_610, 266_200),
                                                      ("lenet5", 431_080, 2_293_000)])
def test_inspect_reference_model_json(capsys: pytest.CaptureFixture[str], name: str, params: int,
                                      macs: int) -> None:
    code, out, _ = run(capsys, "inspect", name, "--json")
    assert code == 0
    d = json.loads(out)
    assert (d["params"], d["macs"], d["dense_bytes"]) == (params, macs, 4 * params)
    assert d["nonzero_params"] <= params
    assert d["source"] == "model"
    assert [row["name"] for row in d["layers"]][:2] in (["fc1", "fc2"], ["conv1", "conv2"])


def test_inspect_text_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "lenet5")
    assert code == 0
    for needle in ("431,080", "2,293,000", "conv2", "execution", "dense"):
        assert needle in out


def test_unknown_model_name_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "lenet3")
    assert code == 2 and out == ""
    assert err.startswith("error: unknown model 'lenet3'. Did you mean 'lenet300'")
    assert "Traceback" not in err and err.count("\n") == 1
    code, _, err = run(capsys, "train", "--model", "resnet", "--data", "synthetic", "--out", "x.tsz")
    assert code == 2 and "unknown model 'resnet'. Did you mean 'resnet_small'" in err


def test_unknown_data_name_suggests(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "train", "--model", "lenet300", "--data", "mnist", "--out", str(tmp_path / "x"))
    assert code == 2
    assert err.startswith("error: unknown data set 'mnist'. Did you mean")
    assert "mnist5k" in err


@needs_artifact
def test_non_artifact_file_is_a_clean_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello, this is not a model\n")
    for argv in (("inspect", str(junk)), ("eval", str(junk), "--data", "digits")):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert err.startswith("error: ") and "is not a readable torchshrink artifact" in err
        assert "Traceback" not in err
    code, _, err = run(capsys, "eval", str(tmp_path / "missing.tsz"), "--data", "digits")
    assert code == 2 and "does not exist" in err


@needs_artifact
def test_truncated_artifact_is_a_clean_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torchshrink as ts

    good = tmp_path / "good.tsz"
    ts.save(ts.models.create("lenet300"), good)
    cut = tmp_path / "cut.tsz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for argv in (("inspect", str(cut)), ("eval", str(cut), "--data", "digits")):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert err.startswith("error: ") and "truncated" in err and "Traceback" not in err


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for sub in ("train", "eval", "inspect", "demo"):
        assert sub in top
        assert main([sub, "--help"]) == 0
        assert "usage: torchshrink " + sub in capsys.readouterr().out


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "lenet300"]) == 2  # --data and --out missing
    assert "required" in capsys.readouterr().err
    assert main([]) == 2


@needs_artifact
def test_train_then_eval_reproduces_accuracy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "digits.tsz"
    code, text, _ = run(capsys, "train", "--model", "lenet300", "--data", "digits", "--epochs", "2",
                        "--out", str(out), "--json", "--quiet")
    assert code == 0
    trained = json.loads(text)
    # Two epochs on digits land well short of 100%, so exact agreement is a real check.
    assert 20.0 < trained["accuracy"] < 100.0
    assert trained["bytes"] == out.stat().st_size
    code, text, _ = run(capsys, "eval", str(out), "--data", "digits", "--json")
    assert code == 0
    evaluated = json.loads(text)
    assert evaluated["accuracy"] == trained["accuracy"]
    assert evaluated["trained_accuracy"] == trained["accuracy"]
    assert evaluated["bytes"] == trained["bytes"]
    # The file records its data set, so --data is optional.
    code, text, _ = run(capsys, "eval", str(out), "--json")
    assert code == 0 and json.loads(text)["accuracy"] == trained["accuracy"]

    # A model trained on 8x8 digits cannot run on 28x28 images: a clear error, not a traceback.
    code, _, err = run(capsys, "eval", str(out), "--data", "synthetic")
    assert code == 2 and "cannot run on data set 'synthetic' (inputs of shape (1, 28, 28))" in err

    code, text, _ = run(capsys, "inspect", str(out), "--json")
    assert code == 0
    d = json.loads(text)
    assert d["source"] == "file"
    assert d["bytes"] == out.stat().st_size == d["artifact_bytes"]
    assert d["params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert d["macs"] == 64 * 300 + 300 * 100 + 100 * 10
    assert d["manifest"]["metadata"]["data"] == "digits"
    assert d["manifest"]["metadata"]["test_accuracy"] == trained["accuracy"]


def test_model_data_shape_mismatch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "train", "--model", "lenet5", "--data", "digits", "--out", str(tmp_path / "x"))
    assert code == 2
    assert "expects inputs of shape (1, 28, 28) but the data has (1, 8, 8)" in err


def test_python_dash_m_entry_point() -> None:
    # One process (interpreter start-up with torch is the slow part): the error path proves the
    # entry point runs main() and turns a ShrinkError into exit code 2.
    proc = subprocess.run([sys.executable, "-m", "torchshrink", "inspect", "lenet_300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'lenet_300'") and "Traceback" not in proc.stderr


@pytest.mark.slow
@needs_artifact
@pytest.mark.parametrize(("name", "floor"), [("lenet300", 95.0), ("lenet5", 97.0)])
def test_cli_trains_lenets_on_mnist5k(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str,
                                      floor: float) -> None:
    out = tmp_path / f"{name}.tsz"
    code, text, _ = run(capsys, "train", "--model", name, "--data", "mnist5k", "--out", str(out), "--json",
                        "--quiet")
    assert code == 0
    trained = json.loads(text)
    assert trained["accuracy"] >= floor
    code, text, _ = run(capsys, "eval", str(out), "--data", "mnist5k", "--json")
    assert json.loads(text)["accuracy"] == trained["accuracy"]


@needs_artifact
def test_demo_logic_with_a_tiny_recipe(tmp_path: Path) -> None:
    """run_demo end to end with 1 training epoch and a one-stage recipe (no fine-tuning)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\nstages:\n  - method: magnitude_pruning\n    sparsity: 0.9\n")
    lines: list[str] = []
    result = run_demo(out_dir=tmp_path / "demo", epochs=1, recipe=str(recipe), progress=False, runs=5,
                      print_fn=lines.append)
    before, after = result["before"], result["after"]
    assert result["compression"] == f"recipe {recipe}"
    assert before.params == after.params == 266_610
    assert after.nonzero_params < 0.2 * before.nonzero_params
    assert after.artifact_bytes < before.artifact_bytes
    assert 10.0 < after.metric <= 100.0 and before.metric_name == "accuracy"
    text = "\n".join(lines)
    for needle in ("fp32 baseline", "compressed", "bytes on disk", "nonzero params", "MACs per sample",
                   "latency ms (batch 1, 1 thr)", "accuracy"):
        assert needle in text
    assert all(Path(f).is_file() for f in result["files"])


def test_plan_picks_a_recipe_within_budget_and_writes_it(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    a, b = tmp_path / "w8.yaml", tmp_path / "w4.yaml"
    a.write_text("stages:\n  - method: weight_only\n    bits: 8\n    group_size: null\n")
    b.write_text("stages:\n  - method: weight_only\n    bits: 4\n    group_size: null\n")
    out, report = tmp_path / "best.tsz", tmp_path / "plan.json"
    code, text, _ = run(capsys, "plan", "--model", "lenet300", "--data", "synthetic", "--epochs", "1",
                        "--max-bytes", "0.2", "--recipe", str(a), "--recipe", str(b), "--out", str(out),
                        "--report", str(report), "--quiet")
    assert code == 0, text
    data = json.loads(report.read_text())
    assert data["best"] == "WeightOnly(bits=4, group_size=None)"  # int8 is ~0.25 of fp32: over budget
    assert out.is_file() and "read back from the file" in text
    assert data["best_test_accuracy_from_file"] >= 0


def test_plan_without_a_budget_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--model", "lenet300", "--data", "synthetic")
    assert code == 2 and "give a budget: --max-bytes and/or --max-latency" in err


@pytest.mark.slow
def test_plan_joint_writes_a_file_in_budget_and_its_recipe(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, report, recipe = tmp_path / "joint.tsz", tmp_path / "plan.json", tmp_path / "plan.yaml"
    code, text, _ = run(capsys, "plan", "--model", "lenet300", "--data", "synthetic", "--epochs", "1",
                        "--max-bytes", "0.05", "--search", "joint", "--out", str(out), "--report", str(report),
                        "--recipe-out", str(recipe), "--quiet")
    assert code == 0, text
    data = json.loads(report.read_text())
    assert data["search"] == "joint" and len(data["per_layer"]) == 3
    assert out.stat().st_size <= data["budget"]["max_bytes"]
    assert "per layer:" in text and "read back from the file" in text
    import torchshrink as ts

    assert len(ts.load_recipe(str(recipe)).stages) >= 1


def test_plan_joint_only_flags_need_search_joint(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--model", "lenet300", "--data", "synthetic", "--max-bytes", "0.1",
                       "--finetune", "2")
    assert code == 2 and "--finetune belong to the joint search: add --search joint" in err
