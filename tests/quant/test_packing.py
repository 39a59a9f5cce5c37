"""Bit packing: bit-exact round trips and exact sizes for every width."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchshrink.errors import ConfigError
from torchshrink.quant.packing import pack, packed_bytes, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip_is_bit_exact(bits: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int32)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(n * bits / 8) == packed_bytes(n, bits)
    assert torch.equal(unpack(packed, bits, n), codes)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(0, 7), min_size=1, max_size=64))
def test_int3_matches_a_reference_bitstream(values: list[int]) -> None:
    packed = pack(torch.tensor(values), 3)
    bitstring = "".join(format(v, "03b")[::-1] for v in values)  # LSB first per code
    bitstring += "0" * (-len(bitstring) % 8)
    expected = [int(bitstring[i:i + 8][::-1], 2) for i in range(0, len(bitstring), 8)]
    assert packed.tolist() == expected


def test_int4_layout_two_codes_per_byte() -> None:
    assert pack(torch.tensor([0x3, 0xA, 0xF]), 4).tolist() == [0xA3, 0x0F]
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]


def test_out_of_range_codes_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"codes must lie in \[0, 16\)"):
        pack(torch.tensor([16]), 4)
    with pytest.raises(ConfigError, match="1..8 bits"):
        pack(torch.tensor([1]), 9)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_per_row_layers_scale_the_output_not_the_weight(symmetric: bool) -> None:
    """The int8 per-channel path (codes cast once, scale and zero point applied to the output)
    computes what the decoded weight computes, up to float summation order."""
    from torch import nn

    import torchshrink as ts

    torch.manual_seed(0)
    q = ts.quantize(nn.Sequential(nn.Linear(96, 40)), ts.WeightOnly(bits=8, group_size=None,
                                                                    symmetric=symmetric)).eval()
    layer = q[0]
    x = torch.randn(5, 3, 96)
    assert layer._per_row_int8(x)
    with torch.no_grad():
        ref = nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
