"""The web export in a real browser: each folder served on 127.0.0.1 by http.server, the page
loaded in headless Chromium (Debian's `chromium`, which .ci/run installs where apt exists),
ONNX Runtime Web from npm (`npm install onnxruntime-web` into torchshrink's npm cache; .ci/run
installs nodejs and npm). The page's outputs must match ONNX Runtime in Python on the same
file and the same 64 rows: top-1 agreement 100%, max error printed (`pytest -s`)."""

from __future__ import annotations

import copy
import json
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchshrink as ts
from torchshrink.export.browser import find_chromium, run_page
from torchshrink.export.onnx import OrtRunner
from torchshrink.export.web import (
    DEFAULT_NPM_CACHE,
    find_ort_web,
    npm_install_ort_web,
    read_inputs,
    write_inputs,
)

CHROMIUM = find_chromium()
ROWS = 64

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium); "
                                               "the web folder itself is checked by test_web.py"),
]


@pytest.fixture(scope="module")
def ort_web() -> Path:
    """onnxruntime-web from the npm cache, installed with npm (and timed) when it is not there."""
    try:
        return find_ort_web(DEFAULT_NPM_CACHE).dist.parent
    except ts.ConfigError:
        pass
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (apt-get install nodejs npm), so onnxruntime-web cannot be installed")
    start = time.perf_counter()
    try:
        found = npm_install_ort_web(DEFAULT_NPM_CACHE)
    except ts.ConfigError as e:  # no registry reachable: the package is absent, not broken
        pytest.skip(f"onnxruntime-web could not be installed with npm: {e}")
    print(f"\nnpm install onnxruntime-web {found.version} into {DEFAULT_NPM_CACHE}: "
          f"{time.perf_counter() - start:.1f} s")
    return found.dist.parent


@pytest.fixture(scope="module")
def lenet5(trained_lenet5: Any) -> tuple[torch.nn.Module, Any, torch.Tensor]:
    """The trained LeNet-5 (near-tied logits of an untrained net would make top-1 a coin toss
    for int8), its calibration loader and the first test rows."""
    model, train, test = trained_lenet5
    return model, train, next(iter(test))[0][:ROWS]


def _form(name: str, model: torch.nn.Module, train: Any, x: torch.Tensor) -> torch.nn.Module:
    model = copy.deepcopy(model)
    if name == "int8":
        return ts.quantize(model, ts.StaticInt8(calibration_batches=4), calibration=train, progress=False)
    if name == "int4-weights":
        return ts.quantize(model, ts.WeightOnly(bits=4, group_size=None))
    if name == "pruned":  # half the channels removed: thinner convolutions in the file
        return ts.prune(model, ts.ChannelPruning(ratio=0.5))
    return model


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@pytest.mark.parametrize("form", ["fp32", "int8", "int4-weights", "pruned"])
def test_page_matches_onnxruntime(form: str, lenet5: Any, ort_web: Path, tmp_path: Path) -> None:
    model, train, x = lenet5
    out = tmp_path / "site"
    result = ts.export(_form(form, model, train, x), out, example=x, format="web", ort_web=ort_web)
    assert result.form == ("quantized" if form == "int8" else "float")
    shot = tmp_path / "page.png"
    page = run_page(out, screenshot=shot, timeout=120)
    assert page["status"] == "ok", page.get("error")
    # offline: every request went to the folder's own server, none to a CDN
    assert page["requests"] and all(u.startswith(page["base_url"]) for u in page["requests"]), page["requests"]
    assert any(u.endswith("ort/ort-wasm-simd-threaded.wasm") for u in page["requests"])
    assert page["backend"] == "wasm" and page["model_bytes"] == result.bytes == (out / "model.onnx").stat().st_size

    manifest = json.loads((out / "model.json").read_text())
    feeds = read_inputs(out / "inputs.json", manifest)
    want = OrtRunner(out / "model.onnx", threads=1).run_numpy(feeds)[0]
    got_out = page["outputs"][manifest["outputs"][0]["name"]]
    got = np.asarray(got_out["data"], dtype=np.float32).reshape(got_out["dims"])
    assert got.shape == want.shape == (ROWS, 10)
    agreement = 100.0 * float(np.mean(got.argmax(1) == want.argmax(1)))
    err = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    latency = page["latency_ms"]
    print(f"\n{form}: {result.bytes:,} bytes; ORT Web {page['versions']['onnxruntime_web']} in {page['browser']} vs "
          f"ORT {__import__('onnxruntime').__version__} on {ROWS} rows: top-1 agreement {agreement:.1f}%, "
          f"max abs error {err:.3g} (output scale {scale:.3g}); {latency['median']:.3f} ms per inference at batch 1")
    assert agreement == 100.0
    # the same kernels compiled to WebAssembly: float forms agree to float rounding; int8 within
    # a few output quantization steps (requantization may round differently on each side)
    assert err <= (1e-4 if form != "int8" else 5e-2) * scale, (err, scale)
    assert 0 < latency["median"] < 1000 and latency["batch"] == 1

    from PIL import Image

    w, h = _png_size(shot.read_bytes())
    assert w == 1000 and h >= 600
    img = Image.open(shot).convert("RGB").resize((w // 4, h // 4))
    pixels = list(img.getdata())
    ink = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    assert ink > 0.01 and len(set(pixels)) > 20, ink  # a rendered page with its tables, not a blank


def test_page_batches_and_errors(lenet5: Any, ort_web: Path, tmp_path: Path) -> None:
    model, _, x = lenet5
    out = tmp_path / "site"
    ts.export(model, out, example=x[:2], format="web", ort_web=ort_web)
    # 64 rows, 16 per inference (the file keeps a dynamic batch)
    write_inputs(out / "inputs.json", {"input": x}, batch=16, rounds=2, per_round=2)
    page = run_page(out, timeout=60)
    assert page["status"] == "ok" and page["batch"] == 16 and page["latency_ms"]["batch"] == 16
    want = OrtRunner(out / "model.onnx", threads=1)((x,))[0]
    got = np.asarray(page["outputs"]["output"]["data"], dtype=np.float32).reshape(page["outputs"]["output"]["dims"])
    assert got.shape == (ROWS, 10) and float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())

    (out / "inputs.json").write_text('{"inputs": {"input": {"dims": [1, 1, 28, 28], "data": [1, 2]}}}')
    page = run_page(out, timeout=60)
    assert page["status"] == "error"
    assert page["error"] == 'inputs.json: input "input" has 2 values but dims [1,1,28,28] hold 784'
    (out / "inputs.json").write_text('{"inputs": [')
    assert run_page(out, timeout=60)["error"].startswith("inputs.json is not valid JSON (")
    shutil.rmtree(out / "ort")
    (out / "inputs.json").write_text('{"inputs": {"input": ' + json.dumps(x[:1].tolist()) + "}}")
    page = run_page(out, timeout=60)
    assert page["error"].startswith("ONNX Runtime Web is missing (./ort/ort.wasm.min.mjs: ")
    assert "export again with --npm-install, or run `npm install onnxruntime-web`" in page["error"]
