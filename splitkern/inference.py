"""One call for the fast inference model: :func:`accelerate`.

``fast = splitkern.accelerate(model, example)`` puts ``model`` in eval mode, links every split
layer, ``nn.Conv2d`` and ``nn.Linear`` to the BatchNorm after it (:func:`splitkern.nn.fold.fold_batchnorm`),
lets every ``"auto"`` split layer choose its strategy on ``example`` (:func:`splitkern.nn.plan_strategies`), and wraps
the model in :class:`Accelerated`. On CUDA, :class:`Accelerated` records a CUDA graph per no-grad
input key (shape, strides, dtype, device) once that key repeats, and replays it; the graph replays
the strategies the layers chose, on their prepared weights. Everything else runs the model eagerly:
a key met once, calls with autograd recording, training mode, CPU tensors.

A graph is valid while the model is unchanged: every parameter and buffer's storage and version and
the optimizer step count are checked before a replay (a few microseconds); any change drops every
graph and the call runs eagerly (a later repeat captures again). An edit through ``.data`` moves no
version: call :meth:`Accelerated.reset` after one.
"""

from __future__ import annotations

import torch
from torch import nn

from splitkern.nn import _plan, plan_strategies
from splitkern.nn.fold import fold_batchnorm
from splitkern.nn.strategy import plans_in_use


class CudaGraphs:
    """How :class:`Accelerated` records and replays: ``record(run, x) -> (replay, output)``, where
    ``replay(x)`` copies ``x`` into the graph's input, replays it and returns ``output`` (the graph's
    output tensor, overwritten by every replay)."""

    def record(self, run, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: plans, allocations, autotuning
            run(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run(static_in)

        def replay(x):
            static_in.copy_(x)
            graph.replay()
            return static_out
        return replay, static_out


class Accelerated(nn.Module):
    """``model`` for inference: eager where it must be, a CUDA graph per repeated no-grad input key where it
    can (see :mod:`splitkern.inference`). ``model`` is a submodule (``state_dict`` keys gain ``model.``).

    ``capture``: record graphs (default: on CUDA). ``graphs``: the recorder (default :class:`CudaGraphs`).
    Inputs and outputs are those of ``model``; a replay returns a fresh tensor (a copy of the graph's output);
    a model that returns anything but one tensor always runs eagerly.
    """

    def __init__(self, model: nn.Module, capture: bool = True, graphs=None):
        super().__init__()
        self.model = model
        self.capture = capture
        self.graphs = graphs if graphs is not None else CudaGraphs()
        self._seen: set = set()
        self._replays: dict = {}  # key -> (replay, plans kept alive for the graph)
        self._signature = None

    def reset(self) -> None:
        """Drop every recorded graph (after an edit through ``.data``, which no version counter sees)."""
        self._seen, self._replays, self._signature = set(), {}, None

    def _model_signature(self) -> tuple:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return _plan.generation(), self.model.training, tuple(_plan.tensor_state(t) for t in tensors)

    def _graphable(self, x) -> bool:
        if not self.capture or type(x) is not torch.Tensor or self.model.training or torch.is_grad_enabled():
            return False
        return x.is_cuda or not isinstance(self.graphs, CudaGraphs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._graphable(x):
            return self.model(x)
        signature = self._model_signature()
        if signature != self._signature:
            self.reset()
            self._signature = signature
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        found = self._replays.get(key)
        if found is not None:
            return found[0](x).clone()
        if key not in self._seen:
            out = self.model(x)
            if type(out) is torch.Tensor:  # a graph replays into one output tensor; other outputs stay eager
                self._seen.add(key)
            return out
        replay, _ = self.graphs.record(self.model, x)
        self._replays[key] = (replay, plans_in_use(self.model))
        self._signature = self._model_signature()  # the warm-up may have built plans, not moved parameters
        return replay(x).clone()

    @property
    def recorded(self) -> list[tuple]:
        """The input keys ``(shape, strides, dtype, device)`` that replay a graph."""
        return list(self._replays)


@torch.no_grad()
def accelerate(model: nn.Module, example: torch.Tensor, *, capture: bool | None = None,
               fold: bool = True) -> Accelerated:
    """``model`` (a split model, or any model with split layers) made fast for inference on inputs like
    ``example``: eval mode, BatchNorms folded into the layers before them (``fold``), every ``"auto"``
    layer's strategy chosen on ``example``, and (``capture``, default on CUDA) a CUDA graph per repeated
    no-grad input key. Returns an :class:`Accelerated` module wrapping ``model`` (which it modifies: mode,
    fold links and plans; not its parameters).

    ``example``: a batch on the device, dtype, memory format and batch size the model will serve (other
    keys run eagerly and plan on first sight). Works on any ``nn.Module``: without split layers only the
    graphs apply.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a tensor (an input batch), got {type(example).__name__}")
    if capture is not None and not isinstance(capture, bool):
        raise TypeError(f"capture must be a bool or None, got {type(capture).__name__}")
    model.eval()
    if fold:
        fold_batchnorm(model)
    plan_strategies(model, example)
    return Accelerated(model, capture=example.is_cuda if capture is None else capture)


__all__ = ["Accelerated", "CudaGraphs", "accelerate"]
