"""`GateLSTM` / `GateGRU`: nn.LSTM and nn.GRU with each layer's gate matrices as Linears.

nn.LSTM keeps its gate matrices as raw parameters (`weight_ih_l0`, `weight_hh_l0`, ...) read
by one fused kernel, so no Linear-based method can see, mask, quantize or factorize them.
Here `ih_l{k}` (input -> 4H or 3H gates, applied to the whole sequence at once) and `hh_l{k}`
(hidden -> gates, once per step) are ordinary Linears, so every method handles them like any
other Linear, and the MAC counter counts them. The time loop runs in Python: a stated cost
(slower than the fused kernel at long sequences), recorded when a model is converted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from torchshrink.errors import UnsupportedModelError

__all__ = ["GateRNN", "GateLSTM", "GateGRU", "split_rnn"]


class GateRNN(nn.Module):
    """Shared structure of GateLSTM and GateGRU (multi-layer, optionally bidirectional)."""

    gates = 4
    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, dropout, bidirectional
        dirs = 2 if bidirectional else 1
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * dirs
            for sfx in ("", "_reverse")[:dirs]:
                setattr(self, f"ih_l{layer}{sfx}", nn.Linear(width, self.gates * hidden_size, bias=bias))
                setattr(self, f"hh_l{layer}{sfx}", nn.Linear(hidden_size, self.gates * hidden_size, bias=bias))

    def _linear(self, kind: str, layer: int, reverse: bool) -> nn.Module:
        return getattr(self, f"{kind}_l{layer}{'_reverse' if reverse else ''}")

    def _step(self, gi: torch.Tensor, hh: nn.Module, h: torch.Tensor, c: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(x, PackedSequence):
            raise UnsupportedModelError(
                f"{type(self).__name__} (a converted nn.{self.mode}) does not take a PackedSequence; pad the "
                "batch, or keep this layer out of the method with ignore=[...]")
        unbatched = x.dim() == 2
        x = x.unsqueeze(0) if unbatched else (x if self.batch_first else x.transpose(0, 1))
        b, t, _ = x.shape
        dirs = 2 if self.bidirectional else 1
        h0, c0 = self._initial(hx, b, dirs, unbatched, x)
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                i = layer * dirs + d
                gi = self._linear("ih", layer, d == 1)(x)
                hh = self._linear("hh", layer, d == 1)
                h, c = h0[i], (c0[i] if c0 is not None else None)
                steps = range(t - 1, -1, -1) if d == 1 else range(t)
                ys: list[torch.Tensor] = [x.new_empty(0)] * t
                for s in steps:
                    h, c = self._step(gi[:, s], hh, h, c)
                    ys[s] = h
                outs.append(torch.stack(ys, 1))
                hs.append(h)
                if c is not None:
                    cs.append(c)
            x = torch.cat(outs, -1) if dirs == 2 else outs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        out = x.squeeze(0) if unbatched else (x if self.batch_first else x.transpose(0, 1))
        h_n = torch.stack(hs, 0)
        h_n = h_n.squeeze(1) if unbatched else h_n
        if self.mode == "LSTM":
            c_n = torch.stack(cs, 0)
            return out, (h_n, c_n.squeeze(1) if unbatched else c_n)
        return out, h_n

    def _initial(self, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, b: int, dirs: int,
                 unbatched: bool, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.num_layers * dirs
        if hx is None:
            zero = x.new_zeros(n, b, self.hidden_size)
            return zero, (zero if self.mode == "LSTM" else None)
        h, c = (hx if isinstance(hx, tuple) else (hx, None))
        if unbatched:
            h = h.unsqueeze(1)
            c = c.unsqueeze(1) if c is not None else None
        return h, c

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first={self.batch_first}, "
                f"bidirectional={self.bidirectional}")


class GateLSTM(GateRNN):
    """nn.LSTM's function (gate order i, f, g, o) with Linear gate matrices."""

    gates, mode = 4, "LSTM"

    def _step(self, gi: torch.Tensor, hh: nn.Module, h: torch.Tensor, c: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert c is not None
        i, f, g, o = (gi + hh(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class GateGRU(GateRNN):
    """nn.GRU's function (gate order r, z, n; b_hn inside the reset product) with Linear gates."""

    gates, mode = 3, "GRU"

    def _step(self, gi: torch.Tensor, hh: nn.Module, h: torch.Tensor, c: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = hh(h).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, None


def split_rnn(name: str, rnn: nn.LSTM | nn.GRU) -> GateRNN:
    """The GateLSTM/GateGRU computing what `rnn` computes (same weights, copied)."""
    if getattr(rnn, "proj_size", 0):
        raise UnsupportedModelError(f"layer {name!r}: nn.LSTM with proj_size > 0 is not supported; exclude it "
                                    "with ignore=[...]")
    cls = GateLSTM if isinstance(rnn, nn.LSTM) else GateGRU
    out = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first,
              dropout=float(rnn.dropout), bidirectional=rnn.bidirectional)
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for sfx in ("", "_reverse")[:2 if rnn.bidirectional else 1]:
                for kind in ("ih", "hh"):
                    lin = getattr(out, f"{kind}_l{layer}{sfx}")
                    lin.weight.copy_(getattr(rnn, f"weight_{kind}_l{layer}{sfx}"))
                    if rnn.bias:
                        lin.bias.copy_(getattr(rnn, f"bias_{kind}_l{layer}{sfx}"))
    w = rnn.weight_ih_l0
    return out.to(w.device, w.dtype)  # type: ignore[arg-type]
