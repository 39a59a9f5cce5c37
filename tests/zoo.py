"""A zoo of architectures as users have them, built from configs or defined here, no download.

Each entry is a factory (seeded, so two calls build identical models) and an example input.
Hugging Face entries need `transformers` (the `torchshrink[hf]` extra); `available()` lists the
entries whose packages are installed. torchvision does not install beside this torch, so
ResNet-18 and MobileNetV2 are written here with torchvision's topology at reduced width.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ZooEntry", "ZOO", "available", "output_of", "FAST"]

VOCAB = 500


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    example: Callable[[], Any]
    needs: str | None = None  # optional package the entry needs

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build().eval()

    def input(self) -> Any:
        torch.manual_seed(1)
        return self.example()


def output_of(y: Any) -> torch.Tensor:
    """The main tensor of a model output: a tensor, the first of a tuple, or a ModelOutput's first."""
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, dict):
        return next(v for v in y.values() if isinstance(v, torch.Tensor))
    return output_of(y[0])


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16))


def _hf(kind: str) -> nn.Module:
    import transformers as tr

    small: dict[str, Any] = {"vocab_size": VOCAB}
    if kind == "gpt2":
        return tr.GPT2LMHeadModel(tr.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, **small))
    if kind == "bert":
        return tr.BertModel(tr.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128, max_position_embeddings=64, **small))
    if kind == "llama":
        return tr.LlamaForCausalLM(tr.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=64, **small))
    if kind == "opt":
        return tr.OPTForCausalLM(tr.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                              num_attention_heads=4, max_position_embeddings=64,
                                              word_embed_proj_dim=64, **small))
    assert kind == "vit"
    return tr.ViTModel(tr.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))


class EncoderClassifier(nn.Module):
    """Token embedding, nn.TransformerEncoder (PyTorch's own attention), mean pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(64, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


class RecurrentClassifier(nn.Module):
    """Token embedding, a two-layer LSTM or GRU, a head on the last step."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.rnn = cell(32, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


class CnnLstm(nn.Module):
    """Conv1d feature extractor over a multichannel signal, an LSTM over time, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.ReLU(),
                                      nn.Conv1d(32, 64, 5, padding=2, stride=2), nn.ReLU())
        self.lstm = nn.LSTM(64, 96, batch_first=True)
        self.head = nn.Linear(96, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.features(x).transpose(1, 2))
        return self.head(out[:, -1])


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class ResNet18(nn.Module):
    """torchvision's resnet18 topology ([2, 2, 2, 2] basic blocks) at width `base`."""

    def __init__(self, base: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [base, base * 2, base * 4, base * 8]
        layers, cin = [], base
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout)]
    if act:
        mods.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*mods)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's mobilenet_v2 inverted-residual settings at width multiplier `alpha`."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, alpha: float = 0.25, classes: int = 10) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(8, int(c * alpha + 4) // 8 * 8)

        cin = w(32)
        feats: list[nn.Module] = [_conv_bn(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                feats.append(InvertedResidual(cin, w(c), s if i == 0 else 1, t))
                cin = w(c)
        feats.append(_conv_bn(cin, 128, 1, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def _entries() -> list[ZooEntry]:
    hf = [ZooEntry(k, lambda k=k: _hf(k), _ids if k != "vit" else (lambda: torch.randn(2, 3, 32, 32)),
                   needs="transformers")
          for k in ("gpt2", "bert", "llama", "opt", "vit")]
    return hf + [
        ZooEntry("transformer_encoder", EncoderClassifier, _ids),
        ZooEntry("lstm", lambda: RecurrentClassifier(nn.LSTM), _ids),
        ZooEntry("gru", lambda: RecurrentClassifier(nn.GRU), _ids),
        ZooEntry("cnn_lstm", CnnLstm, lambda: torch.randn(2, 8, 24)),
        ZooEntry("resnet18", ResNet18, lambda: torch.randn(2, 3, 32, 32)),
        ZooEntry("mobilenet_v2", MobileNetV2, lambda: torch.randn(2, 3, 32, 32)),
    ]


ZOO: dict[str, ZooEntry] = {e.name: e for e in _entries()}

# The (model, method) pairs the default suite runs; the full matrix is marked slow.
FAST: tuple[tuple[str, str], ...] = (
    ("gpt2", "weight_only"), ("gpt2", "dynamic_int8"), ("gpt2", "magnitude_pruning"),
    ("bert", "dynamic_int8"), ("llama", "weight_only"), ("opt", "kmeans_sharing"), ("vit", "weight_only"),
    ("transformer_encoder", "dynamic_int8"), ("transformer_encoder", "static_int8"),
    ("transformer_encoder", "weight_only"), ("lstm", "dynamic_int8"), ("gru", "weight_only"),
    ("cnn_lstm", "magnitude_pruning"), ("cnn_lstm", "kmeans_sharing"), ("resnet18", "static_int8"),
    ("mobilenet_v2", "channel_pruning"), ("resnet18", "channel_pruning"), ("transformer_encoder", "channel_pruning"),
)


def available() -> list[str]:
    return [n for n, e in ZOO.items() if e.needs is None or importlib.util.find_spec(e.needs) is not None]


# --- one cell of the method x model matrix, shared by tests/contract/test_zoo.py and bench ---

def zoo_config(method: str) -> Any:
    """The config a zoo cell applies: the method's example() or defaults, with settings that
    make sense on these small models."""
    import torchshrink as ts

    if method == "weight_only":
        return ts.WeightOnly(bits=4, group_size=32)
    cls = ts.get_method(method).config
    example = getattr(cls, "example", None)
    return example() if callable(example) else cls()


def run_cell(model_name: str, method: str, tmp_dir: str) -> dict[str, Any]:
    """Apply `method` to the zoo model; forward in eval and train mode; check the coverage
    record and a bit-exact save/load. Returns {"status": "ok", "coverage": share, ...} or
    {"status": "refused", "error": type, "message": ...} for an UnsupportedModelError (a named
    refusal); anything else raises."""
    import copy
    import os
    import warnings

    import torchshrink as ts

    entry = ZOO[model_name]
    model, x = entry.model(), entry.input()
    with torch.no_grad():
        ref = output_of(model(x))
    config = zoo_config(method)

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return -float((output_of(m(x)).float() - ref.float()).pow(2).mean())

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ts.apply(model, config, example=x, calibration=[(x,)], evaluate=evaluate, progress=False)
    except ts.UnsupportedModelError as e:
        return {"status": "refused", "error": "UnsupportedModelError", "message": str(e)}
    out.eval()
    with torch.no_grad():
        y = output_of(out(x))
    assert y.shape == ref.shape and torch.isfinite(y.float()).all(), f"{method} broke {model_name}'s output"
    trained = copy.deepcopy(out).train()  # a copy: train mode updates BatchNorm statistics
    y_train = output_of(trained(x))
    assert torch.isfinite(y_train.float()).all()
    records = ts.coverage(out)
    assert records and records[-1].method == type(config).__name__, "no coverage recorded"
    path = os.path.join(tmp_dir, f"{model_name}-{method}.tsz")
    ts.save(out, path)
    back = ts.load(path, like=entry.model())
    with torch.no_grad():
        y_back = output_of(back(x))
    assert torch.equal(y_back, y), f"{method} on {model_name}: save/load not bit-exact " \
        f"({(y_back.float() - y.float()).abs().max().item():.3g})"
    rel = float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
    return {"status": "ok", "coverage": records[-1].share, "rel_error": rel,
            "warnings": [str(w.message)[:200] for w in caught if issubclass(w.category, UserWarning)],
            "bytes": os.path.getsize(path)}


ZOO_METHODS = ("dynamic_int8", "static_int8", "weight_only", "cast", "magnitude_pruning", "nm_pruning",
               "channel_pruning", "kmeans_sharing", "svd_factorization")
