"""`format="web"`: the folder's files, inputs.json's rules and the errors, without a browser
(test_web_slow.py runs the page in headless Chromium). A stand-in onnxruntime-web package
(its package.json and three dist files) keeps these tests off npm."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchshrink as ts
from torchshrink import models
from torchshrink.cli import main
from torchshrink.export.onnx import OrtRunner
from torchshrink.export.web import ORT_WEB_FILES, find_ort_web, read_inputs, write_inputs


@pytest.fixture()
def ort_web(tmp_path: Path) -> Path:
    pkg = tmp_path / "node_modules" / "onnxruntime-web"
    (pkg / "dist").mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "9.9.9-test"}))
    for name in ORT_WEB_FILES:
        (pkg / "dist" / name).write_text(f"stand-in {name}")
    return pkg


@pytest.fixture()
def lenet300() -> torch.nn.Module:
    return models.create("lenet300", in_features=64).eval()


def test_the_folder_holds_model_page_inputs_and_runtime(lenet300: Any, ort_web: Path, tmp_path: Path) -> None:
    x = torch.randn(5, 1, 8, 8)
    out = tmp_path / "site"
    result = ts.export(lenet300, out, example=x, format="web", ort_web=ort_web)
    assert result.format == "web" and result.path == str(out) and result.parity is not None
    assert result.bytes == (out / "model.onnx").stat().st_size > 200_000  # 266k float32 weights
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(["app.js", "index.html", "inputs.json", "model.json", "model.onnx",
                            *(f"ort/{f}" for f in ORT_WEB_FILES)])
    assert (out / "ort" / "ort.wasm.min.mjs").read_text() == "stand-in ort.wasm.min.mjs"
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 1, 8, 8]}]
    assert manifest["outputs"][0]["shape"] == [None, 10] and manifest["form"] == "float"
    assert manifest["onnxruntime_web"]["version"] == "9.9.9-test"
    # the page's inputs are the example, bit for bit; the ONNX file is the checked ONNX export
    rows = read_inputs(out / "inputs.json", manifest)
    assert np.array_equal(rows["input"], x.numpy())
    with torch.no_grad():
        assert np.abs(OrtRunner(out / "model.onnx")((x,))[0] - lenet300(x).numpy()).max() < 1e-5
    page = (out / "index.html").read_text() + (out / "app.js").read_text()
    urls = re.findall(r"https?://[^\s\"'`<]+", page)
    assert urls and all(u.startswith("http://localhost:8000/") for u in urls), urls  # only the how-to-serve hint
    assert "./ort/ort.wasm.min.mjs" in page  # the runtime comes from the folder, never a CDN


def test_missing_onnxruntime_web_says_how_to_install(lenet300: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ts.ConfigError, match=r"onnxruntime-web \(ONNX Runtime Web\) not found in .*"
                                             r"install it with `npm install onnxruntime-web`.*--npm-install"):
        ts.export(lenet300, tmp_path / "site", example=torch.randn(2, 64), format="web",
                  npm_cache=tmp_path / "empty-cache")
    assert not (tmp_path / "site").exists()
    with pytest.raises(ts.ConfigError, match="lacks ort-wasm-simd-threaded.wasm"):
        pkg = tmp_path / "broken" / "node_modules" / "onnxruntime-web"
        (pkg / "dist").mkdir(parents=True)
        (pkg / "package.json").write_text('{"name": "onnxruntime-web", "version": "1"}')
        (pkg / "dist" / "ort.wasm.min.mjs").write_text("x")
        (pkg / "dist" / "ort-wasm-simd-threaded.mjs").write_text("x")
        find_ort_web(tmp_path / "broken")


def test_find_ort_web_takes_the_package_its_dist_or_a_node_modules(ort_web: Path) -> None:
    for place in (ort_web, ort_web / "dist", ort_web.parent, ort_web.parent.parent):
        assert find_ort_web(place).dist == ort_web / "dist"


def _manifest() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 1, 8, 8]}]}


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", r"bad.json is not valid JSON \(.*\); fix the file or write it with"),
    ('[1, 2]', r'bad.json must be an object with "inputs": \{"<input name>": values, ...\}; the model\'s inputs are input'),
    ('{"inputs": {"image": [[1]]}}', r"the model's inputs are input; missing input; unknown image"),
    ('{"inputs": {"input": [[[[1, 2]]], [[[3]]]]}}', r"input 'input' is a ragged nested list"),
    ('{"inputs": {"input": {"dims": [1, 1, 8, 8], "data": [0.5]}}}', r"has 1 values but dims \[1, 1, 8, 8\] hold 64"),
    ('{"inputs": {"input": {"dims": [2, 64], "data": ' + json.dumps([0.0] * 128) + '}}}',
     r"input 'input' has shape \[2, 64\]; the model takes \[None, 1, 8, 8\]"),
    ('{"inputs": {"input": ' + json.dumps([[[["a"] * 8] * 8]]) + '}}', r"holds non-numeric values"),
    ('{"batch": 0, "inputs": {"input": {"dims": [1, 1, 8, 8], "data": ' + json.dumps([0] * 64) + '}}}',
     r'"batch" must be an integer >= 1, got 0'),
    ('{"warmup_ms": -1, "inputs": {"input": {"dims": [1, 1, 8, 8], "data": ' + json.dumps([0] * 64) + '}}}',
     r'"warmup_ms" must be a number >= 0, got -1'),
])
def test_bad_inputs_json_is_named_with_the_fix(content: str, words: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ts.ConfigError, match=words):
        read_inputs(path, _manifest())


def test_inputs_json_takes_nested_lists_and_dims_data(tmp_path: Path) -> None:
    x = np.arange(128, dtype=np.float32).reshape(2, 1, 8, 8) / 7
    write_inputs(tmp_path / "a.json", {"input": x}, batch=2)
    assert json.loads((tmp_path / "a.json").read_text())["batch"] == 2
    (tmp_path / "b.json").write_text(json.dumps({"inputs": {"input": x.tolist()}}))
    for name in ("a.json", "b.json"):
        assert np.array_equal(read_inputs(tmp_path / name, _manifest())["input"], x)


def test_a_bad_inputs_file_fails_before_anything_is_written(lenet300: Any, ort_web: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    ts.export(lenet300, out, example=torch.randn(2, 64), format="web", ort_web=ort_web)
    before = (out / "model.onnx").read_bytes()
    (tmp_path / "bad.json").write_text('{"inputs": {"input": {"dims": [1, 3], "data": [1, 2, 3]}}}')
    with pytest.raises(ts.ConfigError, match=r"has shape \[1, 3\]; the model takes \[None, 64\]"):
        ts.export(lenet300, out, example=torch.randn(2, 64), format="web", ort_web=ort_web,
                  inputs=tmp_path / "bad.json")
    assert (out / "model.onnx").read_bytes() == before  # the old export is intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left
    (tmp_path / "typo.json").write_text('{"inputs": ')
    with pytest.raises(ts.ConfigError, match="typo.json is not valid JSON"):
        ts.export(lenet300, out, example=torch.randn(2, 64), format="web", ort_web=ort_web,
                  inputs=tmp_path / "typo.json")


def test_a_folder_of_other_files_is_not_replaced(lenet300: Any, ort_web: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ts.ConfigError, match="is not empty and holds no torchshrink web export"):
        ts.export(lenet300, mine, example=torch.randn(2, 64), format="web", ort_web=ort_web)
    assert (mine / "notes.txt").read_text() == "keep me"
    # an earlier web export is replaced as a whole
    site = tmp_path / "site"
    ts.export(lenet300, site, example=torch.randn(2, 64), format="web", ort_web=ort_web)
    ts.export(lenet300, site, example=torch.randn(7, 64), format="web", ort_web=ort_web)
    manifest = json.loads((site / "model.json").read_text())
    assert read_inputs(site / "inputs.json", manifest)["input"].shape == (7, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "node_modules", "site"]
    with pytest.raises(ts.ConfigError, match="options of format='web' only, not of 'onnx'"):
        ts.export(lenet300, tmp_path / "m.onnx", example=torch.randn(2, 64), ort_web=ort_web)


def test_cli_writes_the_folder(ort_web: Path, tmp_path: Path, capsys: Any) -> None:
    artifact = str(tmp_path / "lenet.tsz")
    ts.save(models.create("lenet300", in_features=64), artifact, metadata={"data": "digits"})
    out = tmp_path / "deep" / "site"
    assert main(["export", artifact, "--format", "web", "--out", str(out), "--ort-web", str(ort_web),
                 "--trace-batch", "4"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out} (" in said and f"python -m http.server --directory {out}" in said
    assert read_inputs(out / "inputs.json", json.loads((out / "model.json").read_text()))["input"].shape == (4, 1, 8, 8)
    assert main(["export", artifact, "--out", str(tmp_path / "m.onnx"), "--npm-install"]) == 2
    assert "--npm-install: options of --format web only, not of onnx" in capsys.readouterr().err
    assert main(["export", artifact, "--format", "wbe", "--out", str(tmp_path / "x")]) == 2
    assert "supported formats: onnx, pt2, tflite, pte, coreml, web. Did you mean 'web'?" in capsys.readouterr().err


def test_npm_install_runs_npm_into_the_cache(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """--npm-install with a stand-in `npm` on PATH that records its arguments and lays out the
    package the way npm does (PREFIX/node_modules/onnxruntime-web)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n"
                   f'echo "$@" > {tmp_path}/npm-args\n'
                   'prefix="$3"; pkg="$prefix/node_modules/onnxruntime-web"; mkdir -p "$pkg/dist"\n'
                   'echo \'{"name": "onnxruntime-web", "version": "1.2.3"}\' > "$pkg/package.json"\n'
                   + "".join(f'echo x > "$pkg/dist/{f}"\n' for f in ORT_WEB_FILES))
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    result = ts.export(models.create("lenet300", in_features=64).eval(), tmp_path / "site", example=torch.randn(2, 64),
                       format="web", npm_install=True, npm_cache=cache)
    assert (tmp_path / "npm-args").read_text().split() == [
        "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--ignore-scripts", "--no-save", "onnxruntime-web"]
    assert json.loads((Path(result.path) / "model.json").read_text())["onnxruntime_web"]["version"] == "1.2.3"
    npm.write_text("#!/bin/sh\necho 'npm ERR! network request failed' >&2\nexit 1\n")
    with pytest.raises(ts.ConfigError, match=r"failed \(exit 1\): npm ERR! network request failed; check the network"):
        ts.export(models.create("lenet300", in_features=64).eval(), tmp_path / "site2", example=torch.randn(2, 64),
                  format="web", npm_install=True, npm_cache=tmp_path / "cache2")
