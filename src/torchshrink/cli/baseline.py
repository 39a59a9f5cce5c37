"""What several subcommands start from: reference models sized for a data set, the training
recipe, the loaders, a trained (or loaded) baseline, and artifacts given on the command line."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from torchshrink.errors import ArtifactError, ConfigError, did_you_mean

__all__ = ["DATA_SEED", "EVAL_BATCH_SIZE", "Baseline", "baseline", "build_model", "check_baseline", "check_data_name",
           "check_model_name", "data_names", "model_names", "train_recipe", "training_overrides",
           "artifact_metadata", "reference_or_file", "loaders", "test_loader", "fit_kwargs"]

# `train` and `eval` must see the same test split and batches, or `eval` could not reproduce
# the accuracy `train` reported; both read these (and the seed stored in the artifact).
DATA_SEED = 0
EVAL_BATCH_SIZE = 1000


def model_names() -> list[str]:
    from torchshrink import models

    return models.names()


def data_names() -> list[str]:
    from torchshrink import data

    return data.names()


def check_model_name(name: str) -> None:
    if name not in model_names():
        raise ConfigError(f"unknown model {name!r}." + did_you_mean(name, model_names())
                          + " Run `torchshrink inspect --help` for the list.")
    if name == "gpt_tiny":
        raise ConfigError("the CLI trains image classifiers; gpt_tiny is a language model. "
                          "Train it from Python with ts.fit and ts.data.load_text")


def check_data_name(name: str) -> None:
    if name not in data_names():
        raise ConfigError(f"unknown data set {name!r}." + did_you_mean(name, data_names()))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The reference model sized for the data: LeNet-300-100 adapts its input layer (digits are
    8x8); the others need the 1x28x28 input they were designed for."""
    from torchshrink import models

    check_model_name(name)
    kwargs: dict[str, Any] = {}
    if num_classes != 10:
        kwargs["num_classes"] = num_classes
    if name == "lenet300" and tuple(input_shape) != (1, 28, 28):
        kwargs["in_features"] = math.prod(input_shape)
    model = models.create(name, **kwargs)
    expected = getattr(model, "input_shape", None)
    if name != "lenet300" and expected is not None and tuple(expected) != tuple(input_shape):
        raise ConfigError(f"model {name!r} expects inputs of shape {tuple(expected)} but the data has "
                          f"{tuple(input_shape)}; use a 28x28 data set (mnist5k, fashion_mnist, synthetic) "
                          "or lenet300, which adapts to any input size")
    return model


_FALLBACK_RECIPE: dict[str, Any] = {"epochs": 20, "lr": 1e-3, "batch_size": 128, "optimizer": "adamw",
                                    "weight_decay": 0.0, "schedule": "cosine"}


def train_recipe(model_name: str) -> dict[str, Any]:
    """Training defaults for a reference model: `torchshrink.train.default_recipe` where it
    has one, else AdamW lr 1e-3, batch 128, cosine schedule, 20 epochs."""
    from torchshrink import train as train_mod

    recipe = dict(_FALLBACK_RECIPE)
    try:
        given = train_mod.default_recipe(model_name)
    except ConfigError:  # a model without a tuned recipe trains with the fallback
        return recipe
    recipe.update({k: v for k, v in given.items() if v is not None})
    return recipe


def training_overrides(recipe: dict[str, Any], *, epochs: int | None, lr: float | None,
                       batch_size: int | None) -> dict[str, Any]:
    """The recipe with the command line's values, each checked (Python callers skip argparse)."""
    out = dict(recipe)
    for key, value, flag in (("epochs", epochs, "--epochs"), ("batch_size", batch_size, "--batch-size")):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
            out[key] = value
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"--lr must be a finite number > 0, got {lr!r}")
        out["lr"] = float(lr)
    return out


def fit_kwargs(recipe: Mapping[str, Any]) -> dict[str, Any]:
    import inspect

    from torchshrink.train import fit

    accepted = set(inspect.signature(fit).parameters)
    return {k: v for k, v in recipe.items() if k in accepted and k not in ("batch_size", "model", "train")}


def loaders(splits: Any, recipe: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """data.loaders with the recipe's loader options (batch size, augmentation shift)."""
    import inspect

    from torchshrink import data

    accepted = set(inspect.signature(data.loaders).parameters)
    kw = {k: v for k, v in recipe.items() if k in accepted and k not in ("splits", "eval_batch_size", "seed")}
    return data.loaders(splits, eval_batch_size=EVAL_BATCH_SIZE, seed=seed, **kw)


def test_loader(splits: Any, split: str = "test") -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(getattr(splits, split), batch_size=EVAL_BATCH_SIZE)


def artifact_metadata(info: Any) -> dict[str, Any]:
    """The user metadata of an artifact, with the keys the CLI reads checked: a file can say
    anything, and a crafted value must be an error, not a crash or a huge allocation."""
    meta = info.metadata if info is not None and isinstance(info.metadata, dict) else {}
    data = meta.get("data")
    if data is not None and not isinstance(data, str):
        raise ArtifactError(f"{info.path!r} records data {data!r}; expected a data set name")
    seed = meta.get("data_seed", DATA_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ArtifactError(f"{info.path!r} records data_seed {seed!r}; expected an integer in [0, 2**32)")
    return meta


def reference_or_file(target: str) -> tuple[str, nn.Module, Any]:
    """('model' | 'file', model, ArtifactInfo or None) for a model name or an artifact path."""
    import torchshrink as ts
    from torchshrink import models

    if os.path.isfile(target):
        info = ts.read_info(target)
        return "file", ts.load(target), info
    if os.path.isdir(target):
        raise ArtifactError(f"{target!r} is a directory, not an artifact file")
    if target in models.names():
        return "model", models.create(target), None
    looks_like_path = os.sep in target or "." in target
    hint = (" No such file, and it is not a reference model name either."
            if looks_like_path else " (or give the path of an artifact file)")
    raise ConfigError(f"unknown model {target!r}." + did_you_mean(target, models.names()) + hint)


@dataclasses.dataclass
class Baseline:
    """A trained (or loaded) model with the loaders and test metric the CLI uses around it."""

    model: nn.Module
    splits: Any
    train: Any
    val: Any
    test: Any
    accuracy: Callable[[nn.Module], float]


def check_baseline(*, model_name: str | None, data_name: str, checkpoint: str | None,
                   epochs: int | None = None, lr: float | None = None) -> None:
    """Everything `baseline()` will need, checked in milliseconds before it trains for minutes."""
    if (model_name is None) == (checkpoint is None):
        raise ConfigError("give --model NAME (a baseline is trained) or --checkpoint FILE, exactly one")
    check_data_name(data_name)
    if model_name is not None:
        check_model_name(model_name)
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ConfigError(f"--checkpoint {checkpoint!r} does not exist; give an artifact written by "
                              "`torchshrink train` or ts.save")
        given = [flag for flag, v in (("--epochs", epochs), ("--lr", lr)) if v is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} set how the baseline trains, but --checkpoint loads one; "
                              "drop them (fine-tuning is set in the recipe)")


def baseline(*, model_name: str | None, data_name: str, checkpoint: str | None = None, epochs: int | None = None,
             lr: float | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
             print_fn: Callable[[str], None] = print) -> Baseline:
    """Load `checkpoint`, or train `model_name` on `data_name` with its bundled recipe; the
    loaders use the same pipeline (random shifts) as that training, so fine-tuning matches."""
    import torchshrink as ts
    from torchshrink import data
    from torchshrink.train import seed_everything

    check_baseline(model_name=model_name, data_name=data_name, checkpoint=checkpoint, epochs=epochs, lr=lr)
    splits = data.load(data_name, seed=DATA_SEED)
    recipe = training_overrides(train_recipe(model_name or "lenet300"), epochs=epochs, lr=lr, batch_size=batch_size)
    train_loader, val_loader, _ = loaders(splits, recipe, seed)
    test = test_loader(splits)

    def accuracy(m: nn.Module) -> float:
        return float(ts.evaluate(m, test)["accuracy"])

    if checkpoint is not None:
        model = ts.load(checkpoint)
        print_fn(f"baseline: {checkpoint}")
    else:
        assert model_name is not None
        seed_everything(seed)
        model = build_model(model_name, splits.input_shape, splits.num_classes)
        fit_kw = fit_kwargs(recipe)
        fit_kw.update(epochs=int(recipe["epochs"]), seed=seed, progress=progress, desc=f"train {model_name}")
        print_fn(f"training {model_name} on {data_name} ({len(splits.train)} train images, "
                 f"{fit_kw['epochs']} epochs)...")
        ts.fit(model, train_loader, val=val_loader, **fit_kw)
    return Baseline(model, splits, train_loader, val_loader, test, accuracy)
