"""What a verified file teaches the cost model, so the next solve works on corrected costs.

The option database prices each option on a copy of its layer alone (`codec.estimate.layer_bytes`:
the payload exactly as the codec codes it, plus the manifest text of the layer's rows and chains).
The saved file differs from that sum in ways no single layer shows:
- the manifest is deflated, and while the model still matches its reference skeleton its tensor
  rows lose their names, shapes and dtypes (`codec.container`): on lenet300 every plan's file is
  ~570 bytes smaller than predicted, 1.6% of a 1/30 budget left unspent, the same for every plan;
- a layer can cost more or less in the whole compressed model than its isolated copy did: after
  fine-tuning the values (and with them what entropy coding spends) change; a method may act a
  little differently on the whole model (not seen on the LeNets or resnet_small so far: there
  the whole difference is the manifest).
`observe` prices each layer of the model that was saved (`layer_bytes` on it, the database's own
measure) in place of its option's database entry, and sets the fixed part to the rest of the real
file (plus a margin once a corrected prediction fell short); the verified plan's prediction is
then its file size, and every other plan is priced with the same manifest share. Re-solving on
these costs under the *same* limit replaces tightening the limit by the miss (which over-
corrected: a discrete option set turns a few hundred bytes of tightening into a much weaker
layer).
Latency is not a sum of layer times (dispatch, cache effects): its prediction is scaled by
measured / predicted of the latest verified plan. MACs are counted exactly and need no correction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["Calibration"]


@dataclasses.dataclass
class Calibration:
    """Per-axis option costs (`costs[axis][layer][option]`), the fixed part outside the planned
    layers, and a scale on the whole prediction (latency), corrected by each verified file."""

    layers: list[str]
    costs: dict[str, list[list[float]]]
    fixed: dict[str, float]
    scale: dict[str, float] = dataclasses.field(default_factory=dict)
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    _margin: float = dataclasses.field(default=0.0, repr=False)
    _measured: set[tuple[int, int]] = dataclasses.field(default_factory=set, repr=False)

    @classmethod
    def start(cls, layers: Sequence[str], costs: Mapping[str, list[list[float]]],
              fixed: Mapping[str, float]) -> Calibration:
        """The database's own costs (copied: corrections do not touch the database)."""
        return cls(list(layers), {k: [list(r) for r in c] for k, c in costs.items()},
                   {k: float(fixed[k]) for k in costs})

    def predicted(self, axis: str, choice: Sequence[int]) -> float:
        c = self.costs[axis]
        return self.scale.get(axis, 1.0) * (self.fixed[axis] + sum(c[i][j] for i, j in enumerate(choice)))

    def layer_budgets(self, budgets: Mapping[str, float]) -> dict[str, float]:
        """What the planned layers may spend, per axis, for the whole to predict within `budgets`."""
        return {k: max(0.0, v / self.scale.get(k, 1.0) - self.fixed[k]) for k, v in budgets.items()}

    def observe(self, choice: Sequence[int], model: nn.Module | None, file_bytes: int | None,
                latency_ms: float | None = None, option_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Correct the costs from one verified plan: `model` is what was saved (before loading),
        `file_bytes` the file's size, `latency_ms` the time of what was read back. Returns the
        log entry: prediction before the correction, measured value, per-layer corrections."""
        entry: dict[str, Any] = {"predicted": {k: self.predicted(k, choice) for k in self.costs}}
        if "bytes" in self.costs and file_bytes is not None and model is not None:
            from torchshrink.codec.estimate import layer_bytes

            c = self.costs["bytes"]
            changed = []
            for i, (n, j) in enumerate(zip(self.layers, choice)):
                if (i, j) in self._measured:  # priced on a saved model already (coding is the cost)
                    continue
                self._measured.add((i, j))
                got = float(layer_bytes(model, n))
                if got != c[i][j]:
                    changed.append({"layer": n, "option": option_names[i] if option_names else j,
                                    "predicted": c[i][j], "measured": got})
                c[i][j] = got
            old_fixed = self.fixed["bytes"]
            rest = float(file_bytes) - sum(c[i][j] for i, j in enumerate(choice))
            # The rest of the file varies a little from plan to plan (the deflated manifest holds
            # each layer's chain; ~150 bytes on resnet_small). Where a plan priced on corrected
            # costs still came out larger than priced, keep that much margin from then on, so
            # the re-solves do not step over the limit by the same spread again.
            if self.log and "file_bytes" in self.log[-1]:
                self._margin = max(self._margin, float(file_bytes) - entry["predicted"]["bytes"])
            self.fixed["bytes"] = rest + self._margin
            entry.update(file_bytes=file_bytes, layers_corrected=changed, rest_bytes=rest, margin=self._margin,
                         fixed_bytes={"before": old_fixed, "after": self.fixed["bytes"]})
        if "latency_ms" in self.costs and latency_ms is not None:
            raw = self.fixed["latency_ms"] + sum(self.costs["latency_ms"][i][j] for i, j in enumerate(choice))
            if raw > 0:
                self.scale["latency_ms"] = latency_ms / raw
            entry.update(latency_ms=latency_ms, latency_scale=self.scale.get("latency_ms", 1.0))
        self.log.append(entry)
        return entry
