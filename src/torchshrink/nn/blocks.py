"""The repeated blocks of a model (transformer layers), found from its module structure.

Calibration that needs activations (GPTQ, AWQ, SparseGPT, Wanda) runs one block at a time:
the inputs of a block are the outputs of the block before it. The blocks are read from where
Hugging Face and torchshrink keep them (GPT-2's `transformer.h`, Llama/Qwen2/Mistral's
`model.layers`, OPT's `model.decoder.layers`, BERT's `encoder.layer`, gpt_tiny's `blocks`),
or named by the user (`blocks=["layer1", "layer2", ...]`, any modules called one after the
other, each taking the previous one's output as its first input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.nn.surgery import get_module

__all__ = ["KNOWN_BLOCK_LISTS", "find_blocks", "hidden_of", "with_hidden", "without_caches"]

# Dotted suffixes of the ModuleLists that hold a model's layers, as the common libraries name them.
KNOWN_BLOCK_LISTS = ("transformer.h", "model.layers", "model.decoder.layers", "decoder.layers", "encoder.layer",
                     "encoder.layers", "layers", "blocks", "h")


def _known(name: str) -> bool:
    return any(name == k or name.endswith("." + k) for k in KNOWN_BLOCK_LISTS)


def find_blocks(model: nn.Module, blocks: Sequence[str] | None = None) -> list[str]:
    """Dotted names of the model's blocks in forward order; [] when none is known.

    `blocks`: the user's list of module names, checked to exist. Otherwise the ModuleList with
    a known name that holds the most parameters (the decoder of an encoder-decoder, say)."""
    if blocks is not None:
        names = list(blocks)
        if not names:
            raise ConfigError("blocks=[] names no block; pass the module names of the model's layers in forward "
                              "order (e.g. ['model.layers.0', 'model.layers.1']) or blocks=None to find them")
        for n in names:
            get_module(model, n)  # a ConfigError naming the missing submodule
        if len(set(names)) != len(names):
            raise ConfigError(f"blocks lists a module twice: {names}")
        return names
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and _known(name):
            size = sum(p.numel() for p in m.parameters())
            if size > 0 and (best is None or size > best[0]):
                best = (size, name, m)
    if best is None:
        return []
    return [f"{best[1]}.{i}" for i in range(len(best[2]))]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden state a block returns: the tensor itself, or the first element of a tuple
    (older Hugging Face layers return (hidden, attention weights, ...))."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    first = output[0] if hasattr(output, "__getitem__") else None
    if isinstance(first, torch.Tensor):
        return first
    raise ConfigError(f"a block returned {type(output).__name__}, not a tensor or a tuple starting with one; "
                      "pass blocks=[...] naming modules that return the hidden state")


def with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A block's call with its hidden-state input replaced (the first positional argument, or
    `hidden_states=` for layers called by keyword)."""
    if args:
        return (hidden, *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise ConfigError("the first block was called without a positional input or hidden_states=; "
                      "pass blocks=[...] naming modules whose first input is the hidden state")


def _drop_cache(v: Any) -> Any:
    return None if "Cache" in type(v).__name__ else v


def without_caches(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A captured block call without key/value caches: calling the block again on the same
    inputs must not grow a cache (and calibration never generates)."""
    kw = {k: _drop_cache(v) for k, v in kwargs.items()}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return tuple(_drop_cache(a) for a in args), kw
