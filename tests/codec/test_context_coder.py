"""The context-adaptive sparse coder (codec/context.py): bit-exact round trips, where it applies,
and that it uses what neighbours say."""

import numpy as np
import pytest
import torch

from torchshrink.codec import context, screen
from torchshrink.codec.context import SparseContextEncoding
from torchshrink.codec.encodings import TensorHint
from torchshrink.codec.entropy_encodings import SparseAnsEncoding

ENC = SparseContextEncoding()


def _sparse(shape: tuple[int, ...], density: float, values: int, dtype: torch.dtype, seed: int = 0,
            background: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=g) < density
    v = torch.randint(0, values, shape, generator=g) + background + 1
    return torch.where(keep, v, torch.full(shape, background)).to(dtype)


@pytest.mark.parametrize("shape, dtype, values, background", [
    ((300, 784), torch.uint8, 8, 0),
    ((64, 3, 5, 5), torch.int16, 16, 3),     # conv weight, a background that is not the smallest
    ((1000,), torch.int64, 2, 0),            # 1-D: one row
    ((37, 11), torch.uint8, 255, 0),         # the largest value alphabet
])
def test_round_trip_is_bit_exact(shape: tuple[int, ...], dtype: torch.dtype, values: int, background: int) -> None:
    t = _sparse(shape, 0.1, values, dtype, background=background)
    out = ENC.encode(t, TensorHint())
    assert out is not None
    back = ENC.decode(out[0], out[1], tuple(t.shape), t.dtype)
    assert back.dtype == t.dtype and torch.equal(back, t)


def test_float_tensor_with_few_values_round_trips() -> None:
    t = _sparse((50, 40), 0.2, 6, torch.float32).mul_(0.37)
    out = ENC.encode(t, TensorHint())
    assert out is not None
    assert torch.equal(ENC.decode(out[0], out[1], (50, 40), torch.float32), t)


@pytest.mark.parametrize("t", [
    torch.zeros(10, 10, dtype=torch.uint8),                          # nothing kept
    _sparse((20, 20), 0.8, 4, torch.uint8),                          # not sparse
    _sparse((20, 20), 0.1, 300, torch.int16),                        # too many values
    torch.empty(0, dtype=torch.uint8),
], ids=["all background", "dense", "many values", "empty"])
def test_does_not_apply(t: torch.Tensor) -> None:
    assert ENC.encode(t, TensorHint()) is None


def test_column_structure_codes_smaller_than_order0() -> None:
    # dead and busy columns (input pixels), values alike along a row: what the contexts see
    g = torch.Generator().manual_seed(0)
    rate = torch.where(torch.rand(784, generator=g) < 0.4, 0.0, 0.15)
    keep = torch.rand(300, 784, generator=g) < rate
    smooth = (torch.arange(784) // 30 % 8).expand(300, 784)
    t = torch.where(keep, smooth + 1, 0).to(torch.uint8)
    ours = ENC.encode(t, TensorHint())
    order0 = SparseAnsEncoding().encode(t, TensorHint())
    assert ours is not None and order0 is not None
    assert len(ours[0]) < 0.85 * len(order0[0])


def test_corrupted_payload_is_a_value_error() -> None:
    t = _sparse((30, 30), 0.1, 8, torch.uint8)
    data, meta = ENC.encode(t, TensorHint())
    with pytest.raises(ValueError):
        ENC.decode(data[:3], meta, (30, 30), torch.uint8)


def test_coder_reference_streams_decode_to_their_input() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((17, 23)) < 0.3).astype(np.int64)
    vals = rng.integers(0, 5, int(mask.sum()))
    pos, back = context.decode(context.encode(mask, vals, 5), 17, 23, 5)
    assert np.array_equal(pos, np.flatnonzero(mask)) and np.array_equal(back, vals)


def test_screen_keeps_it_for_a_large_sparse_index_tensor() -> None:
    t = _sparse((512, 1024), 0.05, 8, torch.uint8)  # MAX_ELEMENTS, over the screen's size
    names = [e.name for e in screen.screened(t, [ENC, SparseAnsEncoding()])]
    assert "sparse_ctx" in names and "sparse_ans" in names
    too_big = torch.zeros(context.MAX_ELEMENTS_NATIVE + 1, dtype=torch.uint8)
    too_big[::50] = 3
    assert "sparse_ctx" not in [e.name for e in screen.screened(too_big, [ENC])]


def test_compiled_and_python_coders_write_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchshrink.codec import native

    if not native.ctx_enabled():
        pytest.skip("no C compiler here: only the Python coder runs (tested above)")
    rng = np.random.default_rng(1)
    for rows, cols, density, nv in [(300, 784, 0.05, 8), (17, 23, 0.3, 5), (1, 1000, 0.1, 2), (50, 40, 0.2, 255)]:
        mask = (rng.random((rows, cols)) < density).astype(np.int64)
        vals = rng.integers(0, nv, int(mask.sum()))
        py = context._encode_py(mask, vals, nv)
        assert native.ctx_encode(mask, vals, nv, context.value_bits(nv)) == py
        pos, back = native.ctx_decode(py, rows, cols, nv)
        assert np.array_equal(pos, np.flatnonzero(mask)) and np.array_equal(back, vals)
    # switched off, the tensor coder runs the Python twin and limits itself to its size
    monkeypatch.setenv("TORCHSHRINK_NATIVE_CODEC", "0")
    assert not native.ctx_enabled() and context.max_elements() == context.MAX_ELEMENTS
    t = _sparse((40, 30), 0.1, 8, torch.uint8)
    off = ENC.encode(t, TensorHint())
    monkeypatch.delenv("TORCHSHRINK_NATIVE_CODEC")
    assert off is not None and ENC.encode(t, TensorHint()) == off
    big = torch.zeros(context.MAX_ELEMENTS + 8, dtype=torch.uint8)
    big[::40] = 2
    assert ENC.encode(big, TensorHint()) is not None  # compiled: over the Python limit is fine
    monkeypatch.setenv("TORCHSHRINK_NATIVE_CODEC", "0")
    assert ENC.encode(big, TensorHint()) is None
