"""What one method did to each layer: changed, skipped (with the reason), converted, fell back.

`record` compares the layers before and after a method (module type, parametrization chain,
in-place weight edits), so every method gets an honest record without bookkeeping of its own;
methods add per-layer reasons and fallbacks with `note` and `skip`. A method that leaves a
large share of the weights untouched warns, naming the layers, because what a user asked for
and did not get must never be silent.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from torchshrink.nn.kinds import _tensor, kind_of, weight_matrices

__all__ = ["Coverage", "COVERAGE_ATTR", "snapshot", "record", "note", "skip", "coverage", "WARN_SHARE"]

COVERAGE_ATTR = "torchshrink_coverage"
_PENDING_ATTR = "_torchshrink_pending_notes"
# Above this share of untouched weights (that targets/ignore did not exclude), an apply warns.
WARN_SHARE = 0.2


@dataclasses.dataclass
class Coverage:
    """One apply: method name, {layer: what changed}, {layer: why skipped}, layers converted to
    native kinds first, {layer: fallback chosen}, and the weights changed out of the total."""

    method: str
    changed: dict[str, str]
    skipped: dict[str, str]
    converted: list[tuple[str, str]]
    notes: dict[str, str]
    weights_changed: int
    weights_total: int

    @property
    def share(self) -> float:
        return self.weights_changed / self.weights_total if self.weights_total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "changed": dict(self.changed), "skipped": dict(self.skipped),
                "converted": [list(c) for c in self.converted], "notes": dict(self.notes),
                "weights_changed": self.weights_changed, "weights_total": self.weights_total,
                "share": self.share}


State = tuple[type, tuple[int, ...], tuple[int, ...], int, int, int]
Snapshot = dict[str, State]


def _state(m: nn.Module) -> State:
    plist: Any = m.parametrizations["weight"] if parametrize.is_parametrized(m, "weight") else ()  # type: ignore[index]
    chain = tuple(id(p) for p in plist)
    # A re-applied method (iterative pruning) edits its parametrization's mask in place: the
    # versions of the chain's own tensors tell that apart from a no-op.
    versions = tuple(t._version for p in plist for t in (*p.parameters(), *p.buffers()))
    w = _tensor(m, "weight")
    cls = type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
    return cls, chain, versions, id(w), (w._version if w is not None else 0), id(m)


def snapshot(model: nn.Module) -> Snapshot:
    return {name: _state(model.get_submodule(name)) for name in weight_matrices(model)}


def note(model: nn.Module, layer: str, text: str) -> None:
    """A per-layer choice the method made instead of what was asked (e.g. a smaller group)."""
    pending = _pending(model)
    pending["notes"][layer] = text
    object.__setattr__(model, _PENDING_ATTR, pending)


def skip(model: nn.Module, layer: str, reason: str, *, requested: bool = False) -> None:
    """A layer the method could have handled but left, with the reason. `requested`: the
    config asked for that (e.g. HeadPruning(mlp=0) leaves the MLPs), so it is not warned about."""
    pending = _pending(model)
    pending["skipped"][layer] = reason
    if requested:
        pending["requested"].add(layer)
    object.__setattr__(model, _PENDING_ATTR, pending)


def _pending(model: nn.Module) -> dict[str, Any]:
    return getattr(model, _PENDING_ATTR, None) or {"notes": {}, "skipped": {}, "requested": set()}


def record(before_model: nn.Module, after: nn.Module, before: Snapshot, sizes: dict[str, tuple[str, int]],
           *, method: str, excluded: set[str], converted: list[tuple[str, str]]) -> Coverage:
    """Compare `before` (a snapshot) with the model after the method; attach and return the record.
    `excluded` are layers
    the user's targets/ignore left out (skipped on request, never warned about)."""
    pending = _pending(before_model)
    excluded = excluded | pending["requested"]
    for m in {id(before_model): before_model, id(after): after}.values():
        if hasattr(m, _PENDING_ATTR):
            object.__delattr__(m, _PENDING_ATTR)
    changed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    done_w = total_w = 0
    for name, (kind, count) in sizes.items():
        total_w += count
        found: nn.Module | None
        try:
            found = after.get_submodule(name)
        except AttributeError:
            found = None
        state = _state(found) if found is not None else None
        if state != before[name]:
            if found is None or state is None:
                what = "removed"
            elif state[0] is not before[name][0]:
                what = f"{kind} -> {state[0].__name__}"
            else:
                what = _chain_words(found)
            changed[name] = what
            done_w += count
        elif name in pending["skipped"]:
            skipped[name] = pending["skipped"][name]
        elif name in excluded:
            skipped[name] = "excluded by targets/ignore"
        else:
            skipped[name] = f"{kind}: not changed by {method} (changed kinds: <HANDLES>)"
    handled = sorted({k for n, (k, _) in sizes.items() if n in changed})
    handles = ", ".join(handled) if handled else "it changed no layer"
    for name, reason in skipped.items():
        skipped[name] = reason.replace("<HANDLES>", handles)
    cov = Coverage(method, changed, skipped, converted, dict(pending["notes"]), done_w, total_w)
    history = list(getattr(before_model, COVERAGE_ATTR, []))
    history.append(cov)
    object.__setattr__(after, COVERAGE_ATTR, history)
    _warn_if_partial(cov, sizes, excluded)
    return cov


def _chain_words(m: nn.Module) -> str:
    if parametrize.is_parametrized(m, "weight"):
        names = [type(p).__name__ for p in m.parametrizations["weight"]]  # type: ignore[index]
        return "weight: " + " -> ".join(names)
    return "weight updated in place"


def _warn_if_partial(cov: Coverage, sizes: dict[str, tuple[str, int]], excluded: set[str]) -> None:
    left = {n: r for n, r in cov.skipped.items() if n not in excluded}
    left_w = sum(sizes[n][1] for n in left)
    if not cov.weights_total or left_w / cov.weights_total <= WARN_SHARE:
        return
    worst = sorted(left, key=lambda n: -sizes[n][1])
    shown = "; ".join(f"{n} ({sizes[n][0]}, {sizes[n][1]} weights: {left[n]})" for n in worst[:8])
    more = f"; ... {len(worst) - 8} more" if len(worst) > 8 else ""
    warnings.warn(
        f"{cov.method} left {left_w / cov.weights_total:.0%} of the model's weights untouched "
        f"({left_w} of {cov.weights_total}): {shown}{more}. See ts.coverage(model) for every layer.",
        UserWarning, stacklevel=4)


def coverage(model: nn.Module) -> list[Coverage]:
    """Every apply's record on `model`, oldest first (empty when no method was applied)."""
    return list(getattr(model, COVERAGE_ATTR, []))


def known(m: nn.Module) -> bool:
    return kind_of(m) is not None
