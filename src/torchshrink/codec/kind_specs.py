"""Artifact specs for the native-kind equivalents `nn.kinds` converts foreign layers into, so
a model saved after conversion rebuilds on a skeleton that still has the original layers."""

from __future__ import annotations

from typing import Any

from torchshrink.codec.structure import register_module
from torchshrink.nn.attention import SplitAttention
from torchshrink.nn.recurrent import GateGRU, GateLSTM, GateRNN


def _rnn_spec(m: GateRNN) -> dict[str, Any]:
    return {"in": m.input_size, "hidden": m.hidden_size, "layers": m.num_layers, "bias": m.bias,
            "batch_first": m.batch_first, "dropout": m.dropout, "bidirectional": m.bidirectional}


def _rnn_from(cls: type[GateRNN]) -> Any:
    return lambda s: cls(s["in"], s["hidden"], s["layers"], bias=s["bias"], batch_first=s["batch_first"],
                         dropout=s["dropout"], bidirectional=s["bidirectional"])


register_module(GateLSTM, to_spec=_rnn_spec, from_spec=_rnn_from(GateLSTM), name="GateLSTM")
register_module(GateGRU, to_spec=_rnn_spec, from_spec=_rnn_from(GateGRU), name="GateGRU")
register_module(
    SplitAttention,
    to_spec=lambda m: {"embed": m.embed_dim, "heads": m.num_heads, "dropout": m.dropout,
                       "bias": m.has_bias,
                       "kdim": m.kdim, "vdim": m.vdim, "batch_first": m.batch_first},
    from_spec=lambda s: SplitAttention(s["embed"], s["heads"], dropout=s["dropout"], bias=s["bias"],
                                       kdim=s["kdim"], vdim=s["vdim"], batch_first=s["batch_first"]),
    name="SplitAttention",
)
