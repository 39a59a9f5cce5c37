"""Configs round-trip through plain data and say exactly what is wrong; the registry finds
methods by any spelling and suggests names."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Literal

import pytest
from torch import nn

from torchshrink.config import Config, check_choice, check_range
from torchshrink.errors import ConfigError
from torchshrink.registry import Context, get_method, methods, register


def _identity(model: nn.Module, config: Any, ctx: Context) -> nn.Module:
    return model


@register(family="other", handler=_identity, name="registry_probe")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RegistryProbe(Config):
    """Touches nothing; exercises every field kind a config may have."""

    _runtime_fields: ClassVar[tuple[str, ...]] = ("teacher",)

    sparsity: float = 0.5
    mode: Literal["layer", "global"] = "layer"
    steps: int = 3
    targets: tuple[str, ...] | None = None
    per_layer: dict[str, float] = dataclasses.field(default_factory=dict)
    teacher: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        check_choice("mode", self.mode, ("layer", "global"))


def test_round_trip_through_json() -> None:
    cfg = RegistryProbe(sparsity=0.75, mode="global", targets=["fc*", "conv1"], per_layer={"fc3": 0.1},
                        teacher=nn.Linear(1, 1))
    d = cfg.to_dict()
    assert d == {"method": "registry_probe", "sparsity": 0.75, "mode": "global", "steps": 3,
                 "targets": ["fc*", "conv1"], "per_layer": {"fc3": 0.1}}  # no runtime fields
    back = Config.from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, RegistryProbe) and back.targets == ("fc*", "conv1")
    assert back == cfg.replace(teacher=None)
    assert RegistryProbe.from_dict(d) == back
    assert isinstance(back.targets, tuple)  # lists froze into tuples


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RegistryProbe().sparsity = 0.1  # type: ignore[misc]


def test_validation_messages_name_field_value_and_range() -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), got 1.2"):
        RegistryProbe(sparsity=1.2)
    with pytest.raises(ConfigError, match=r"RegistryProbe.steps must be int, got 2.5 \(float\)"):
        RegistryProbe(steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"RegistryProbe.mode must be one of \['layer', 'global'\], got 'local'"):
        RegistryProbe(mode="local")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"RegistryProbe.steps must be int, got True"):
        RegistryProbe(steps=True)


def test_unknown_key_lists_valid_keys_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sparsty'\] for RegistryProbe; valid keys: "
                                          r"\['mode', 'per_layer', 'sparsity', 'steps', 'targets', 'teacher'\]\. "
                                          r"Did you mean 'sparsity'\?"):
        Config.from_dict({"method": "registry_probe", "sparsty": 0.9})


def test_method_tag_errors() -> None:
    with pytest.raises(ConfigError, match=r"needs a 'method' key naming the method, got keys \['sparsity'\]"):
        Config.from_dict({"sparsity": 0.5})
    with pytest.raises(ConfigError, match=r"unknown method 'registry_prob'\. Did you mean 'registry_probe'"):
        Config.from_dict({"method": "registry_prob"})


def test_registry_lookup_by_any_spelling() -> None:
    for spelling in ("registry_probe", "RegistryProbe", "registry-probe", "REGISTRY_PROBE"):
        assert get_method(spelling).config is RegistryProbe
    m = get_method("registry_probe")
    assert m.family == "other" and m.handler is _identity
    assert RegistryProbe.method_name() == "registry_probe"
    assert m in methods() and m in methods("other")
    assert all(x.family == "prune" for x in methods("prune"))
    names = [x.name for x in methods()]
    assert names == sorted(names)


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="method name 'registry_probe' is already registered by RegistryProbe"):
        @register(family="other", handler=_identity, name="registry_probe")
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Impostor(Config):
            pass
    # Registering the same class again is harmless (modules can be re-imported).
    register(family="other", handler=_identity, name="registry_probe")(RegistryProbe)


def test_default_name_is_snake_case() -> None:
    @register(family="other", handler=_identity)
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class TinyProbeMethod(Config):
        pass

    assert get_method("tiny_probe_method").config is TinyProbeMethod
    assert TinyProbeMethod().to_dict() == {"method": "tiny_probe_method"}
