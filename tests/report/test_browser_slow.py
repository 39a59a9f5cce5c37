"""The demo's compressed model's report, rendered by headless Chromium (Debian's `chromium`,
which .ci/run installs where apt exists): the screenshot is a real picture and the DOM Chromium
parsed holds the tables and the figures, each a PNG of non-zero size."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from torchshrink.cli import run_demo

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium); "
                                             "the page is still checked by test_report_page.py")
def test_demo_report_renders_in_chromium(tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    run_demo(out_dir=tmp_path / "demo", progress=False, runs=20, print_fn=lambda line: None, html=page)
    url = page.resolve().as_uri()

    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for sid in ("summary", "layers", "streams", "energy", "stages", "sensitivity", "recipe", "machine"):
        assert f'<section id="{sid}">' in html, sid
    assert html.count("<table>") >= 8 and html.count("<td") > 100
    imgs = re.findall(r'<img class="plot"[^>]*width="(\d+)" height="(\d+)"[^>]*src="data:image/png;base64,([^"]+)"',
                      html)
    assert len(imgs) >= 4
    for w, h, data in imgs:
        png = base64.b64decode(data)
        assert int(w) > 0 and int(h) > 0 and _png_size(png) == (int(w), int(h))

    for name, size in (("desktop.png", "1000,2400"), ("phone.png", "390,2400")):
        shot = tmp_path / name
        res = _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={size}", url)
        assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 20_000, res.stderr[-2000:]
        img = Image.open(shot).convert("RGB")
        assert img.size == tuple(int(v) for v in size.split(","))
        small = img.resize((img.width // 4, img.height // 4))
        pixels = list(small.getdata())
        ink = sum(1 for p in pixels if sum(p) < 600) / len(pixels)     # not white: text, bars, lines
        assert ink > 0.03 and len(set(pixels)) > 50, (name, ink)        # a rendered page, not a blank
