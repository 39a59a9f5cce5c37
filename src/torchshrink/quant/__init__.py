"""Quantization: fake quant with STE, observers, static/dynamic int8 PTQ, bit-packed
weight-only int2..int8, SmoothQuant W8A8, casts, QAT, mixed precision and per-layer diagnostics."""

from torchshrink.quant.cast import Cast, CastLayer
from torchshrink.quant.diagnostics import QuantDiagnostics, quant_diagnostics
from torchshrink.quant.dynamic import DynamicInt8, DynamicInt8Linear
from torchshrink.quant.fake import FakeQuant, fake_quantize, sqnr_db
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.mixed import MixedPrecision
from torchshrink.quant.observers import calibrate, make_observer
from torchshrink.quant.packing import pack, unpack
from torchshrink.quant.qat import QAT, ActQuantized
from torchshrink.quant.smoothquant import SmoothQuant
from torchshrink.quant.static import StaticInt8, StaticInt8Layer
from torchshrink.quant.weight_only import WeightOnly, WeightOnlyLayer

__all__ = [
    "ActQuantized",
    "Cast",
    "CastLayer",
    "DynamicInt8",
    "DynamicInt8Linear",
    "FakeQuant",
    "MixedPrecision",
    "QAT",
    "QuantDiagnostics",
    "SmoothQuant",
    "StaticInt8",
    "StaticInt8Layer",
    "WeightOnly",
    "WeightOnlyLayer",
    "calibrate",
    "fake_quantize",
    "fold_batchnorm",
    "make_observer",
    "pack",
    "quant_diagnostics",
    "sqnr_db",
    "unpack",
]
