"""Language-model perplexity as the GPTQ paper measures it: the token stream cut into windows
of `seq_len` tokens, each scored on its own (no context carried across windows), the mean
next-token negative log-likelihood over every scored token, exponentiated.

With `stride < seq_len` windows overlap and only the last `stride` targets of each are scored
(the sliding protocol of the Hugging Face perplexity guide); the default, stride = seq_len, is
the non-overlapping one. Text is byte-level by default (gpt_tiny's vocabulary); pass
`tokenizer=` (text -> token ids) for a model with another vocabulary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.batches import logits_of
from torchshrink.data.text import read_corpus
from torchshrink.errors import ConfigError, DataError

__all__ = ["evaluate_lm"]


def _context_length(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("block_size", "n_positions", "max_position_embeddings"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _is_file(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError:  # a one-line text longer than a file name can be ("File name too long")
        return False


def _ids(text_or_path: str | os.PathLike[str] | None, tokenizer: Callable[[str], Sequence[int]] | None,
         max_bytes: int | None) -> torch.Tensor:
    if text_or_path is None or isinstance(text_or_path, os.PathLike) or (
            isinstance(text_or_path, str) and "\n" not in text_or_path and len(text_or_path) < 4096
            and _is_file(text_or_path)):
        data = read_corpus(text_or_path, max_bytes=max_bytes)
    else:
        data = str(text_or_path).encode()[:max_bytes] if max_bytes else str(text_or_path).encode()
    if tokenizer is not None:
        return torch.tensor(list(tokenizer(data.decode("utf-8", errors="replace"))), dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def evaluate_lm(model: nn.Module, text_or_path: str | os.PathLike[str] | None = None, *, seq_len: int | None = None,
                stride: int | None = None, batch_size: int = 8, max_bytes: int | None = None,
                max_windows: int | None = None, tokenizer: Callable[[str], Sequence[int]] | None = None
                ) -> dict[str, Any]:
    """{"perplexity", "loss" (nats per token), "tokens" (scored), "windows"} of `model` on a
    text (a string), a text file or folder, or by default the standard-library corpus.

    model: takes (batch, seq_len) token ids and returns logits (a tensor, or an output with
        `.logits`, as Hugging Face causal LMs do).
    seq_len: window length; default the model's context (block_size, n_positions or
        max_position_embeddings in its config). stride: tokens between window starts (default
        seq_len: non-overlapping windows). max_windows: score only the first windows."""
    seq_len = seq_len or _context_length(model)
    if seq_len is None or seq_len < 2:
        raise ConfigError(f"evaluate_lm needs seq_len >= 2 (got {seq_len}); pass seq_len=..., the model's context")
    stride = stride or seq_len
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    ids = _ids(text_or_path, tokenizer, max_bytes)
    if ids.numel() < seq_len + 1:
        raise DataError(f"the text has {ids.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                        "give a longer text or a smaller seq_len")
    starts = list(range(0, ids.numel() - seq_len, stride))
    if max_windows is not None:
        starts = starts[:max_windows]
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        with torch.no_grad():
            for b in range(0, len(starts), batch_size):
                win = torch.stack([ids[s:s + seq_len + 1] for s in starts[b:b + batch_size]]).to(dev)
                logits = logits_of(model(win[:, :-1])).float()
                losses = F.cross_entropy(logits.transpose(1, 2), win[:, 1:], reduction="none")
                for i, s in enumerate(starts[b:b + batch_size]):
                    # the first window scores every target; later ones only the `stride` new ones
                    lo = 0 if s == 0 else seq_len - stride
                    nll += float(losses[i, lo:].sum())
                    count += seq_len - lo
    finally:
        model.train(was)
    loss = nll / count
    return {"perplexity": math.exp(loss), "loss": loss, "tokens": count, "windows": len(starts),
            "seq_len": seq_len, "stride": stride}
