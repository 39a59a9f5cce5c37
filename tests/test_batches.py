"""Batches reach the model as the model takes them."""

from __future__ import annotations

import torch
from torch import nn

import torchshrink as ts
from torchshrink.batches import call_model, split_batch, to_device, unwrap_batch
from torchshrink.nn.batchnorm import recalibrate_batchnorm


class MaskedLM(nn.Module):
    """A forward that takes `input_ids, attention_mask` and records the masks it got."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)
        self.masks: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.masks.append(attention_mask)
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(self.bn(h.sum(1)))


def _dict_batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 10, (4, 5), generator=g),
             "attention_mask": torch.ones(4, 5, dtype=torch.long), "labels": torch.randint(0, 3, (4,), generator=g)}
            for _ in range(n)]


def test_split_batch_forms() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert split_batch(x) == ((x,), {}, None)
    assert split_batch((x, y))[2] is y and split_batch((x, y))[0] == (x,)
    assert split_batch([x]) == ((x,), {}, None)
    args, kwargs, target = split_batch(((x,), {"scale": 2}))
    assert args == (x,) and kwargs == {"scale": 2} and target is None
    args, kwargs, target = split_batch({"input_ids": x, "attention_mask": y, "labels": y})
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"} and target is y
    assert unwrap_batch({"input": x, "label": y}) == (x, y)
    moved = to_device({"a": [x]}, torch.device("cpu"))
    assert moved["a"][0] is x


def test_dict_batch_keeps_attention_mask_in_evaluate_fit_and_calibration() -> None:
    model = MaskedLM()
    batches = _dict_batches()
    out = call_model(model, batches[0])
    assert out.shape == (4, 3) and len(model.masks) == 1
    metrics = ts.evaluate(model, batches)
    assert 0.0 <= metrics["accuracy"] <= 100.0 and len(model.masks) == 4
    ts.fit(model, batches, epochs=1, progress=False)
    assert len(model.masks) == 7
    assert recalibrate_batchnorm(model, batches) == 1
    assert len(model.masks) == 10
    assert all(m.shape == (4, 5) for m in model.masks)


def test_plain_tensor_model_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    expected = 100.0 * float((model(x).argmax(-1) == y).float().mean())
    assert abs(ts.evaluate(model, [(x, y)])["accuracy"] - expected) < 1e-9
    assert torch.equal(call_model(model, x), model(x))
