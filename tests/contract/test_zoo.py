"""Every layer method on every zoo architecture: apply, forward in eval and train mode, a
coverage record, a bit-exact artifact round trip, or a named UnsupportedModelError.

A fast subset runs by default; the whole matrix is marked slow. Export parity lives with the
export tests (they can reuse `tests.zoo`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

FAST = set(zoo.FAST)
CELLS = [pytest.param(m, k, id=f"{m}-{k}", marks=[] if (m, k) in FAST else [pytest.mark.slow])
         for m in zoo.ZOO for k in zoo.ZOO_METHODS]


@pytest.fixture(autouse=True)
def builtin_encodings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bit-exactness does not depend on which encodings the writer may pick (it verifies each);
    # the entropy coders have their own tests, and leaving them out keeps the matrix fast.
    from torchshrink.codec import encodings

    monkeypatch.setattr(encodings, "_ENCODINGS", {k: v for k, v in encodings._ENCODINGS.items()
                                                  if k in ("dense", "zeros", "const", "bits")})


@pytest.mark.parametrize(("model_name", "method"), CELLS)
def test_zoo_cell(model_name: str, method: str, tmp_path: Path) -> None:
    if zoo.ZOO[model_name].needs:
        pytest.importorskip(zoo.ZOO[model_name].needs)
    result = zoo.run_cell(model_name, method, str(tmp_path))
    if result["status"] == "refused":
        assert "'" in result["message"] or "ChannelPruning" in result["message"], result["message"]
    else:
        assert 0.0 <= result["coverage"] <= 1.0
