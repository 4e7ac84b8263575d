"""How a split layer computes its forward: its execution strategy, and the model-wide tools around it.

A :class:`~splitkern.nn.SplitLinear` or :class:`~splitkern.nn.SplitConv2d` computes one
function; at small shapes *how* it is computed costs more than the arithmetic (a per-group
loop, a permute at the split boundary, a weight reordered on every call). A layer runs one of
:data:`STRATEGIES`, with autograd recording or not:

* ``"op"``: the splitkern op's kernels (:func:`splitkern.ops.block_diag_mm` / ``grouped_conv``) on
  the backend :mod:`splitkern.backend` picks (Triton's ragged kernels on CUDA, the reference on
  CPU), called directly (under autograd through the op's eager ``autograd.Function``); bit for
  bit the registered op.
* ``"grouped"``: one aten call over all groups (``conv2d(groups=G)`` / ``baddbmm``);
  equal groups only.
* ``"per_group"``: one aten call per group, concatenated.
* ``"masked_dense"``: one dense aten call on the block-diagonal weight with zeros between
  groups, the layer's permutations folded into its rows and columns. It costs what the dense
  layer it came from costs, so it is the floor a split model never falls below.

Every strategy computes the same function (to the rounding of a different summation order) and
its gradients. Without autograd the strategies use weights prepared once per key (in the compute
dtype, autocast's included, and memory format) and rebuilt when a parameter changes; under
autograd they compute from the live parameters.

Choice: ``layer.strategy`` is ``"auto"`` (default) or one of :data:`STRATEGIES`. ``"auto"``
times every candidate on the first call with a new key (device, dtype, memory format, shape,
whether autograd records (then forward and backward are timed), autocast dtype), as
``cudnn.benchmark`` does, and keeps the fastest (``layer.chosen``); like ``cudnn.benchmark``'s cache, the
choice is also recorded for the process, so every later layer of the same kind, sizes, geometry, bias and
permutations on such inputs takes it without timing (:func:`forget_measured_choices` clears the record).
:func:`plan_strategies` does that ahead of time for an example input; :func:`set_strategy` forces one
strategy on every split layer of a model; :func:`strategies` lists the choices.

Choice tables: :func:`choice_table` writes a model's inference choices as JSON-ready rows keyed by
what decides them (layer kind, group sizes, geometry, device name, dtype, memory format, input
shape), :func:`apply_choice_table` gives them to another model, and with
``SPLITKERN_STRATEGY_TABLE=FILE`` every ``"auto"`` layer takes a matching row instead of timing (a
GPU run of ``benchmarks/bench_split_inference.py`` writes such a file for its GPU).
The registered op runs instead of any strategy under ``torch.compile``/``torch.export``, ``torch.jit``
tracing and functorch transforms (they trace or batch the op on the parameters), on tensor
subclasses (fake tensors) and for an empty batch; a forced backend (:func:`splitkern.use_backend` or
``SPLITKERN_BACKEND``) means the ``"op"`` strategy on that backend. During CUDA graph capture a layer
replays the plan an eager call built for the same key (its strategy and prepared weights, which the
graph's owner must keep: :func:`splitkern.accelerate` and ``StreamParallel`` do), else the op.

``"auto"`` prefers one-call strategies (``masked_dense``, and ``grouped`` for a conv): another is chosen
only when it takes less than ``_plan.MARGIN`` (0.9) of the fastest one-call strategy's time. In eval mode
without autograd, the prepared weights also carry the BatchNorm a layer feeds (:mod:`splitkern.nn.fold`).

Prepared weights follow in-place updates through the tensors' version counters and every
optimizer step (fused optimizers do not move the counters); an edit through ``.data`` moves
neither: call ``layer.refresh()`` (or :func:`refresh`) after one.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import threading
from pathlib import Path

import torch
from torch import nn

from splitkern._conv import memory_format
from splitkern.nn import _plan
from splitkern.nn._plan import AUTO, STRATEGIES, check_strategy, fastest, generation, key_format  # noqa: F401

__all__ = ["AUTO", "STRATEGIES", "apply_choice_table", "check_strategy", "choice_table", "fastest",
           "forget_measured_choices", "generation", "input_key", "key_format", "plan_strategies", "plans_in_use",
           "refresh", "set_strategy", "split_layers", "strategies"]


def input_key(x: torch.Tensor) -> tuple:
    """What an inference choice is cached under: ``(device, dtype, channels_last, shape)`` of the input (a
    bool, not a ``torch.memory_format``: ``torch.save`` cannot pickle those)."""
    return (x.device, x.dtype, memory_format(x) == torch.channels_last, tuple(x.shape))


def refresh(model: nn.Module) -> nn.Module:
    """Drop every split layer's prepared weights (after editing parameters through ``.data``)."""
    for layer in split_layers(model).values():
        layer.refresh()
    return model


def split_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every split layer (SplitLinear/SplitConv2d) of ``model`` by module name."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, BlockDiagonalLayer)}


def plans_in_use(model: nn.Module) -> list[dict]:
    """Every split layer's plans as they are now: what a CUDA graph recorded now replays. Whoever keeps the graph
    keeps this list with it, so the prepared weights it reads outlive a layer's refresh."""
    return [layer.plans for layer in split_layers(model).values()]


def set_strategy(model: nn.Module, name: str) -> nn.Module:
    """Set ``strategy = name`` (``"auto"`` or one of :data:`STRATEGIES`) on every split layer of ``model``."""
    check_strategy(name, "name")
    for layer in split_layers(model).values():
        layer.strategy = name
    return model


@torch.no_grad()
def plan_strategies(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Run ``model(example)`` without gradients so that every ``"auto"`` split layer chooses its strategy
    for the shapes it sees; returns :func:`strategies` for those shapes (module name -> strategy).

    Call it on the device, dtype, memory format and batch size the model will serve (a new one
    re-plans on its first call anyway). The model's train/eval mode is left as it was.
    """
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a tensor (an input batch), got {type(example).__name__}")
    seen = {}

    def note_input(name):
        def hook(module, args):  # returns None: the arguments are left as they are
            seen.setdefault(name, input_key(args[0]))
        return hook
    hooks = [layer.register_forward_pre_hook(note_input(name)) for name, layer in split_layers(model).items()]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    layers = split_layers(model)
    return {name: layers[name].strategy_for(key) for name, key in seen.items()}


def strategies(model: nn.Module) -> dict[str, dict[tuple, str]]:
    """Per split layer (module name): ``{input key: strategy}`` of the choices made so far (a forced
    strategy shows as ``{"*": name}``)."""
    return {name: ({"*": layer.strategy} if layer.strategy != AUTO else dict(layer.chosen))
            for name, layer in split_layers(model).items()}


TABLE_ENV = "SPLITKERN_STRATEGY_TABLE"
_MATCHED = ("layer", "in_sizes", "out_sizes", "geometry", "device", "dtype", "channels_last", "shape")


def device_name(device: torch.device) -> str:
    """What a choice is valid for: the GPU's name, or this CPU's architecture and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}-{platform.machine()}-{os.cpu_count()}cores"


def _row(layer, key: tuple) -> dict:
    device, dtype, channels_last, shape = key
    return {"layer": type(layer).__name__, "in_sizes": list(layer.in_sizes), "out_sizes": list(layer.out_sizes),
            "geometry": [list(g) for g in getattr(layer, "_geometry", ())], "device": device_name(device),
            "dtype": str(dtype).removeprefix("torch."), "channels_last": channels_last, "shape": list(shape)}


def choice_table(model: nn.Module) -> list[dict]:
    """Every ``"auto"`` choice made so far by ``model``'s split layers, as JSON-ready rows (one per layer
    kind, sizes, geometry and input key; duplicates merged)."""
    rows = {}
    for layer in split_layers(model).values():
        for key, name in layer.chosen.items():
            row = _row(layer, key)
            rows[json.dumps(row, sort_keys=True)] = {**row, "strategy": name}
    return list(rows.values())


def _check_rows(rows, source: str) -> list[dict]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(_MATCHED) | {"strategy"} <= set(r)
                                             for r in rows):
        raise ValueError(f"{source}: a strategy choice table is a list of rows with keys "
                         f"{sorted((*_MATCHED, 'strategy'))} (see splitkern.nn.strategy.choice_table)")
    for r in rows:
        check_strategy(r["strategy"], f"{source}: strategy")
    return rows


def _index(rows) -> dict[str, str]:
    return {json.dumps({k: r[k] for k in _MATCHED}, sort_keys=True): r["strategy"] for r in rows}


def table_choice(layer, key: tuple, rows) -> str | None:
    """The strategy ``rows`` (a choice table) holds for ``layer`` on inputs like ``key``, or None."""
    name = _index(rows).get(json.dumps(_row(layer, key), sort_keys=True))
    return name if name in layer.candidates() else None


class _Choices:
    """What ``"auto"`` consults before timing: the active choice table (fp inference choices), then this
    process's measured choices, keyed like a table row plus whether autograd records, the autocast dtype and
    the layer's bias and permutations. The record is process-wide, as ``cudnn.benchmark``'s: every layer
    like one already timed runs the same strategy (two copies of a model compute the same bits, a model
    built again resumes training on the same strategies) and is not timed again."""

    def __init__(self):
        self.measured: dict[str, str] = {}

    @staticmethod
    def _signature(layer, key: tuple) -> str:
        row = {**_row(layer, key[:4]), "grad": key[4], "autocast": str(key[5]), "bias": layer.bias is not None,
               "grouped_input": layer.grouped_input, "grouped_output": layer.grouped_output}
        return json.dumps(row, sort_keys=True)

    def known(self, layer, key: tuple) -> str | None:
        rows = active_table()
        if rows is not None and len(_plan.choice_key(key)) == 4:
            name = table_choice(layer, key[:4], rows)
            if name is not None:
                return name
        name = self.measured.get(self._signature(layer, key))
        return name if name in layer.candidates() else None

    def note(self, layer, key: tuple, name: str) -> None:
        self.measured[self._signature(layer, key)] = name


measured_choices = _Choices()
_plan.set_choices(measured_choices)


def forget_measured_choices() -> None:
    """Forget the strategies this process measured: the next ``"auto"`` layers time their candidates again."""
    measured_choices.measured.clear()


def apply_choice_table(model: nn.Module, rows: list[dict], example: torch.Tensor | None = None) -> int:
    """Give ``model``'s ``"auto"`` split layers the choices of a :func:`choice_table` for the input keys they
    have met (or, with ``example``, will meet on it: their shapes are traced without timing). Returns how
    many choices were taken; keys without a matching row are still timed when first met."""
    rows = _check_rows(rows, "rows")
    keys = {name: set(layer.chosen) for name, layer in split_layers(model).items()}
    if example is not None:
        with torch.no_grad(), _from_table(rows):
            model(example)
        return sum(len(set(layer.chosen) - keys[name]) for name, layer in split_layers(model).items())
    taken = 0
    for layer in split_layers(model).values():
        for key in list(layer.chosen):
            name = table_choice(layer, key, rows)
            if name is not None:
                layer.chosen[key] = name
                taken += 1
    return taken


_local = threading.local()  # this thread's tables in use by apply_choice_table


def _overrides() -> list:
    if not hasattr(_local, "tables"):
        _local.tables = []
    return _local.tables


class _from_table:
    """Within the block (in this thread), a new key takes ``rows``' choice (timing only where no row matches)."""

    def __init__(self, rows):
        self.rows = rows

    def __enter__(self):
        _overrides().append(self.rows)

    def __exit__(self, *exc):
        _overrides().pop()


@functools.lru_cache(maxsize=8)
def _read_table(path: str, mtime: float) -> list[dict]:
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{TABLE_ENV}={path}: cannot read a strategy choice table ({exc})") from None
    return _check_rows(rows, f"{TABLE_ENV}={path}")


def active_table() -> list[dict] | None:
    """The choice table ``"auto"`` consults before timing: an :func:`apply_choice_table` in progress, else
    the file named by ``SPLITKERN_STRATEGY_TABLE``, else None."""
    if _overrides():
        return _overrides()[-1]
    path = os.environ.get(TABLE_ENV, "").strip()
    if not path:
        return None
    if not os.path.isfile(path):
        raise ValueError(f"{TABLE_ENV}={path}: no such file")
    return _read_table(path, os.path.getmtime(path))
