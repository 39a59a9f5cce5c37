"""Measurement: params, nonzeros, bytes, MACs, latency and the task metric, in one Report.

    report = ts.measure(model, example=x, evaluate=lambda m: ts.evaluate(m, test)["accuracy"])
    print(report.table())
    print(ts.compare(before, after))
"""

from torchshrink.measure.core import measure
from torchshrink.measure.latency import LatencyStats, num_threads, time_forward
from torchshrink.measure.macs import count_macs, register_mac_formula, slice_batch
from torchshrink.measure.perplexity import evaluate_lm
from torchshrink.measure.report import Report, compare, format_table
from torchshrink.measure.resident import resident_bytes
from torchshrink.measure.weights import LayerRow, effective_tensors, execution_label, layer_rows

__all__ = [
    "LatencyStats",
    "LayerRow",
    "Report",
    "compare",
    "count_macs",
    "effective_tensors",
    "evaluate_lm",
    "execution_label",
    "format_table",
    "layer_rows",
    "measure",
    "num_threads",
    "register_mac_formula",
    "resident_bytes",
    "slice_batch",
    "time_forward",
]
