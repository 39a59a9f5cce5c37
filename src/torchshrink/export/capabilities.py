"""What each runtime's file carries of each compressed form: one table, checked by the tests.

Every cell is a claim that tests/export/test_capabilities.py verifies by exporting a small model
in that form to that runtime and checking the outcome:

- "native": the file stores the form itself (int8 codes, packed or palettized weights, sparse
  weights, factor pairs) and is smaller than the float32 file, and the export's check passed;
- "dense": the export works and computes the same function, but the file stores float weights
  (no saving on disk);
- "no": the export refuses the model with an error naming the layer and the formats that carry it.

`markdown()` renders the table for the README.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["FORMS", "RUNTIMES", "CAPABILITIES", "Level", "capability", "markdown"]

Level = Literal["native", "dense", "no"]

FORMS = ("fp32", "int8 static", "int8 dynamic", "int8 weight-only", "int4 weight-only", "float16", "2:4",
         "unstructured sparse", "palettized", "low rank")
# runtime -> the export format its files are written in
RUNTIMES = {"onnxruntime": "onnx", "litert": "tflite", "executorch": "pte", "coreml": "coreml"}

_N: Level = "native"
_D: Level = "dense"
_X: Level = "no"
CAPABILITIES: dict[str, dict[str, Level]] = {
    #                       onnxruntime  litert  executorch  coreml
    "fp32":                {"onnxruntime": _N, "litert": _N, "executorch": _N, "coreml": _N},
    "int8 static":         {"onnxruntime": _N, "litert": _N, "executorch": _N, "coreml": _X},
    "int8 dynamic":        {"onnxruntime": _N, "litert": _N, "executorch": _X, "coreml": _X},
    "int8 weight-only":    {"onnxruntime": _N, "litert": _N, "executorch": _X, "coreml": _X},
    "int4 weight-only":    {"onnxruntime": _N, "litert": _X, "executorch": _X, "coreml": _X},
    "float16":             {"onnxruntime": _N, "litert": _N, "executorch": _X, "coreml": _X},
    "2:4":                 {"onnxruntime": _D, "litert": _D, "executorch": _D, "coreml": _N},
    "unstructured sparse": {"onnxruntime": _D, "litert": _D, "executorch": _D, "coreml": _N},
    "palettized":          {"onnxruntime": _N, "litert": _D, "executorch": _D, "coreml": _N},
    "low rank":            {"onnxruntime": _N, "litert": _N, "executorch": _N, "coreml": _N},
}

_NOTES = {
    ("int8 static", "onnxruntime"): "QDQ, fused to QLinearConv/QGemm",
    ("int8 static", "litert"): "int8 kernels, int8 I/O",
    ("int8 static", "executorch"): "XNNPACK qs8",
    ("int8 dynamic", "litert"): "dynamic-range",
    ("int8 weight-only", "onnxruntime"): "packed",
    ("int4 weight-only", "onnxruntime"): "packed",
    ("palettized", "onnxruntime"): "packed indices + table",
    ("palettized", "coreml"): "LUT",
    ("2:4", "coreml"): "sparse",
    ("unstructured sparse", "coreml"): "sparse",
}


def capability(form: str, runtime: str) -> Level:
    return CAPABILITIES[form][runtime]


def markdown() -> str:
    """The table as Markdown: native cells with a short note of the form used."""
    head = "| form | " + " | ".join(RUNTIMES) + " |"
    lines = [head, "|" + "---|" * (len(RUNTIMES) + 1)]
    for form in FORMS:
        cells = []
        for rt in RUNTIMES:
            level = CAPABILITIES[form][rt]
            note = _NOTES.get((form, rt))
            cells.append(f"{level} ({note})" if note and level == "native" else level)
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
