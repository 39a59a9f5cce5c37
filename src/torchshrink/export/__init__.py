"""Deployment: ONNX (QDQ for quantized layers, packed low-bit weights) and torch.export
programs, each checked against the PyTorch model after it is written."""

from torchshrink.export.api import FORMATS, ExportResult, export
from torchshrink.export.check import ParityError, ParityReport
from torchshrink.export.pt2 import load_pt2

__all__ = ["FORMATS", "ExportResult", "ParityError", "ParityReport", "export", "load_pt2"]

# `ts.export(model, path, example=x)`: this subpackage is also the verb (torchshrink._verb_module).
from torchshrink._verb_module import make_callable  # noqa: E402

make_callable(__name__, export)
