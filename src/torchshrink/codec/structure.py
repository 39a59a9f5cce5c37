"""How module structure is written into and replayed from an artifact, without pickle.

An artifact stores (1) a *structure spec* per module and per parametrization, as JSON, and
(2) the model's state_dict tensors, each with its own encoding. Loading starts from a
skeleton (`like=`), rebuilds every module whose spec differs from the skeleton's (a thinner
Conv2d after channel pruning, two Linears after factorization, a quantized Linear), re-attaches
parametrizations from their specs, and then loads the tensors.

Each family registers its own module and parametrization types here, next to their
definitions:

    register_module(FactorizedLinear, to_spec=lambda m: {...}, from_spec=lambda s: FactorizedLinear(**s))
    register_parametrization(PruningMask, to_spec=lambda p: {"shape": list(p.mask.shape)},
                             from_spec=lambda s: PruningMask(torch.ones(s["shape"], dtype=torch.bool)))

A spec is JSON-serializable data; tensors inside a parametrization or module (masks,
codebooks, scales) are buffers or parameters, so they travel in the state_dict. `from_spec`
must build an object of the right shapes; the values are loaded afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from torchshrink.errors import ArtifactError

__all__ = [
    "TypeCodec",
    "register_module",
    "register_parametrization",
    "module_codec",
    "parametrization_codec",
    "module_codec_by_name",
    "parametrization_codec_by_name",
]

Spec = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TypeCodec:
    name: str
    cls: type[nn.Module]
    to_spec: Callable[[Any], Spec]
    from_spec: Callable[[Spec], nn.Module]


_MODULES: dict[str, TypeCodec] = {}
_PARAMETRIZATIONS: dict[str, TypeCodec] = {}


def _register(table: dict[str, TypeCodec], cls: type[nn.Module], to_spec: Callable[[Any], Spec],
              from_spec: Callable[[Spec], nn.Module], name: str | None) -> None:
    key = name or f"{cls.__module__.replace('torchshrink.', 'ts.')}.{cls.__qualname__}"
    table[key] = TypeCodec(key, cls, to_spec, from_spec)


def register_module(cls: type[nn.Module], *, to_spec: Callable[[Any], Spec],
                    from_spec: Callable[[Spec], nn.Module], name: str | None = None) -> None:
    """Teach the artifact to rebuild modules of `cls` from a JSON spec."""
    _register(_MODULES, cls, to_spec, from_spec, name)


def register_parametrization(cls: type[nn.Module], *, to_spec: Callable[[Any], Spec],
                             from_spec: Callable[[Spec], nn.Module], name: str | None = None) -> None:
    """Teach the artifact to re-attach parametrizations of `cls` from a JSON spec."""
    _register(_PARAMETRIZATIONS, cls, to_spec, from_spec, name)


def _lookup_by_type(table: dict[str, TypeCodec], obj: nn.Module) -> TypeCodec | None:
    for codec in table.values():
        if type(obj) is codec.cls:
            return codec
    return None


def module_codec(module: nn.Module) -> TypeCodec | None:
    return _lookup_by_type(_MODULES, module)


def parametrization_codec(p: nn.Module) -> TypeCodec | None:
    return _lookup_by_type(_PARAMETRIZATIONS, p)


def _lookup_by_name(table: dict[str, TypeCodec], name: str, what: str) -> TypeCodec:
    try:
        return table[name]
    except KeyError as e:
        raise ArtifactError(
            f"artifact uses {what} {name!r}, which this torchshrink does not know; "
            "upgrade torchshrink or import the package that registers it"
        ) from e


def module_codec_by_name(name: str) -> TypeCodec:
    return _lookup_by_name(_MODULES, name, "module type")


def parametrization_codec_by_name(name: str) -> TypeCodec:
    return _lookup_by_name(_PARAMETRIZATIONS, name, "parametrization")


# Standard layers whose shape a structural method may change. Their spec is the constructor
# arguments, so a thinner Conv2d is rebuilt exactly.
def _linear_spec(m: nn.Linear) -> Spec:
    return {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}


def _conv_spec(m: nn.Conv1d | nn.Conv2d) -> Spec:
    return {"in": m.in_channels, "out": m.out_channels, "k": list(m.kernel_size), "s": list(m.stride),
            "p": list(m.padding) if not isinstance(m.padding, str) else m.padding, "d": list(m.dilation),
            "g": m.groups, "bias": m.bias is not None, "pm": m.padding_mode}


def _conv_from(cls: type[nn.Conv1d] | type[nn.Conv2d]) -> Callable[[Spec], nn.Module]:
    def build(s: Spec) -> nn.Module:
        pad = s["p"] if isinstance(s["p"], str) else tuple(s["p"])
        return cls(s["in"], s["out"], tuple(s["k"]), tuple(s["s"]), pad, tuple(s["d"]), s["g"], s["bias"],
                   s["pm"])

    return build


def _bn_spec(m: nn.BatchNorm1d | nn.BatchNorm2d) -> Spec:
    return {"n": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track": m.track_running_stats}


def _bn_from(cls: type[nn.BatchNorm1d] | type[nn.BatchNorm2d]) -> Callable[[Spec], nn.Module]:
    return lambda s: cls(s["n"], s["eps"], s["momentum"], s["affine"], s["track"])


register_module(nn.Linear, to_spec=_linear_spec, from_spec=lambda s: nn.Linear(s["in"], s["out"], s["bias"]),
                name="Linear")
register_module(nn.Conv1d, to_spec=_conv_spec, from_spec=_conv_from(nn.Conv1d), name="Conv1d")
register_module(nn.Conv2d, to_spec=_conv_spec, from_spec=_conv_from(nn.Conv2d), name="Conv2d")
register_module(nn.BatchNorm1d, to_spec=_bn_spec, from_spec=_bn_from(nn.BatchNorm1d), name="BatchNorm1d")
register_module(nn.BatchNorm2d, to_spec=_bn_spec, from_spec=_bn_from(nn.BatchNorm2d), name="BatchNorm2d")
register_module(nn.LayerNorm, to_spec=lambda m: {"shape": list(m.normalized_shape), "eps": m.eps,
                                                  "affine": m.elementwise_affine, "bias": m.bias is not None},
                from_spec=lambda s: nn.LayerNorm(tuple(s["shape"]), s["eps"], s["affine"], bias=s["bias"]),
                name="LayerNorm")
register_module(nn.Embedding, to_spec=lambda m: {"n": m.num_embeddings, "d": m.embedding_dim},
                from_spec=lambda s: nn.Embedding(s["n"], s["d"]), name="Embedding")
register_module(nn.Identity, to_spec=lambda m: {}, from_spec=lambda s: nn.Identity(), name="Identity")
register_module(nn.Sequential, to_spec=lambda m: {"n": len(m)},
                from_spec=lambda s: nn.Sequential(*[nn.Identity() for _ in range(s["n"])]), name="Sequential")
