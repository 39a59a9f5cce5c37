"""Recipes: a strict YAML list of stages, each a registered method config plus an optional
fine-tune, and `compress()`, the runner that only loops over them.

    name: deep_compression_lenet300
    stages:
      - method: magnitude_pruning
        per_layer: {fc1: 0.96, fc2: 0.91, fc3: 0.74}
        finetune: {epochs: 8, lr: 0.001}
      - method: kmeans_sharing
        bits: 4
        finetune: {epochs: 4, lr: 0.0003}

Strict means an unknown key, a wrong type or a missing file is a ConfigError that names the
key (or path), never a silently ignored line: a typo in a recipe otherwise produces a model
that was not compressed the way its author believes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from torchshrink.config import Config
from torchshrink.errors import ConfigError, did_you_mean

__all__ = ["FineTune", "Stage", "Recipe", "StageResult", "CompressResult", "load_recipe", "recipe_names", "compress"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FineTune:
    """Training after a stage (arguments of `torchshrink.train.fit`).

    distill: weight of a soft-target term distilled from the model as `compress` received it
        (the uncompressed baseline; Hinton et al. 2015), 0 (default) for plain cross-entropy.
        The rest of the loss is cross-entropy on the labels. Recovering from pruning and
        weight sharing, the baseline's soft targets carry more than the labels alone.
    temperature: of that soft-target term.
    gradual: 0 (default) applies the stage's method before the fine-tune. A fraction in (0, 1]
        (magnitude pruning stages only) instead reaches the stage's sparsity during the
        fine-tune, on Zhu & Gupta's cubic schedule, by that fraction of its steps; the rest of
        the steps recover at the final sparsity (`prune.GradualPruning`).
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    max_steps: int | None = None
    warmup_steps: int = 0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    distill: float = 0.0
    temperature: float = 4.0
    gradual: float = 0.0

    def __post_init__(self) -> None:
        _check_types(self, "finetune")
        if not 0 <= self.gradual <= 1:
            raise ConfigError(f"finetune.gradual must be in [0, 1] (the fraction of the fine-tune's steps over "
                              f"which the sparsity is reached; 0 prunes before it), got {self.gradual}")
        if not 0 <= self.distill <= 1:
            raise ConfigError(f"finetune.distill must be in [0, 1] (the weight of the soft-target term), "
                              f"got {self.distill}")
        if not self.temperature > 0:
            raise ConfigError(f"finetune.temperature must be > 0, got {self.temperature}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"finetune.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.epochs < 1:
            raise ConfigError(f"finetune.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"finetune.lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, data: Any, where: str = "finetune") -> FineTune:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping like {{epochs: 2, lr: 0.001}}, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown key {where}.{key!r}; valid keys: {names}.{did_you_mean(str(key), names)}")
        try:
            return cls(**dict(data))
        except ConfigError as e:
            raise ConfigError(str(e).replace("finetune.", f"{where}.", 1)) from e

    def to_dict(self) -> dict[str, Any]:
        default = FineTune()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name) or f.name in ("epochs", "lr")}


def _check_types(obj: Any, where: str) -> None:
    import typing

    from torchshrink.config import _type_ok  # the same structural check configs use

    resolved = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = resolved[f.name]
        if not _type_ok(value, hint):
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise ConfigError(f"{where}.{f.name} must be {shown}, got {value!r} ({type(value).__name__})")


@dataclasses.dataclass(frozen=True)
class Stage:
    config: Config
    finetune: FineTune | None = None

    def __post_init__(self) -> None:
        if self.finetune is not None and self.finetune.gradual > 0 and self.config.method_name() != "magnitude_pruning":
            raise ConfigError(f"finetune.gradual applies to magnitude_pruning stages; {self.config.method_name()} is "
                              "applied before its fine-tune (remove gradual: from that stage)")

    @property
    def name(self) -> str:
        return self.config.method_name()

    def to_dict(self) -> dict[str, Any]:
        out = self.config.to_dict()
        if self.finetune is not None:
            out["finetune"] = self.finetune.to_dict()
        return out


_TOP_KEYS = ("name", "description", "stages")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered list of stages. Build with `load_recipe` or `Recipe.from_dict`."""

    stages: tuple[Stage, ...]
    name: str = ""
    description: str = ""

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> Recipe:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be a mapping with a 'stages' list, got {type(data).__name__}")
        for key in data:
            if key not in _TOP_KEYS:
                raise ConfigError(f"unknown key {key!r} in {source}; valid keys: {list(_TOP_KEYS)}."
                                  f"{did_you_mean(str(key), _TOP_KEYS)}")
        if "stages" not in data:
            raise ConfigError(f"{source} needs a 'stages' list (one entry per method)")
        stages_raw = data["stages"]
        if not isinstance(stages_raw, list) or not stages_raw:
            raise ConfigError(f"stages in {source} must be a non-empty list, got {stages_raw!r}")
        for key in ("name", "description"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"{key} in {source} must be a string, got {data[key]!r}")
        stages = []
        for i, raw in enumerate(stages_raw):
            where = f"stages[{i}]"
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{where} in {source} must be a mapping with a 'method' key, got {raw!r}")
            raw = dict(raw)
            if "method" not in raw:
                raise ConfigError(f"{where} in {source} needs a 'method' key naming a registered method")
            finetune = None
            if "finetune" in raw:
                ft = raw.pop("finetune")
                finetune = None if ft is None else FineTune.from_dict(ft, where=f"{where}.finetune")
            try:
                config = Config.from_dict(raw)
            except ConfigError as e:
                raise ConfigError(f"{where} in {source}: {e}") from e
            try:
                stages.append(Stage(config, finetune))
            except ConfigError as e:
                raise ConfigError(f"{where} in {source}: {e}") from e
        return cls(tuple(stages), str(data.get("name", "")), str(data.get("description", "")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_BUNDLED = "recipes"  # package data next to this module: torchshrink/recipes/<name>.yaml


def recipe_names() -> list[str]:
    """Names of the recipes shipped in the package (`load_recipe(name)` and `--recipe name`)."""
    from importlib import resources

    folder = resources.files("torchshrink").joinpath(_BUNDLED)
    return sorted(e.name[: -len(".yaml")] for e in folder.iterdir() if e.name.endswith(".yaml"))


def _bundled_text(name: str) -> str | None:
    from importlib import resources

    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if stem not in recipe_names():
        return None
    return resources.files("torchshrink").joinpath(_BUNDLED, f"{stem}.yaml").read_text(encoding="utf-8")


def _looks_like_name(source: str) -> bool:
    return os.sep not in source and "/" not in source


class _StrictLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping: PyYAML keeps the last value
    silently, so a recipe edited by appending a line would run something its text contradicts."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key; SafeLoader reports it below
                continue
            if first is not None:
                raise ConfigError(f"duplicate key {key!r} on line {line} (first given on line {first}); "
                                  "a recipe key may appear once per mapping: delete one of them")
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, label: str) -> Any:
    """YAML text -> plain data, strict about duplicate keys; every failure is a ConfigError."""
    try:
        return yaml.load(io.StringIO(text), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{label} is not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{label} nests too deeply to be a recipe") from e


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe file {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start}); a recipe is a YAML file such as "
                          f"{recipe_names()[0] if recipe_names() else 'deep_compression_lenet300'}.yaml") from e
    except OSError as e:
        raise ConfigError(f"cannot read recipe file {str(path)!r}: {e.strerror or e}") from e


def load_recipe(source: str | os.PathLike[str] | Mapping[str, Any]) -> Recipe:
    """A Recipe from a YAML file path, the name of a bundled recipe (`recipe_names()`), a YAML
    string (containing a newline) or a dict. A file at the given path wins over a bundled name."""
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    text: str
    label: str
    if isinstance(source, str) and "\n" in source:
        text, label = source, "recipe"
    else:
        path = Path(source)
        bundled = _bundled_text(str(source)) if isinstance(source, str) and _looks_like_name(source) else None
        if path.is_file():
            text, label = _read_text(path), str(path)
        elif bundled is not None:
            text, label = bundled, f"bundled recipe {str(source)!r}"
        elif path.is_dir():
            raise ConfigError(f"recipe {str(path)!r} is a directory; give a YAML file or a bundled recipe name")
        else:
            hint = did_you_mean(path.stem, recipe_names()) if recipe_names() else ""
            raise ConfigError(f"recipe file {str(path)!r} not found; pass the path of a YAML recipe or the "
                              f"name of a bundled one ({', '.join(recipe_names())}).{hint}")
    return Recipe.from_dict(parse_yaml(text, label), source=label)


@dataclasses.dataclass
class StageResult:
    """Measurements after one stage (after its fine-tune, when it has one)."""

    name: str
    metric_before_finetune: float | None
    metric: float | None
    nonzero_weights: int
    total_weights: int
    file_bytes: int
    seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CompressResult:
    model: nn.Module
    baseline_metric: float | None
    stages: list[StageResult]

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_metric": self.baseline_metric, "stages": [s.to_dict() for s in self.stages]}


def _weight_counts(model: nn.Module) -> tuple[int, int]:
    from torchshrink.nn import select_layers

    nz = total = 0
    for _, m in select_layers(model):
        w = m.weight
        assert isinstance(w, torch.Tensor)
        nz += int((w != 0).sum())
        total += w.numel()
    return nz, total


def _file_bytes(model: nn.Module) -> int:
    from torchshrink.codec.container import encode_model

    return len(encode_model(model))


def _frozen_copy(model: nn.Module) -> nn.Module:
    import copy

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _finetune(model: nn.Module, ft: FineTune, train: Iterable[Any] | None, val: Iterable[Any] | None,
              teacher: nn.Module | None, progress: bool, desc: str, callbacks: tuple[Any, ...] = ()) -> None:
    """A stage's fine-tune: `fit` with its options, a distillation term where it asks for one."""
    from torchshrink.train import fit

    assert train is not None
    loss: Any = None
    if ft.distill > 0:
        from torchshrink.distill import make_distill_loss

        assert teacher is not None
        loss = make_distill_loss(teacher, {"alpha": ft.distill, "temperature": ft.temperature})
    fit(model, train, val=val, epochs=ft.epochs, lr=ft.lr, optimizer=ft.optimizer, weight_decay=ft.weight_decay,
        schedule=ft.schedule, max_steps=ft.max_steps, warmup_steps=ft.warmup_steps, grad_clip=ft.grad_clip,
        label_smoothing=ft.label_smoothing, loss=loss, callbacks=([loss] if loss is not None else []) + list(callbacks),
        progress=progress, desc=desc)


def compress(
    model: nn.Module,
    recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any],
    *,
    train: Iterable[Any] | None = None,
    val: Iterable[Any] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    example: Any = None,
    calibration: Iterable[Any] | None = None,
    progress: bool = True,
    measure_file: bool = True,
    on_stage: Callable[[StageResult, nn.Module], None] | None = None,
    recalibrate_bn: bool = True,
) -> CompressResult:
    """Run every stage of `recipe` on `model`: apply the method, then fine-tune when the stage
    asks for it, then measure (metric, nonzero weights, bytes of the artifact it would write).

    train/val: loaders for fine-tuning (train is required when a stage fine-tunes).
    evaluate: `model -> float`, higher is better (e.g. test accuracy); measured per stage.
    on_stage: called with each stage's measurements and the model after it (for progress output
        or extra measurements).
    recalibrate_bn: after each stage's method, re-estimate the BatchNorm statistics from
        `calibration` (else `train`) batches: a changed conv feeds its BatchNorm a different
        distribution, and without this a ResNet whose convs were pruned or quantized hard can fall
        to chance before any fine-tuning (adaptive BN; nothing is trained). Models without
        BatchNorm read no batch for it.
    """
    from torchshrink.api import apply, recorded
    from torchshrink.nn.batchnorm import recalibrate_or_warn

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    needs_train = [s.name for s in rec.stages if s.finetune is not None]
    if needs_train and train is None:
        raise ConfigError(f"stages {needs_train} fine-tune, so compress() needs train= a loader of (input, target) "
                          "batches")
    if calibration is None:
        calibration = train
    baseline = float(evaluate(model)) if evaluate is not None else None
    teacher = _frozen_copy(model) if any(s.finetune is not None and s.finetune.distill > 0 for s in rec.stages) \
        else None
    results: list[StageResult] = []
    for i, stage in enumerate(rec.stages):
        t0 = time.perf_counter()
        ft = stage.finetune
        gradual = ft.gradual if ft is not None else 0.0
        desc = f"stage {i + 1}/{len(rec.stages)} {stage.name}"
        before = None
        if gradual:  # masks put on as `apply` would (kinds, coverage, history), pruned by the fine-tune
            from torchshrink.prune import GradualPruning

            assert ft is not None
            schedule = GradualPruning(stage.config, end_fraction=gradual, calibration=calibration)  # type: ignore[arg-type]
            model = recorded(model, stage.config, schedule.install)
            before = float(evaluate(model)) if evaluate is not None else None
            _finetune(model, ft, train, val, teacher, progress, desc + " (gradual)", (schedule,))
        else:
            model = apply(model, stage.config, example=example, calibration=calibration, train=train, val=val,
                          evaluate=evaluate, progress=progress)
        if recalibrate_bn:  # after a gradual stage too: its last masks come after the last step
            recalibrate_or_warn(model, calibration, where=f"stage {i + 1} ({stage.name})")
        if ft is not None and not gradual:
            before = float(evaluate(model)) if evaluate is not None else None
            _finetune(model, ft, train, val, teacher, progress, desc)
        metric = float(evaluate(model)) if evaluate is not None else None
        nz, total = _weight_counts(model)
        res = StageResult(stage.name, before, metric, nz, total, _file_bytes(model) if measure_file else 0,
                          time.perf_counter() - t0, stage.to_dict())
        results.append(res)
        if on_stage is not None:
            on_stage(res, model)
    return CompressResult(model, baseline, results)

