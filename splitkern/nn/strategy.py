"""How a split layer runs a forward that autograd does not record: its execution strategy.

A :class:`~splitkern.nn.SplitLinear` or :class:`~splitkern.nn.SplitConv2d` computes one
function; at small shapes *how* it is computed costs more than the arithmetic (the op's
per-call checks and dispatch, a per-group loop, a permute at the split boundary, a weight
reordered on every call). Without autograd (``torch.no_grad()``, ``inference_mode``, or no
tensor that requires grad) a layer runs one of :data:`STRATEGIES`:

* ``"op"``: the splitkern op (:func:`splitkern.ops.block_diag_mm` / ``grouped_conv``),
  whose backend picks the kernel (Triton's ragged kernels on CUDA, the reference on CPU).
  What the layer always runs under autograd.
* ``"grouped"``: one aten call over all groups (``conv2d(groups=G)`` / ``baddbmm``);
  equal groups only.
* ``"per_group"``: one aten call per group, concatenated.
* ``"masked_dense"``: one dense aten call on the block-diagonal weight with zeros between
  groups, the layer's permutations folded into its rows and columns. It costs what the dense
  layer it came from costs, so it is the floor a split model never falls below.

Every strategy computes the same function (to the rounding of a different summation order).
The non-op strategies use weights prepared once per (strategy, device, dtype, memory format)
and rebuilt only when a parameter or index changes (its version counter moves).

Choice: ``layer.strategy`` is ``"auto"`` (default) or one of :data:`STRATEGIES`. ``"auto"``
times every candidate on the first call with a new input key (device, dtype, memory format,
shape), as ``cudnn.benchmark`` does, and keeps the fastest for that key (``layer.chosen``).
:func:`plan_strategies` does that ahead of time for an example input; :func:`set_strategy`
forces one strategy on every split layer of a model; :func:`strategies` lists the choices.
The op runs instead of any strategy under ``torch.compile`` (the op is what it traces), under
``torch.autocast``, for an empty batch, and when a backend is forced (:func:`splitkern.use_backend`
or ``SPLITKERN_BACKEND``: a forced backend means the op on that backend).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from splitkern import backend
from splitkern._conv import memory_format

STRATEGIES = ("op", "grouped", "per_group", "masked_dense")
AUTO = "auto"
_TIMED_RUNS = 3
_SLOW_CALL_S = 0.02  # a candidate slower than this is timed once after its warm-up


def check_strategy(name, argument: str = "strategy") -> str:
    """``name`` if it is ``"auto"`` or one of :data:`STRATEGIES`, else a ``TypeError``/``ValueError`` naming it."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str, got {type(name).__name__}")
    if name != AUTO and name not in STRATEGIES:
        raise ValueError(f"{argument}: unknown strategy {name!r}; choose 'auto' or one of {STRATEGIES}")
    return name


def input_key(x: torch.Tensor) -> tuple:
    """What a choice is cached under: ``(device, dtype, channels_last, shape)`` of the input (a bool,
    not a ``torch.memory_format``: ``torch.save`` cannot pickle those)."""
    return (x.device, x.dtype, memory_format(x) == torch.channels_last, tuple(x.shape))


def key_format(key: tuple) -> torch.memory_format:
    """The memory format of the inputs an :func:`input_key` describes."""
    return torch.channels_last if key[2] else torch.contiguous_format


def fast_path_applies(layer: nn.Module, x) -> bool:
    """Whether ``layer``'s forward on ``x`` may run a strategy instead of the op (see the module doc)."""
    if layer.strategy == "op" or not isinstance(x, torch.Tensor) or x.numel() == 0:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters(False))):
        return False
    if torch.compiler.is_compiling() or backend.forced_backend() is not None:
        return False
    device = x.device.type
    return not (device in ("cpu", "cuda") and torch.is_autocast_enabled(device))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(run, x) -> float:
    """Fastest of a few timed calls after one warm-up (one when a call is slow)."""
    _synchronize(x.device)
    start = time.perf_counter()
    run(x)
    _synchronize(x.device)
    warm = time.perf_counter() - start
    best = float("inf")
    for _ in range(1 if warm > _SLOW_CALL_S else _TIMED_RUNS):
        start = time.perf_counter()
        run(x)
        _synchronize(x.device)
        best = min(best, time.perf_counter() - start)
    return best


def fastest(candidates: dict, x: torch.Tensor) -> tuple[str, dict[str, float]]:
    """``(name, seconds per candidate)`` of the fastest of ``{name: run}`` on ``x``."""
    times = {name: _seconds(run, x) for name, run in candidates.items()}
    return min(times, key=times.get), times


def split_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every split layer (SplitLinear/SplitConv2d) of ``model`` by module name."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, BlockDiagonalLayer)}


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
