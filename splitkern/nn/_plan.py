"""A split layer's plan per input key: what one forward runs, with which weights, until when.

A call of :class:`~splitkern.nn.SplitLinear` / :class:`~splitkern.nn.SplitConv2d` is
layer -> plan -> kernel: :func:`plan_key` reads what decides the plan (device, dtype, shape,
memory format, whether autograd records, the autocast dtype, a forced backend), the layer looks
the :class:`Plan` up in its own dict and calls ``plan.run(x)``. Everything else (validation,
the strategy choice, backend selection, prepared weights, device tables) happens once, when a
plan is built for a new key.

``plan_key`` returns None where the registered custom op must run instead, because something
records or transforms the call: ``torch.compile``/``torch.export`` (dynamo), ``torch.jit``
tracing, functorch transforms (``vmap``, ``grad``, ``functional_call`` over stacked parameters),
tensor subclasses (fake tensors, ``DTensor``...) and empty inputs. During CUDA graph capture it returns
:data:`CAPTURING`: the layer replays a plan an eager call built (nothing can be timed or prepared in a
capture), else the op.
"""

from __future__ import annotations

import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from splitkern import backend

STRATEGIES = ("op", "grouped", "per_group", "masked_dense")
AUTO = "auto"
_TIMED_RUNS = 3  # timed calls of a candidate at least (unless slow) ...
_MAX_TIMED_RUNS = 20  # ... and at most
_FAST_BUDGET_S = 0.002  # a fast candidate gets as many timed calls as fit in this
_SLOW_CALL_S = 0.02  # a candidate slower than this is timed once after its warm-up


def check_strategy(name, argument: str = "strategy") -> str:
    """``name`` if it is ``"auto"`` or one of :data:`STRATEGIES`, else a ``TypeError``/``ValueError`` naming it."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str, got {type(name).__name__}")
    if name != AUTO and name not in STRATEGIES:
        raise ValueError(f"{argument}: unknown strategy {name!r}; choose 'auto' or one of {STRATEGIES}")
    return name


def _recorded() -> bool:
    """Whether a trace or a functorch transform is recording this call (it must see the registered op)."""
    return (torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
            or torch._C._are_functorch_transforms_active())


CAPTURING = ("capturing",)  # plan_key's answer during CUDA graph capture


def plan_key(x, weight: torch.Tensor, bias: torch.Tensor | None, feature_dim: int,
             capturing: bool = False) -> tuple | None:
    """``(device, dtype, channels_last, shape, grad, autocast_dtype, forced_backend)`` of a call of a layer
    (``weight``, ``bias``, features at ``feature_dim``) on ``x``, None where the registered op must run
    (see the module doc), :data:`CAPTURING` during a graph capture unless ``capturing`` (the caller knows).

    The first four are :func:`~splitkern.nn.strategy.input_key`; ``grad``: autograd records the call;
    ``autocast_dtype``: the dtype ``torch.autocast`` computes in on x's device (None when off).
    Every read here is a C call of ~0.1 us (``x.device.type`` alone costs 0.4: it is read only
    under autocast).
    """
    if type(x) is not torch.Tensor or _recorded() or not x.numel():
        return None
    if x.is_cuda and not capturing and torch.cuda.is_current_stream_capturing():
        return CAPTURING
    autocast = None
    if torch._C._is_any_autocast_enabled():
        kind = x.device.type
        if kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
            autocast = torch.get_autocast_dtype(kind)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    return (x.device, x.dtype, feature_dim == 1 and _channels_last(x), x.shape, grad, autocast,
            backend.forced_backend())


_AUTOCAST_DEVICES = ("cpu", "cuda")


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def key_format(key: tuple) -> torch.memory_format:
    """The memory format of the inputs a key describes."""
    return torch.channels_last if key[2] else torch.contiguous_format


def cast_dtype(dtype: torch.dtype, autocast: torch.dtype | None) -> torch.dtype:
    """What autocast (computing in ``autocast``, None when off) makes of a tensor of ``dtype``: floating
    tensors other than fp64 are cast, the rest kept."""
    return autocast if autocast is not None and dtype.is_floating_point and dtype != torch.float64 else dtype


def compute_dtype(key: tuple) -> torch.dtype:
    """The dtype the layer computes in for a key: autocast's for floating inputs it lowers, else the input's."""
    return cast_dtype(key[1], key[5])


def choice_key(key: tuple) -> tuple:
    """What a layer's ``chosen`` records a choice under: the input key (4 fields) for an fp inference call,
    with ``(grad, autocast_dtype)`` appended otherwise."""
    return key[:4] if not key[4] and key[5] is None else key[:6]


class Plan:
    """What a layer runs for one key: ``run(x)`` (strategy ``strategy``), valid while the layer's
    stamp equals ``stamp`` (None: the plan reads the live parameters and never goes stale); ``folds``: its
    prepared weights carry the BatchNorm after the layer (:mod:`splitkern.nn.fold`)."""

    __slots__ = ("strategy", "run", "stamp", "folds")

    def __init__(self, strategy: str, run, stamp, folds: bool = False):
        self.strategy, self.run, self.stamp, self.folds = strategy, run, stamp, folds

    def __repr__(self) -> str:
        weights = "live parameters" if self.stamp is None else "prepared weights" + (", BatchNorm folded"
                                                                                     if self.folds else "")
        return f"Plan({self.strategy!r}, {weights})"


# Bumped after every optimizer step: fused optimizers update parameters without moving their version
# counters, so prepared weights are also stamped with this.
_generation = [0]


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    _generation[0] += 1


register_optimizer_step_post_hook(_after_optimizer_step)


def generation() -> int:
    """How many optimizer steps this process has taken (part of every prepared weight's stamp)."""
    return _generation[0]


def tensor_state(t: torch.Tensor) -> tuple:
    """``(storage address, version)`` of ``t``: what changes when it is replaced or edited in place (an
    inference tensor has no version counter: None)."""
    try:
        return t.data_ptr(), t._version
    except RuntimeError:
        return t.data_ptr(), None


def stamp(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What prepared weights are valid for: the optimizer step count, the weight's storage and both
    parameters' versions (inference tensors have no version counter: their storage instead)."""
    try:
        return _generation[0], weight.data_ptr(), weight._version, None if bias is None else bias._version
    except RuntimeError:  # an inference tensor: no version counter, its storage instead
        return _generation[0], weight.data_ptr(), None, None if bias is None else bias.data_ptr()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_seconds(run, x) -> float:
    _synchronize(x.device)
    start = time.perf_counter()
    run(x)
    _synchronize(x.device)
    return time.perf_counter() - start


def _times(candidates: dict, x) -> dict[str, float]:
    """Fastest call of each of ``{name: run}`` on ``x``, timed in interleaved rounds after one warm-up call each
    (so a burst of load slows every candidate alike): a candidate slower than :data:`_SLOW_CALL_S` is timed once,
    a fast one up to :data:`_MAX_TIMED_RUNS` times, as many as fit in :data:`_FAST_BUDGET_S` (a 0.1 ms call
    taken 3 times is mostly noise)."""
    warm = {name: _call_seconds(run, x) for name, run in candidates.items()}
    runs = {name: 1 if w > _SLOW_CALL_S else min(_MAX_TIMED_RUNS, max(_TIMED_RUNS, int(_FAST_BUDGET_S / max(w, 1e-9))))
            for name, w in warm.items()}
    best = dict.fromkeys(candidates, float("inf"))
    for round_ in range(max(runs.values(), default=0)):
        for name, run in candidates.items():
            if round_ < runs[name]:
                best[name] = min(best[name], _call_seconds(run, x))
    return best


ONE_CALL = ("masked_dense", "grouped")  # one aten call per forward; the others run more (views, slices, a cat)
MARGIN = 0.9  # another strategy must take less than this share of the best one-call time to be chosen


def fastest(candidates: dict, x: torch.Tensor, one_call: tuple[str, ...] = ONE_CALL) -> tuple[str, dict[str, float]]:
    """``(name, seconds per candidate)`` of the fastest of ``{name: run}`` on ``x``, where a strategy not in
    ``one_call`` (the candidates that are one aten call for this layer) must beat the fastest of those by the
    :data:`MARGIN` (timing noise alone does not buy extra ops: they cost launches, graph nodes and host time the
    timing may not see)."""
    times = _times(candidates, x)
    best = min(times, key=times.get)
    one_call = [name for name in one_call if name in times]
    if best not in one_call and one_call:
        simplest = min(one_call, key=times.get)
        if times[best] >= MARGIN * times[simplest]:
            best = simplest
    return best, times


def with_backward(run, params):
    """``run`` followed by its backward (``torch.autograd.grad`` into ``params`` and x: no ``.grad`` is
    touched), for timing a training call."""
    def forward_backward(x):
        x = x.detach().requires_grad_(x.requires_grad)
        y = run(x)
        inputs = [p for p in params if p is not None and p.requires_grad] + ([x] if x.requires_grad else [])
        torch.autograd.grad(y, inputs, torch.ones_like(y))
    return forward_backward


_choices = [None]


def set_choices(choices) -> None:
    """``choices`` answers ``known(layer, key) -> strategy | None`` before ``"auto"`` times, and hears
    ``note(layer, key, strategy)`` after (installed by :mod:`splitkern.nn.strategy`, which owns the choice
    tables and the process-wide record of measured choices)."""
    _choices[0] = choices


def known_choice(layer, key: tuple) -> str | None:
    return None if _choices[0] is None else _choices[0].known(layer, key)


def note_choice(layer, key: tuple, name: str) -> None:
    if _choices[0] is not None:
        _choices[0].note(layer, key, name)
