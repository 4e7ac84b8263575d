"""Subtrees on one process: several devices (DeviceParallel) or CUDA streams / graphs (StreamParallel)."""

from __future__ import annotations

import torch
from torch import nn

from splitkern.inference import CudaGraphs
from splitkern.nn.strategy import plans_in_use
from splitkern.parallel.distributed import balanced_placement, check_placement
from splitkern.parallel.subtrees import SubtreeSet


def _device(spec) -> torch.device:
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {spec!r}: {exc}") from None
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} does not exist here ({torch.cuda.device_count()} CUDA devices)")
    elif device.type != "cpu":
        raise ValueError(f"device {spec!r}: only 'cpu' and 'cuda[:i]' devices are supported")
    return device


def _copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, asynchronously unless the copy lands on the CPU (a non-blocking copy
    to host memory returns before the data has arrived)."""
    return tensor.to(device, non_blocking=device.type != "cpu")


class DeviceParallel(nn.Module):
    """Trunk on ``devices[0]``, subtrees on the devices a placement gives them, logits gathered on ``devices[0]``.

    Args:
        split_model: a model from :func:`splitkern.splitnet.split`.
        devices: e.g. ``["cuda:0", "cuda:1"]`` (CPU devices work too, for testing).
        placement: device index of each subtree; default: balanced by FLOPs.
        example: an input batch, to count FLOPs for the default placement.

    Features are copied to each subtree's device without blocking; kernels on different
    GPUs overlap because each device's work is queued before any result is read back.
    Each device holds only what it runs (the trunk copy on ``devices[0]``, the subtrees
    placed on it); ``split_model`` itself is neither kept nor moved.
    """

    def __init__(self, split_model, devices, placement=None, example: torch.Tensor | None = None):
        super().__init__()
        if not devices:
            raise ValueError("devices must name at least one device")
        self.devices = [_device(d) for d in devices]
        self.set = SubtreeSet(split_model, example)
        if placement is None:
            placement = balanced_placement(self.set.costs, len(self.devices))
        self.placement = check_placement(placement, len(self.set.parts), len(self.devices))
        self.set.trunk_model.to(self.devices[0])  # the set's own copy, without the subtrees
        for part, where in zip(self.set.parts, self.placement):
            part.to(self.devices[where])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        home = self.devices[0]
        features = self.set.trunk(x.to(home))
        outs = [self.set.branch(i, _copy(features, self.devices[where])) for i, where in enumerate(self.placement)]
        out = features.new_zeros(x.shape[0], self.set.num_classes)
        for classes, logits in zip(self.set.classes_on(home), outs):
            out[:, classes] = _copy(logits, home)
        return out


class StreamParallel(nn.Module):
    """One GPU: the trunk on the current stream, each subtree on its own CUDA stream.

    Inference only: the forward runs under ``torch.no_grad()``. Input ``(B, C, H, W)`` on
    the model's GPU; output ``(B, num_classes)`` logits in class order.

    ``capture=True`` records the whole forward (side streams forked from and rejoined to
    the capture stream) in a CUDA graph per input shape, dtype and layout, and replays it
    (each split layer on the strategy and prepared weights its warm-up call chose: a graph
    replays the weights as they were when it was recorded); the returned logits are a fresh
    tensor each call. Raises ``RuntimeError`` without CUDA.
    """

    def __init__(self, split_model, capture: bool = False, example: torch.Tensor | None = None):
        super().__init__()
        if not torch.cuda.is_available():
            raise RuntimeError("StreamParallel needs a CUDA device (use the split model itself on CPU)")
        self.set = SubtreeSet(split_model, example)
        device = next(split_model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"move the split model to a CUDA device first (it is on {device})")
        self.device = device
        self.streams = [torch.cuda.Stream(device) for _ in self.set.parts]
        self.set.classes_on(device)  # copied before any graph capture
        self.capture = capture
        self._graphs: dict = {}

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        main = torch.cuda.current_stream()
        features = self.set.trunk(x)
        outs = []
        for i, stream in enumerate(self.streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outs.append(self.set.branch(i, features))
        out = features.new_zeros(x.shape[0], self.set.num_classes)
        for stream, classes, logits in zip(self.streams, self.set.classes_on(out.device), outs):
            main.wait_stream(stream)
            features.record_stream(stream)
            logits.record_stream(main)
            out[:, classes] = logits
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device}; the model is on {self.device}")
        with torch.cuda.device(self.device):  # streams, capture and replay on the model's GPU, not the current one
            return self._run(x) if not self.capture else self._replay(x)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.stride(), x.dtype)
        if key not in self._graphs:
            replay, _ = CudaGraphs().record(self._run, x)
            self._graphs[key] = (replay, plans_in_use(self))  # the prepared weights the graph reads
        return self._graphs[key][0](x).clone()
