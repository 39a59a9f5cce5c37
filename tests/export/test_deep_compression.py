"""The exported ONNX file of a Deep Compression LeNet-300-100 reaches, in ONNX Runtime, exactly
the test accuracy of the .tsz file it came from."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import torchshrink as ts
from torchshrink.export.onnx import OrtRunner


def _short_recipe() -> dict[str, Any]:
    # The shipped recipe's stages, with one fine-tune epoch each, so the test stays short.
    rec = ts.load_recipe("deep_compression_lenet300").to_dict()
    for stage in rec["stages"]:
        if "finetune" in stage:
            stage["finetune"]["epochs"] = 1
    return rec


@pytest.mark.slow  # about 40 s of CPU: training, three recipe stages
def test_deep_compression_lenet300_same_accuracy_in_onnxruntime(tmp_path: Any) -> None:
    torch.manual_seed(0)
    splits = ts.data.load("mnist5k", seed=0)
    train, val, _ = ts.data.loaders(splits, batch_size=64)
    test = DataLoader(splits.test, batch_size=250)
    model = ts.models.create("lenet300")
    ts.fit(model, train, epochs=2, lr=1e-3, progress=False)
    result = ts.compress(model, _short_recipe(), train=train, val=val, progress=False, measure_file=False)
    tsz = f"{tmp_path}/lenet300.tsz"
    ts.save(result.model, tsz)
    loaded = ts.load(tsz).eval()
    acc_tsz = ts.evaluate(loaded, test)["accuracy"]
    assert acc_tsz > 80
    onnx_path = f"{tmp_path}/lenet300.onnx"
    exported = ts.export(loaded, onnx_path, example=splits.test.tensors[0][:2], check_data=test)
    assert exported.parity is not None and exported.parity.passed
    runner = OrtRunner(onnx_path)
    correct = sum(int((torch.from_numpy(runner((x,))[0]).argmax(-1) == y).sum()) for x, y in test)
    assert 100.0 * correct / len(splits.test) == acc_tsz
    # the shared values survive export packed: fc1 is a table of at most 16 values plus the
    # pruned zero and one index per weight, never a dense float weight
    import onnx

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(onnx_path).graph.initializer}
    table, packed = inits["fc1.w.table"], inits["fc1.w.packed"]
    assert len(table) <= 17 and 0.0 in table.tolist()
    assert packed.dtype.name == "uint8" and packed.size <= (300 * 784 * 5 + 7) // 8
    assert not any(v.dtype.name == "float32" and v.size >= 300 * 784 for v in inits.values())
