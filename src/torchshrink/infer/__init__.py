"""The inference form: a compressed model in the fastest (or smallest) form this machine runs.

    fast = ts.for_inference(model, example=x)              # per layer, chosen by timing
    small = ts.for_inference(model, example=x, prefer="memory")
    print(ts.measure(fast, example=x).table())             # the execution column says why
"""

from torchshrink.infer.build import MIN_SPARSITY, Timer, for_inference
from torchshrink.infer.forms import CompactSparseLinear, Int4Linear
from torchshrink.infer.kernels import available as kernel_available

__all__ = ["CompactSparseLinear", "Int4Linear", "MIN_SPARSITY", "Timer", "for_inference", "kernel_available"]
