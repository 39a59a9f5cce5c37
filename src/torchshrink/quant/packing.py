"""Bit-exact packing of unsigned b-bit codes (b = 1..8) into a dense uint8 stream.

Codes are laid out little-endian: code i occupies bits [i*b, (i+1)*b) of the stream, bit 0
being the least significant bit of byte 0. int4 packs two codes per byte, int2 four, and int3
eight codes into three bytes, so n codes take exactly ceil(n*b/8) bytes.
"""

from __future__ import annotations

import math

import torch

from torchshrink.errors import ConfigError

__all__ = ["pack", "unpack", "packed_bytes"]


def packed_bytes(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


def _check(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ConfigError(f"packing supports 1..8 bits per code, got {bits}")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) (any shape, flattened) into a 1-D uint8 tensor."""
    _check(bits)
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ConfigError(f"codes must lie in [0, {2**bits}) to pack at {bits} bits, got "
                          f"[{int(flat.min())}, {int(flat.max())}]")
    n = flat.numel()
    if bits == 8:
        return flat.to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, a fast shift-and-or
        per = 8 // bits
        pad = (-n) % per
        v = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per)
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return (v << shifts).sum(1).to(torch.uint8)
    # General case (3, 5, 6, 7 bits): spell every code out as bits, then regroup by 8.
    bitpos = torch.arange(bits, dtype=torch.int32)
    stream = ((flat[:, None] >> bitpos) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.int32)).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """The first `n` codes of a packed stream (1-D), as `dtype` (int32 by default; uint8 is
    the fastest for 1, 2, 4 and 8 bits, where the whole unpacking stays in bytes)."""
    _check(bits)
    if packed.numel() < packed_bytes(n, bits):
        raise ConfigError(f"a packed stream of {packed.numel()} bytes cannot hold {n} codes at {bits} bits")
    if 8 % bits == 0:
        # Whole codes per byte: shift and mask in uint8 (a quarter of int32's memory traffic;
        # this runs on every call of a weight-only layer).
        raw = packed.reshape(-1).to(torch.uint8)
        if bits == 8:
            return raw[:n].to(dtype)
        mask = (1 << bits) - 1
        parts = [(raw >> (i * bits)) & mask for i in range(8 // bits)]
        return torch.stack(parts, 1).reshape(-1)[:n].to(dtype)
    data = packed.reshape(-1).to(torch.int32)
    stream = ((data[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)[: n * bits]
    return (stream.reshape(n, bits) << torch.arange(bits, dtype=torch.int32)).sum(1).to(dtype)
