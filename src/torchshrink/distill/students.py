"""Student builders: a uniformly thinner copy, a shallower transformer, or a plain MLP.

Any `nn.Module` with the teacher's output shape can be a student; these helpers only make the
common choices quick. Copies start from the teacher's weights where the structure allows it
(the kept channels, the kept blocks), which Sanh et al. (DistilBERT) found to train faster
than a fresh initialization.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from torchshrink.errors import ConfigError, ShrinkError, UnsupportedModelError
from torchshrink.models import GPTTiny, MobileNetSmall, ResNetSmall
from torchshrink.nn import select_layers, set_module

__all__ = ["mlp", "fewer_blocks", "thin_copy"]


def mlp(in_features: int, hidden: Sequence[int], num_classes: int, *, dropout: float = 0.0,
        input_dropout: float = 0.0) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear: Hinton's MNIST nets
    (2 x 1200 with dropout as the teacher, 2 x 800 / 2 x 300 / 2 x 30 students)."""
    if not hidden or any(h < 1 for h in hidden):
        raise ConfigError(f"hidden must list positive layer widths, got {list(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    if input_dropout > 0:
        layers.append(nn.Dropout(input_dropout))
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def fewer_blocks(model: nn.Module, n_blocks: int | None = None, *,
                 keep: Literal["every_other", "first"] | Sequence[int] = "every_other",
                 blocks_attr: str = "blocks") -> nn.Module:
    """A copy of a transformer with a subset of its blocks (default: half, every other one),
    each initialized from the teacher's block it replaces; embeddings and head are copied too.

    Works on any model that keeps its blocks in an `nn.ModuleList` attribute (`blocks` in
    `gpt_tiny` and nanoGPT-shaped models).
    """
    blocks = getattr(model, blocks_attr, None)
    if not isinstance(blocks, nn.ModuleList):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no nn.ModuleList attribute {blocks_attr!r}; pass blocks_attr= the "
            "attribute holding the transformer blocks"
        )
    n = len(blocks)
    if isinstance(keep, str):
        k = n_blocks if n_blocks is not None else max(1, n // 2)
        if not 1 <= k <= n:
            raise ConfigError(f"n_blocks must be in [1, {n}] for a model with {n} blocks, got {k}")
        if keep == "first":
            idx = list(range(k))
        elif keep == "every_other":
            # Spread evenly, always keeping the first block: 4 -> 2 keeps blocks 0 and 2.
            idx = sorted({round(i * n / k) for i in range(k)})
        else:
            raise ConfigError(f"keep must be 'every_other', 'first' or a list of block indices, got {keep!r}")
    else:
        idx = list(keep)
        if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
            raise ConfigError(f"keep must list distinct block indices in [0, {n}), got {idx}")
    student: Any = copy.deepcopy(model)
    set_module(student, blocks_attr, nn.ModuleList([copy.deepcopy(blocks[i]) for i in idx]))
    cfg = getattr(student, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) and hasattr(cfg, "n_layer"):
        student.config = dataclasses.replace(cfg, n_layer=len(idx))
    return typing.cast(nn.Module, student)


def _scale(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _thin_by_construction(module: nn.Module, width: float) -> nn.Module | None:
    """Reference models whose constructors take widths: a fresh, thinner instance."""
    model: Any = module  # attribute access on known reference-model layouts
    if isinstance(module, GPTTiny):
        cfg = model.config
        head_dim = cfg.n_embd // cfg.n_head
        n_head = _scale(cfg.n_head, width)
        return GPTTiny(dataclasses.replace(cfg, n_head=n_head, n_embd=n_head * head_dim))
    if isinstance(module, ResNetSmall):
        stem = model.stem[0]
        outs = [b.conv2.out_channels for b in model.layers]
        widths: list[int] = []
        counts: list[int] = []
        for i, (b, w) in enumerate(zip(model.layers, outs)):
            if i == 0 or b.conv1.stride != (1, 1):
                widths.append(w)
                counts.append(0)
            counts[-1] += 1
        return ResNetSmall(num_classes=model.fc.out_features, in_channels=stem.in_channels,
                           widths=tuple(_scale(w, width) for w in widths), blocks=tuple(counts))
    if isinstance(module, MobileNetSmall):
        plan = tuple((_scale(b.pw.out_channels, width), b.dw.stride[0])
                     for b in model.blocks)
        return MobileNetSmall(num_classes=model.fc.out_features, in_channels=model.stem[0].in_channels,
                              plan=plan, stem=_scale(model.stem[0].out_channels, width))
    return None


def _thin_chain(model: nn.Module, width: float, example: Any) -> nn.Module:
    """Channel surgery for plain chains of Linear/Conv2d layers (LeNet-300-100, LeNet-5, MLPs):
    keep each hidden layer's largest-L1 output channels and slice the next layer's inputs
    (groups of inputs when a flatten sits between a conv and a linear)."""
    layers = select_layers(model, types=(nn.Linear, nn.Conv2d))
    others = [n for n, m in model.named_modules()
              if not isinstance(m, (nn.Linear, nn.Conv2d)) and any(True for _ in m.parameters(recurse=False))]
    if len(layers) < 2 or others:
        raise UnsupportedModelError(
            f"thin_copy cannot thin {type(model).__name__}: it handles plain chains of Linear/Conv2d layers "
            f"and the reference models{'; it has other layers with parameters: ' + ', '.join(others) if others else ''}. "
            "Build a thinner student yourself (any nn.Module works) or use channel pruning"
        )
    student = copy.deepcopy(model)
    keep: torch.Tensor | None = None  # input channels the current layer keeps
    for i, (name, mod) in enumerate(select_layers(student, types=(nn.Linear, nn.Conv2d))):
        layer: Any = mod
        w = layer.weight.detach()
        in_dim = w.shape[1]
        if keep is not None:
            prev: Any = layers[i - 1][1]
            prev_out = int(prev.weight.shape[0])
            if in_dim % prev_out:
                raise UnsupportedModelError(
                    f"thin_copy: {name} takes {in_dim} inputs, not a multiple of the previous layer's "
                    f"{prev_out} outputs, so the model is not a plain chain"
                )
            group = in_dim // prev_out  # > 1 after flattening a conv's (C, H, W) output
            cols = (keep[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
            w = w[:, cols]
        last = i == len(layers) - 1
        rows = torch.arange(w.shape[0]) if last else \
            w.abs().flatten(1).sum(1).topk(_scale(w.shape[0], width)).indices.sort().values
        w = w[rows]
        bias = layer.bias.detach()[rows] if layer.bias is not None else None
        if isinstance(layer, nn.Linear):
            new: Any = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        else:
            new = nn.Conv2d(w.shape[1], w.shape[0], layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, 1, bias is not None, layer.padding_mode)
            if layer.groups != 1:
                raise UnsupportedModelError(f"thin_copy: grouped conv {name} needs channel pruning's dependency graph")
        with torch.no_grad():
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias)
        set_module(student, name, new)
        keep = rows
    if example is not None:
        with torch.no_grad():
            try:
                out, ref = student(example), model(example)
            except RuntimeError as e:
                raise UnsupportedModelError(f"thin_copy: the thinned {type(model).__name__} no longer runs: {e}") from e
        if out.shape != ref.shape:
            raise UnsupportedModelError(f"thin_copy changed the output shape {tuple(ref.shape)} -> {tuple(out.shape)}")
    return student


def thin_copy(model: nn.Module, width: float = 0.5, *, example: Any = None) -> nn.Module:
    """A uniformly thinner copy: every prunable channel group keeps `width` of its channels.

    Uses structured pruning's surgery (`torchshrink.prune.prune_channels`, L1 criterion) on a
    deep copy, so the student starts from the teacher's largest-magnitude channels and their
    weights, with residual adds, BatchNorm, depthwise convs and attention heads kept consistent.
    `example` is an input batch for tracing (reference models have a default). Where tracing
    fails, plain Linear/Conv2d chains fall back to a simpler chain surgery and the other
    reference models to a freshly initialized thinner construction. Input and output sizes
    never change.
    """
    if not 0 < width <= 1:
        raise ConfigError(f"width must be in (0, 1] (the fraction of channels kept), got {width!r}")
    if example is None:
        from torchshrink.models import example_input

        with contextlib.suppress(ConfigError):
            example = example_input(model, 2)
    student = copy.deepcopy(model)
    if width == 1:
        return student
    if example is not None:
        try:
            from torchshrink.prune import prune_channels

            prune_channels(student, ratio=1.0 - width, example=example, criterion="l1")
            return student
        except (ImportError, ShrinkError, RuntimeError, TypeError) as e:
            # fx tracing or the dependency graph can refuse a model; the fallbacks below still
            # cover the reference models and plain chains.
            fallback_reason: BaseException | None = e
    else:
        fallback_reason = None
    built = _thin_by_construction(model, width)
    if built is not None:
        return built
    try:
        return _thin_chain(model, width, example)
    except UnsupportedModelError as e:
        if fallback_reason is not None:
            raise UnsupportedModelError(f"{e} (channel pruning surgery failed too: {fallback_reason})") from e
        raise
