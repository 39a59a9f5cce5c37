"""torch.fx tracing for the channel dependency graph: standard layers and attention modules
stay leaves, and a failure names the user's code and module that fx could not trace, with the
fix (ignore that module, or make it traceable)."""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from torchshrink.errors import UnsupportedModelError
from torchshrink.nn.select import matches

__all__ = ["consumer_pairs", "is_attention_like", "trace"]


def is_attention_like(m: nn.Module) -> bool:
    """A module with q/k/v/out Linear projections and a head count (gpt_tiny's CausalSelfAttention
    and look-alikes) whose forward reshapes projections to (B, T, -1, head_dim)."""
    return (all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "out_proj"))
            and isinstance(getattr(m, "n_head", None), int) and isinstance(getattr(m, "head_dim", None), int))


class _Tracer(fx.Tracer):
    """fx tracer whose leaves are standard torch.nn layers, attention modules and the user's
    ignored modules, and which remembers the module being traced for error messages."""

    def __init__(self, ignore: Sequence[str]) -> None:
        super().__init__()
        self.ignore = list(ignore)
        self.stack: list[str] = []
        self.failed_in: str | None = None  # innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if any(matches(qualname, p) for p in self.ignore):
            return True
        if is_attention_like(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def _user_frame(tb: Any) -> str:
    """file:line `code` of the innermost traceback frame outside torch and torchshrink.nn."""
    frames = traceback.extract_tb(tb)
    for fr in reversed(frames):
        f = fr.filename.replace("\\", "/")
        if "/torch/" not in f and "torchshrink/nn/" not in f:
            return f"{fr.filename}:{fr.lineno} `{(fr.line or '').strip()}`"
    return "unknown location"


def trace(model: nn.Module, ignore: Sequence[str] = ()) -> fx.GraphModule:
    tracer = _Tracer(ignore)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ... for dynamic code
        where = _user_frame(sys.exc_info()[2])
        inside = tracer.failed_in or ""
        mod = model.get_submodule(inside) if inside else model
        hint = (f"add ignore=[{inside!r}] to keep that module's channels unchanged (it is then treated as an "
                "opaque leaf and pruning works around it)") if inside else (
                "the failing code is in the model's own forward; move it into a submodule and ignore it, or "
                "make it traceable")
        raise UnsupportedModelError(
            f"structured pruning cannot trace {type(model).__name__} with torch.fx: the op at {where} "
            f"inside module {inside or '<root>'!r} ({type(mod).__name__}) failed: {type(e).__name__}: {e}. "
            f"The dependency graph needs a traced graph; {hint}"
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def consumer_pairs(model: nn.Module, kinds: Sequence[tuple[type[nn.Module], type[nn.Module]]], *,
                   purpose: str) -> list[tuple[str, str]]:
    """(producer, consumer) module names where the consumer (e.g. a BatchNorm) is the only user
    of the producer's output (e.g. a Conv), for each (producer type, consumer type) in `kinds`,
    found on the fx graph, never by name guessing. A model fx cannot trace gives [] and a
    warning naming `purpose` and the trace error."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types for code it cannot trace
        warnings.warn(f"{purpose} skipped: torch.fx cannot trace {type(model).__name__} "
                      f"({type(e).__name__}: {str(e)[:200]}); the layers stay separate",
                      UserWarning, stacklevel=4)
        return []
    mods = dict(model.named_modules())
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(str(node.target)), tuple(c for _, c in kinds)):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer, bn = mods.get(str(src.target)), mods[str(node.target)]
        if any(isinstance(layer, a) and isinstance(bn, b) for a, b in kinds):
            out.append((str(src.target), str(node.target)))
    return out
