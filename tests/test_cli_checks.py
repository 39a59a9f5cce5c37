"""Every bad input to the `torchshrink` command is one `error:` line and exit code 2, found
before any training starts (`ts.fit` is replaced by a function that fails the test)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

import torchshrink as ts
from torchshrink.cli import build_parser, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fit(*a: object, **k: object) -> None:
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(ts, "fit", fit)


@pytest.fixture()
def unwritable(tmp_path: Path) -> Path:
    """A directory nobody may create files in (root ignores permission bits, /sys does not)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    for candidate in (d, Path("/sys")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no unwritable directory on this machine")


@pytest.fixture()
def binary_recipe(tmp_path: Path) -> str:
    p = tmp_path / "recipe.yaml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    return str(p)


BASE = ("--model", "lenet300", "--data", "digits")


@pytest.mark.parametrize("command", [("train", *BASE, "--out", "x.tsz"),
                                     ("compress", *BASE, "--recipe", "deep_compression_lenet300", "--out", "x.tsz"),
                                     ("plan", *BASE, "--max-bytes", "0.5"), ("demo",)])
@pytest.mark.parametrize(("option", "value", "words"), [
    ("--lr", "-1", "argument --lr: must be a finite number > 0, got '-1'"),
    ("--lr", "nan", "argument --lr: must be a finite number > 0, got 'nan'"),
    ("--lr", "0", "argument --lr: must be a finite number > 0, got '0'"),
    ("--lr", "inf", "argument --lr: must be a finite number > 0, got 'inf'"),
    ("--epochs", "0", "argument --epochs: must be a positive integer, got '0'"),
    ("--batch-size", "-3", "argument --batch-size: must be a positive integer, got '-3'"),
    ("--batch-size", "1.5", "argument --batch-size: must be a positive integer, got '1.5'"),
])
def test_bad_numbers_are_rejected_while_parsing(capsys: pytest.CaptureFixture[str], no_training: None,
                                                command: tuple[str, ...], option: str, value: str,
                                                words: str) -> None:
    code, out, err = run(capsys, *command, option, value)
    assert code == 2 and out == ""
    one_error_line(err)
    assert words in err


@pytest.mark.parametrize("command", [("compress", *BASE, "--out", "x.tsz", "--recipe"),
                                     ("plan", *BASE, "--max-bytes", "0.5", "--recipe"), ("demo", "--recipe")])
def test_binary_recipe_is_one_error_line(capsys: pytest.CaptureFixture[str], no_training: None,
                                         binary_recipe: str, command: tuple[str, ...]) -> None:
    code, _, err = run(capsys, *command, binary_recipe)
    assert code == 2
    one_error_line(err)
    assert f"recipe file '{binary_recipe}' is not UTF-8 text (byte 0x89 at offset 0)" in err


def test_unknown_recipe_and_budget_fail_before_training(capsys: pytest.CaptureFixture[str],
                                                        no_training: None) -> None:
    code, _, err = run(capsys, "plan", *BASE, "--max-bytes", "0.5", "--recipe", "no_such_recipe")
    assert code == 2 and "recipe file 'no_such_recipe' not found" in err
    code, _, err = run(capsys, "plan", *BASE, "--max-bytes", "-0.5")
    assert code == 2 and "argument --max-bytes: must be a finite number > 0, got '-0.5'" in err
    code, _, err = run(capsys, "demo", "--recipe", "no_such_recipe")
    assert code == 2 and "recipe file 'no_such_recipe' not found" in err


@pytest.mark.parametrize("command", [
    ("train", *BASE, "--out", "{d}/x.tsz"),
    ("compress", *BASE, "--recipe", "deep_compression_lenet300", "--out", "{d}/x.tsz"),
    ("compress", *BASE, "--recipe", "deep_compression_lenet300", "--out", "{tmp}/x.tsz", "--report", "{d}/r.json"),
    ("plan", *BASE, "--max-bytes", "0.5", "--report", "{d}/r.json"),
    ("plan", *BASE, "--max-bytes", "0.5", "--plot", "{d}/sub/p.png"),
    ("demo", "--out", "{d}/demo"),
    ("compress", *BASE, "--recipe", "deep_compression_lenet300", "--out", "{tmp}/x.tsz", "--html", "{d}/r.html"),
    ("plan", *BASE, "--max-bytes", "0.5", "--html", "{d}/r.html"),
    ("demo", "--out", "{tmp}/demo", "--html", "{d}/r.html"),
    ("report", "{tmp}/x.tsz", "--out", "{d}/r.html"),
    ("export", "lenet300", "--out", "{d}/m.onnx"),
])
def test_unwritable_outputs_fail_before_any_work(capsys: pytest.CaptureFixture[str], no_training: None,
                                                 unwritable: Path, tmp_path: Path,
                                                 command: tuple[str, ...]) -> None:
    argv = [a.format(d=unwritable, tmp=tmp_path) for a in command]
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_error_line(err)
    assert "cannot write in directory" in err or "cannot create directory" in err
    assert str(unwritable) in err


def test_output_that_is_a_directory(capsys: pytest.CaptureFixture[str], no_training: None,
                                    tmp_path: Path) -> None:
    code, _, err = run(capsys, "train", *BASE, "--out", str(tmp_path))
    assert code == 2 and f"--out '{tmp_path}' is a directory; give a file name inside it" in err


def test_model_and_checkpoint_together(capsys: pytest.CaptureFixture[str], no_training: None,
                                       tmp_path: Path) -> None:
    ckpt = tmp_path / "b.tsz"
    ts.save(ts.models.create("lenet300", in_features=64), ckpt)
    for cmd in (("compress", "--recipe", "deep_compression_lenet300", "--out", str(tmp_path / "o.tsz")),
                ("plan", "--max-bytes", "0.5")):
        code, _, err = run(capsys, *cmd, "--data", "digits", "--model", "lenet300", "--checkpoint", str(ckpt))
        assert code == 2 and "argument --checkpoint: not allowed with argument --model" in err
        code, _, err = run(capsys, *cmd, "--data", "digits")
        assert code == 2 and "one of the arguments --model --checkpoint is required" in err
        code, _, err = run(capsys, *cmd, "--data", "digits", "--checkpoint", str(ckpt), "--epochs", "3")
        assert code == 2 and "--epochs set how the baseline trains, but --checkpoint loads one" in err


def test_every_subcommand_takes_json_and_the_batch_names_mean_one_thing() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices = sub.choices  # type: ignore[attr-defined]
    assert set(choices) == {"train", "eval", "inspect", "compress", "export", "bench", "plan", "report", "demo"}
    for name, p in choices.items():
        flags = {f for a in p._actions for f in a.option_strings}
        assert "--json" in flags, name
        assert ("--batch-size" in flags) == (name in ("train", "compress", "plan", "demo")), name
        assert ("--batch" in flags) == (name in ("bench", "plan", "report")), name
        assert "--batch-size is the training batch size" in p.format_help(), name
    assert {f for a in choices["demo"]._actions for f in a.option_strings} >= {"--out", "--out-dir"}


def _artifact(tmp_path: Path, **meta: object) -> str:
    path = tmp_path / "m.tsz"
    ts.save(ts.models.create("lenet300", in_features=64), path, metadata=meta)
    return str(path)


@pytest.mark.parametrize(("shape", "words"), [
    ([-1, 8, 8], "records input_shape [-1, 8, 8]; expected a list of 1 to 6 positive integers"),
    ([0], "records input_shape [0]; expected"),
    ("1x8x8", "records input_shape '1x8x8'; expected"),
    ([1.5, 8], "records input_shape [1.5, 8]; expected"),
    ([True, 64], "records input_shape [True, 64]; expected"),
    ([1] * 7, "expected a list of 1 to 6 positive integers"),
    ([100000, 100000, 100000], "(1,000,000,000,000,000 values per sample, limit 16,777,216)"),
    ([1, 5, 5], "LeNet300 failed on the example input of shape [1, 1, 5, 5]"),
])
def test_inspect_rejects_a_crafted_input_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               shape: object, words: str) -> None:
    code, out, err = run(capsys, "inspect", _artifact(tmp_path, input_shape=shape))
    assert code == 2 and out == ""
    one_error_line(err)
    assert words in err


def test_hostile_metadata_in_eval_and_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _artifact(tmp_path, data="digits", data_seed="abc")
    code, _, err = run(capsys, "eval", path)
    assert code == 2 and "records data_seed 'abc'; expected an integer in [0, 2**32)" in err
    path = _artifact(tmp_path, data=["digits"])
    code, _, err = run(capsys, "export", path, "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "records data ['digits']; expected a data set name" in err


def test_any_shrink_or_os_error_from_the_library_is_one_line(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    path = _artifact(tmp_path)

    def hostile(*a: object, **k: object) -> None:
        raise ts.ArtifactError("manifest value n_head=0 is out of range")

    monkeypatch.setattr(ts, "load", hostile)
    code, _, err = run(capsys, "inspect", path)
    assert (code, err) == (2, "error: manifest value n_head=0 is out of range\n")

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", "/x/y.tsz")

    monkeypatch.setattr(ts, "load", denied)
    code, _, err = run(capsys, "eval", path, "--data", "digits")
    assert (code, err) == (2, "error: cannot access '/x/y.tsz': Permission denied\n")


def test_train_creates_missing_directories(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "digits.tsz"
    code, _, _ = run(capsys, "train", *BASE, "--epochs", "1", "--lr", "0.01", "--batch-size", "64",
                     "--out", str(out), "--quiet")
    assert code == 0 and out.is_file()
    assert ts.read_info(out).metadata["train"]["batch_size"] == 64
    assert ts.read_info(out).metadata["train"]["lr"] == 0.01


def test_report_files_respect_the_umask(tmp_path: Path) -> None:
    from torchshrink.cli.paths import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "r.json", "{}", "--report")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert torch.__version__  # torch imported: the test runs in the suite's interpreter
