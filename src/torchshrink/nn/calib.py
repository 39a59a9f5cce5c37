"""One sequential, block-wise calibration pass for every method that needs a layer's inputs
(GPTQ, AWQ, SparseGPT, Wanda): capture the first block's inputs once, then per block collect
the statistics its layers need, let the method compress them, and run the compressed block to
produce the next block's inputs (as GPTQ and SparseGPT do in their reference code). The cost
is a fixed number of block forwards per block and batch, so it grows linearly with depth, and
every block is measured on inputs that already carry the compression of the blocks before it.

Layers that read the same input tensor (q, k and v projections) share one statistics object,
so their Hessian X^T X is computed and held once.

A model with no known blocks (see `nn.blocks`) falls back to groups of layers in forward
order: each group is measured by a forward of the model that stops as soon as the group has
seen its input, after every earlier group was compressed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from torchshrink.batches import call_model, iter_calibration, output_tensors, to_device
from torchshrink.errors import ConfigError
from torchshrink.nn.blocks import find_blocks, hidden_of, with_hidden, without_caches
from torchshrink.nn.surgery import get_module, set_module

__all__ = ["InputStats", "input_features", "collect_stats", "calibrate_sequentially", "track_output_layers",
           "Propagate"]

Propagate = Literal["compressed", "original"]
# compress({layer: stats}) compresses (or swaps, through set_module) the layers it is given.
Compress = Callable[[dict[str, "InputStats"]], None]
Call = tuple[tuple[Any, ...], dict[str, Any]]  # a block's positional and keyword inputs


def input_features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer input as rows of the weight's column space: (rows, in_features) for Linear,
    (rows, in_channels*kh*kw) unfolded patches for Conv2d, (rows, in*k) for Conv1d."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ConfigError(f"grouped Conv2d (groups={module.groups}) is not supported by this criterion")
        cols = F.unfold(x, module.kernel_size, module.dilation,
                        module.padding if not isinstance(module.padding, str) else 0, module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(module, nn.Conv1d):
        if module.groups != 1:
            raise ConfigError(f"grouped Conv1d (groups={module.groups}) is not supported by this criterion")
        cols = F.unfold(x.unsqueeze(2), (1, module.kernel_size[0]), (1, module.dilation[0]),
                        (0, module.padding[0] if not isinstance(module.padding, str) else 0), (1, module.stride[0]))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ConfigError(f"criterion cannot read inputs of {type(module).__name__}")


class InputStats:
    """Per-input-column statistics of a layer's input over calibration data: row count, sum of
    |x|, max |x|, sum of x^2, nonzero count and (with `want_hessian`) X^T X."""

    def __init__(self, module: nn.Module, want_hessian: bool) -> None:
        self.module = module
        self.want_hessian = want_hessian
        self.rows = 0
        self.abs_sum: torch.Tensor | None = None
        self.abs_max: torch.Tensor | None = None
        self.sq_sum: torch.Tensor | None = None
        self.nonzero: torch.Tensor | None = None
        self.hessian: torch.Tensor | None = None
        # The module (name) whose output tensor is this input on every batch, when watched
        # (collect_stats(watch=...)): the op a per-input-channel scale can be folded into.
        self.producer: str | None = None

    def add(self, module: nn.Module, x: torch.Tensor) -> None:
        rows = input_features(module, x.detach().float())
        if self.abs_sum is None:
            n = rows.shape[1]
            self.abs_sum = rows.new_zeros(n)
            self.abs_max = rows.new_zeros(n)
            self.sq_sum = rows.new_zeros(n)
            self.nonzero = rows.new_zeros(n)
            if self.want_hessian:
                self.hessian = rows.new_zeros(n, n)
        a = rows.abs()
        self.abs_sum += a.sum(0)
        if rows.shape[0]:
            torch.maximum(self.abs_max, a.amax(0), out=self.abs_max)  # type: ignore[arg-type]
        self.sq_sum += rows.pow(2).sum(0)  # type: ignore[operator]
        self.nonzero += (rows != 0).float().sum(0)  # type: ignore[operator]
        if self.hessian is not None:
            self.hessian.addmm_(rows.T, rows)
        self.rows += rows.shape[0]

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.add(module, args[0])


@contextlib.contextmanager
def track_output_layers(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> Iterator[set[str]]:
    """Within the block, the first forward of `model` records which of `layers` produced a model
    output (that tensor or a view of it, e.g. classifier logits or a language model's head) into
    the yielded set. The layer outputs of that one forward are held until it returns, so no
    storage is freed and reused under a later tensor whose address would then match falsely."""
    found: set[str] = set()
    made: list[tuple[torch.Tensor, str]] = []
    done = [False]

    def remember(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if not done[0] and isinstance(out, torch.Tensor):
                made.append((out, name))
        return hook

    def at_output(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if done[0]:
            return
        ptrs = {t.untyped_storage().data_ptr() for t in output_tensors(out, strict=False) if t.numel()}
        found.update(n for t, n in made if t.numel() and t.untyped_storage().data_ptr() in ptrs)
        made.clear()
        done[0] = True

    handles = [m.register_forward_hook(remember(n)) for n, m in layers]
    handles.append(model.register_forward_hook(at_output))
    try:
        yield found
    finally:
        made.clear()
        for h in handles:
            h.remove()


class _Stop(Exception):
    """Raised inside a hook: this pass has what it needed."""


def collect_stats(runs: Iterable[Callable[[], Any]], pending: Sequence[tuple[str, nn.Module]], *,
                  hessian: bool, stop_at_new_input: bool, watch: Sequence[tuple[str, nn.Module]] = ()
                  ) -> tuple[dict[str, InputStats], list[Any]]:
    """Statistics of the `pending` layers over `runs` (each runs one batch), and each run's
    output (None for a run stopped early).

    `watch`: modules whose outputs are remembered during a run, so each statistics object
    records which of them produced its input tensor (`InputStats.producer`; None when none did,
    or not the same one on every batch).

    `stop_at_new_input`: a run stops at the first pending layer whose input is not the input of
    the first pending layer it reached, so only that group (and the layers reading the same
    tensor) is measured, at the cost of the forward up to there."""
    stats: dict[str, InputStats] = {}
    alias: dict[str, str] = {}  # layer -> the layer whose statistics it shares (same input tensor)
    state: dict[str, Any] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if stop_at_new_input:
                if state["x0"] is None:
                    state["x0"] = x
                elif x is not state["x0"]:
                    raise _Stop
            seen: list[tuple[torch.Tensor, str]] = state["seen"]
            owner = next((n for t, n in seen if t is x), None)
            if name not in stats and owner is not None:  # first sight, same tensor as another layer
                alias[name] = owner
                stats[name] = stats[owner]
                return
            if name in alias:
                if owner == alias[name]:
                    return  # the owner already counted this tensor
                stats[name] = copy.deepcopy(stats[name])  # inputs diverged: its own statistics from here
                del alias[name]
            made = next((n for t, n in state["made"] if t is x), None)
            if name not in stats:
                stats[name] = InputStats(module, hessian)
                stats[name].producer = made
            elif stats[name].producer != made:
                stats[name].producer = None
            stats[name].add(module, x)
            seen.append((x, name))
        return hook

    def remember(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, torch.Tensor):
                state["made"].append((out, name))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pending]
    handles += [m.register_forward_hook(remember(n)) for n, m in watch]
    outputs: list[Any] = []
    try:
        with torch.no_grad():
            for run in runs:
                state["x0"], state["seen"], state["made"] = None, [], []
                out = None
                with contextlib.suppress(_Stop):
                    out = run()
                outputs.append(out)
    finally:
        state.clear()
        for h in handles:
            h.remove()
    return stats, outputs


def _model_runs(model: nn.Module, calibration: Iterable[Any], limit: int | None,
                before: Callable[[int], None] | None = None) -> Iterator[Callable[[], Any]]:
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    for i, batch in enumerate(iter_calibration(calibration, limit)):
        def run(b: Any = batch, i: int = i) -> Any:
            if before is not None:
                before(i)
            return call_model(model, to_device(b, dev))
        yield run


def _never_reached(names: Sequence[str]) -> ConfigError:
    return ConfigError(f"calibration data never reached layers {list(names)}; check the loader is not empty "
                       "and that these layers run in the model's forward")


def _by_groups(runs: Callable[[], Iterable[Callable[[], Any]]], pending: list[tuple[str, nn.Module]],
               compress: Compress, hessian: bool) -> None:
    """Groups of layers in forward order, each measured after the ones before it were compressed."""
    while pending:
        stats, _ = collect_stats(runs(), pending, hessian=hessian, stop_at_new_input=True)
        if not stats:
            raise _never_reached([n for n, _ in pending])
        compress(stats)
        pending = [(n, m) for n, m in pending if n not in stats]


def _capture(model: nn.Module, first: nn.Module, calibration: Iterable[Any], limit: int | None,
             watch: Sequence[tuple[str, nn.Module]]) -> tuple[list[Call], set[str]]:
    """The first block's (args, kwargs) per batch, and which `watch` layers ran before it."""
    calls: list[Call] = []
    before: set[str] = set()

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(without_caches(tuple(args), dict(kwargs)))
        raise _Stop

    def mark(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        return lambda module, args: before.add(name)

    handles = [first.register_forward_pre_hook(grab, with_kwargs=True)]
    handles += [m.register_forward_pre_hook(mark(n)) for n, m in watch]
    try:
        with torch.no_grad():
            for run in _model_runs(model, calibration, limit):
                with contextlib.suppress(_Stop):
                    run()
    finally:
        for h in handles:
            h.remove()
    return calls, before


def _raise_stop(module: nn.Module, args: tuple[Any, ...]) -> None:
    raise _Stop


class _Replay(nn.Module):
    """Stands in for a block: returns the recorded output of the last block for the batch being
    run, so the layers after the blocks are measured without running the blocks again."""

    def __init__(self, outputs: list[Any], state: dict[str, int]) -> None:
        super().__init__()
        self.outputs, self.state = outputs, state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs[self.state["batch"]]


def calibrate_sequentially(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], calibration: Iterable[Any],
                           compress: Compress, *, limit: int | None, hessian: bool,
                           blocks: Sequence[str] | None = None, propagate: Propagate = "compressed",
                           true_sequential: bool = False, producers: bool = False) -> None:
    """Measure and compress `layers` of `model` block by block (see the module docstring).

    compress: called with {layer name: InputStats} for a set of layers, which it compresses in
        place or swaps through `set_module`; every later measurement sees the result.
    blocks: the model's block names in forward order (default: found by `nn.blocks.find_blocks`;
        none found: groups of layers, each measured by a forward that stops after the group).
    propagate: "compressed" runs each compressed block to produce the next block's inputs (one
        more forward per block); "original" passes on the outputs of the measuring forward.
    true_sequential: measure the layer groups inside a block one after another, each after the
        ones before it were compressed (a partial block forward per group), instead of all at once.
    producers: record, for the layers inside blocks, which module of the block produced their
        input (`InputStats.producer`, the full module name), for methods that fold a scale there.
    """
    pending = list(layers)
    if not pending:
        return
    was = model.training
    model.eval()
    try:
        names = find_blocks(model, blocks)

        def model_runs() -> Iterable[Callable[[], Any]]:
            return _model_runs(model, calibration, limit)

        if not names:
            _by_groups(model_runs, pending, compress, hessian)
            return
        _blockwise(model, names, pending, calibration, compress, limit=limit, hessian=hessian,
                   propagate=propagate, true_sequential=true_sequential, producers=producers)
    finally:
        model.train(was)


def _blockwise(model: nn.Module, names: list[str], pending: list[tuple[str, nn.Module]], calibration: Iterable[Any],
               compress: Compress, *, limit: int | None, hessian: bool, propagate: Propagate,
               true_sequential: bool, producers: bool = False) -> None:
    inside = [[(n, m) for n, m in pending if n.startswith(b + ".")] for b in names]
    claimed = {n for group in inside for n, _ in group}
    outside = [(n, m) for n, m in pending if n not in claimed]
    first = get_module(model, names[0])
    calls, before = _capture(model, first, calibration, limit, outside)
    if not calls:
        raise ConfigError(f"calibration data never reached the first block {names[0]!r}; check the loader is not "
                          "empty, or pass blocks=[...] naming modules the forward runs")
    prefix = [(n, m) for n, m in outside if n in before]
    if prefix:  # layers before the first block (a projection of the embeddings): they change its inputs
        handle = first.register_forward_pre_hook(_raise_stop)  # these passes end where the blocks begin
        try:
            _by_groups(lambda: _model_runs(model, calibration, limit), prefix, compress, hessian)
        finally:
            handle.remove()
        calls, _ = _capture(model, first, calibration, limit, [])
    left: list[tuple[str, nn.Module]] = []
    last: list[Any] = []
    for name, group in zip(names, inside):
        block = get_module(model, name)

        def runs(block: nn.Module = block, calls: list[Call] = calls) -> list[Callable[[], Any]]:
            return [functools.partial(block, *a, **k) for a, k in calls]

        outs: list[Any] | None = None
        todo = list(group)
        watch = list(block.named_modules(prefix=name)) if producers else []
        if todo and not true_sequential:
            stats, outs = collect_stats(runs(), todo, hessian=hessian, stop_at_new_input=False, watch=watch)
            if stats:
                compress(stats)
            todo = [(n, m) for n, m in todo if n not in stats]
            if propagate == "compressed" and stats:
                outs = None
            del stats  # this block's Hessians go before the next block's are collected
        while todo and true_sequential:
            stats, _ = collect_stats(runs(), todo, hessian=hessian, stop_at_new_input=True, watch=watch)
            if not stats:
                break
            compress(stats)
            todo = [(n, m) for n, m in todo if n not in stats]
            del stats
        left += todo  # never reached inside the block: measured with the layers after the blocks
        if outs is None:
            with torch.no_grad():
                outs = [run() for run in runs()]
        last = outs
        calls = [with_hidden(a, k, hidden_of(o)) for (a, k), o in zip(calls, outs)]
    tail = [(n, m) for n, m in outside if n not in before] + left
    if not tail:
        return
    state = {"batch": 0}

    def at(i: int) -> None:
        state["batch"] = i

    originals = {n: set_module(model, n, _Replay(last, state)) for n in names}
    try:
        _by_groups(lambda: _model_runs(model, calibration, limit, before=at), tail, compress, hessian)
    finally:
        for n, m in originals.items():
            set_module(model, n, m)
