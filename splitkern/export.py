"""Split models that run anywhere: plain PyTorch, TorchScript, ``torch.export`` (.pt2) and ONNX.

A split model (:func:`splitkern.splitnet.split`, :func:`splitkern.load`) computes its split layers
with splitkern's custom ops (``torch.ops.splitkern.*``), so running it needs splitkern.
:func:`to_plain` rebuilds it from ``torch.nn`` modules and torch tensor ops only (same weights,
same outputs); :func:`export` writes that plain form in a format that loads with PyTorch alone
(``"plain"``: TorchScript, ``"pt2"``: ``torch.export``) or with ONNX Runtime (``"onnx"``);
:func:`check_export` reloads a file with its format's own loader and measures the error;
:func:`export_report` is what ``splitkern export --ckpt split.pt --format FMT --out FILE`` prints.

How a split layer becomes plain (every permutation is a fixed index buffer, skipped when it is
the identity): the input permutation (``index_select``), then either ONE ``nn.Conv2d(groups=G)``
(SplitConv2d) or ONE batched matmul (SplitLinear, ``einsum``) when all G groups have the same
non-zero sizes, or else one ``nn.Conv2d``/``nn.Linear`` per group on its input channels
(``narrow`` or ``index_select``), concatenated; a group with no inputs contributes its bias (zeros
without one), a group with no outputs contributes nothing; then the output permutation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from splitkern.ops._checks import is_identity

FORMATS = ("plain", "onnx", "pt2")
TOLERANCE = 1e-4  # max abs difference (fp32) an export may have from the split model
ONNX_OPSET = 18
_SUFFIXES = {"plain": ".pt", "onnx": ".onnx", "pt2": ".pt2"}
_LOADERS = {"plain": "torch.jit.load", "pt2": "torch.export.load(...).module()",
            "onnx": "onnxruntime.InferenceSession"}
_ONNX_HINT = "pip install splitkern[onnx]  (or: pip install onnx onnxscript onnxruntime)"


# ----------------------------------------------------------------------------------------------------------------
# plain modules


def _selector(index: torch.Tensor) -> tuple[int, int] | None:
    """(start, length) when ``index`` is the range start..start+length-1 (a ``narrow``), else None."""
    index = index.detach().cpu()
    if index.numel() == 0:
        return None
    start = int(index[0])
    return (start, index.numel()) if torch.equal(index, torch.arange(start, start + index.numel())) else None


class _PlainBlockDiagonal(nn.Module):
    """A SplitLinear/SplitConv2d from ``torch.nn`` modules and torch ops; :func:`_plain_layer` fx-traces it.

    Same forward as the split layer, original feature order on both sides: ``(..., in) -> (..., out)``
    (linear) or ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` (conv). Branches on Python attributes
    only (fixed at construction), so that ``torch.fx.symbolic_trace`` sees straight-line code.
    """

    def __init__(self, layer):
        super().__init__()
        from splitkern.nn import SplitConv2d

        self.conv = isinstance(layer, SplitConv2d)
        self.dim = 1 if self.conv else -1
        in_sizes, out_sizes = list(layer.in_sizes), list(layer.out_sizes)
        lay = layer.layout
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        factory = {"device": weight.device, "dtype": weight.dtype}
        grad = layer.weight.requires_grad
        in_index, out_index = layer.in_index.detach(), layer.out_index.detach()
        groups = len(in_sizes)
        self.gather = False  # permute the whole input into grouped order first
        self.mode = "ragged"
        self.pad = 0  # output channels of groups without inputs (appended, then permuted into place)
        order = list(range(lay.out_features))  # grouped output position of each computed channel

        if len(set(in_sizes)) == 1 and len(set(out_sizes)) == 1 and in_sizes[0] and out_sizes[0]:
            k, n = in_sizes[0], out_sizes[0]
            self.gather = not is_identity(in_index)
            if self.gather:
                self.register_buffer("in_perm", in_index.clone())
            if self.conv:
                self.mode = "single"
                self.body = self._conv(layer, groups * k, groups * n, groups, bias is not None, factory)
                self.body.weight.data.copy_(weight.view(groups * n, k, *layer.kernel_size))
                if bias is not None:
                    self.body.bias.data.copy_(bias)
            elif groups == 1:
                self.mode = "single"
                self.body = nn.Linear(k, n, bias=bias is not None, **factory)
                self.body.weight.data.copy_(weight.view(n, k))
                if bias is not None:
                    self.body.bias.data.copy_(bias)
            else:
                self.mode = "batched"
                self.groups, self.k = groups, k
                self.weight = nn.Parameter(weight.view(groups, n, k).clone())
                self.bias = None if bias is None else nn.Parameter(bias.clone())
        else:
            active = [g for g in range(groups) if in_sizes[g] and out_sizes[g]]
            bias_only = [g for g in range(groups) if out_sizes[g] and not in_sizes[g]]
            if not active:
                raise ValueError(f"{type(layer).__name__} with in_sizes={in_sizes}, out_sizes={out_sizes} has no "
                                 "group with both inputs and outputs (its output is constant): not supported")
            self.blocks = nn.ModuleList()
            self.selectors = []  # per block: (start, length) of a narrow, or None: index_select
            for g in active:
                k, n = in_sizes[g], out_sizes[g]
                block = (self._conv(layer, k, n, 1, bias is not None, factory) if self.conv
                         else nn.Linear(k, n, bias=bias is not None, **factory))
                block.weight.data.copy_(layer.block(g).detach())
                if bias is not None:
                    block.bias.data.copy_(bias[lay.out_offsets[g]:lay.out_offsets[g + 1]])
                self.blocks.append(block)
                index = in_index[lay.in_offsets[g]:lay.in_offsets[g + 1]]
                where = _selector(index)
                self.selectors.append(where)
                if where is None:
                    self.register_buffer(f"in_index_{len(self.blocks) - 1}", index.clone())
            order = [j for g in active + bias_only for j in range(lay.out_offsets[g], lay.out_offsets[g + 1])]
            self.pad = sum(out_sizes[g] for g in bias_only)
            self.computed = lay.out_features - self.pad
            if self.pad and bias is not None:
                self.pad_bias = nn.Parameter(torch.cat([bias[lay.out_offsets[g]:lay.out_offsets[g + 1]]
                                                        for g in bias_only]))
            else:
                self.pad_bias = None
        # computed channel p is grouped output order[p], i.e. original output out_index[order[p]]
        final = torch.argsort(out_index.cpu()[torch.tensor(order, dtype=torch.long)]).to(out_index.device)
        self.scatter = not is_identity(final)
        if self.scatter:
            self.register_buffer("out_perm", final)
        for p in self.parameters():
            p.requires_grad_(grad)

    @staticmethod
    def _conv(layer, k, n, groups, bias, factory) -> nn.Conv2d:
        return nn.Conv2d(k, n, layer.kernel_size, layer.stride, layer.padding, layer.dilation, groups=groups,
                         bias=bias, **factory)

    def forward(self, x):
        if self.gather:
            x = x.index_select(self.dim, self.in_perm)
        if self.mode == "single":
            y = self.body(x)
        elif self.mode == "batched":  # (..., G*k) -> (..., G, k) x (G, n, k) -> (..., G*n)
            y = torch.einsum("...gk,gnk->...gn", x.unflatten(-1, (self.groups, self.k)), self.weight).flatten(-2)
            if self.bias is not None:
                y = y + self.bias
        else:
            pieces = []
            for i, block in enumerate(self.blocks):
                where = self.selectors[i]
                xg = (x.index_select(self.dim, getattr(self, f"in_index_{i}")) if where is None
                      else x.narrow(self.dim, where[0], where[1]))
                pieces.append(block(xg))
            y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, self.dim)
            if self.pad:  # groups without inputs: their bias (zeros without one), appended
                y = F.pad(y, (0, 0, 0, 0, 0, self.pad) if self.conv else (0, self.pad))
                if self.pad_bias is not None:
                    full = F.pad(self.pad_bias, (self.computed, 0))
                    y = y + (full.view(-1, 1, 1) if self.conv else full)
        if self.scatter:
            y = y.index_select(self.dim, self.out_perm)
        return y


class _PlainPermute(nn.Module):
    """``x.index_select(1, index)``: splitkern's ChannelPermute (which keeps channels_last) in plain ops; a
    ``narrow`` when ``index`` is a range (a folded split's identity, or a subtree's slice of it)."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.range = _selector(index)
        self.register_buffer("index", index.detach().clone())

    def forward(self, x):
        if self.range is not None:
            return x.narrow(1, self.range[0], self.range[1])
        return x.index_select(1, self.index)


class _PlainTracer(torch.fx.Tracer):
    """fx tracing that keeps the plain layers (GraphModules) as submodules instead of inlining them."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, torch.fx.GraphModule) or super().is_leaf_module(m, module_qualified_name)


def _graph_module(module: nn.Module, name: str) -> torch.fx.GraphModule:
    """``module`` as a GraphModule: its code is torch ops on torch.nn submodules (no class of ours)."""
    gm = torch.fx.symbolic_trace(module)
    _forget_classes(gm.graph)
    gm.__class__.__name__ = name  # the generated class lives in torch.fx; the name is for repr only
    return gm


def _forget_classes(graph: torch.fx.Graph) -> None:
    """Drop the traced module stacks: they hold the traced classes (e.g. splitkern's WRN blocks)."""
    for node in graph.nodes:
        node.meta.pop("nn_module_stack", None)


def _splitkern_class(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "splitkern"


def _replace_layers(root: nn.Module) -> int:
    """Swap every split layer / channel permutation of ``root`` for a plain GraphModule; how many. Foldable
    BatchNorms and folding convs / linears become the torch class they extend (the plain layers fold nothing)."""
    from splitkern.nn._block_diagonal import BlockDiagonalLayer
    from splitkern.nn.fold import plain_module
    from splitkern.splitnet.convert import ChannelPermute

    replaced = 0
    for name, module in list(root.named_modules()):
        plain_module(module)
        if isinstance(module, BlockDiagonalLayer):
            plain = _graph_module(_PlainBlockDiagonal(module), "Plain" + type(module).__name__)
        elif isinstance(module, ChannelPermute):
            plain = _graph_module(_PlainPermute(module.index), "PlainChannelPermute")
        else:
            continue
        plain.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, child, plain)
        replaced += 1
    return replaced


def _check_plain_graph(gm: torch.fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_function" and getattr(target, "namespace", None) == "splitkern":
            raise TypeError(f"to_plain: the model calls the splitkern op {target} outside a split layer; "
                            "it cannot be made plain")
    for name, module in gm.named_modules():
        if name and _splitkern_class(module):
            raise TypeError(f"to_plain: module {name!r} ({type(module).__qualname__}) is splitkern's and "
                            "could not be made plain")


def to_plain(model: nn.Module) -> nn.Module:
    """A copy of split ``model`` built from ``torch.nn`` modules and torch tensor ops only, in eval mode.

    Every SplitLinear/SplitConv2d becomes a ``torch.fx.GraphModule`` of ``index_select`` (the input
    permutation, skipped when it is the identity), one ``nn.Conv2d(groups=G)`` / one batched matmul
    when all groups have equal non-zero sizes, else one ``nn.Conv2d``/``nn.Linear`` per group
    concatenated (a group without inputs contributes its bias, one without outputs nothing), and
    the output permutation. Stride, padding and dilation are kept. The channel permutation where the
    split starts becomes an ``index_select``. The whole model is then fx-traced into one GraphModule,
    so no module (containers such as the WRN blocks included) is a splitkern class; should the
    model's forward not be traceable (data-dependent control flow), the copy keeps its own
    container modules and a warning says so.

    Same inputs and outputs as ``model`` (e.g. ``(N, 3, 32, 32) -> (N, classes)``); in eval mode
    the outputs equal the split model's to fp32 rounding (<= 1e-4). Parameters are copies (the
    split model is not touched) and keep their ``requires_grad``.

    Raises ``TypeError`` if ``model`` is not an ``nn.Module`` or holds splitkern modules that
    cannot be made plain, ``ValueError`` if it has no split layer (not a split model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a split torch.nn.Module (splitkern.load / splitkern.splitnet.split), "
                        f"got {type(model).__name__}")
    from splitkern.nn._block_diagonal import BlockDiagonalLayer

    if not any(isinstance(m, BlockDiagonalLayer) for m in model.modules()):
        raise ValueError(f"model ({type(model).__name__}) has no SplitLinear/SplitConv2d layer: not a split model "
                         "(split it with splitkern.splitnet.split, or load a split.pt with splitkern.load)")
    if isinstance(model, BlockDiagonalLayer):
        return _graph_module(_PlainBlockDiagonal(model), "Plain" + type(model).__name__).eval()
    result = copy.deepcopy(model)
    _replace_layers(result)
    result.eval()
    try:
        graph = _PlainTracer().trace(result)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: keep the module structure
        warnings.warn(f"to_plain: {type(model).__name__}.forward could not be fx-traced ({exc}); the split layers "
                      "are plain but the model keeps its own container modules", stacklevel=2)
        return result
    _forget_classes(graph)
    gm = torch.fx.GraphModule(result, graph, class_name=type(model).__name__)
    _check_plain_graph(gm)
    return gm.eval()


# ----------------------------------------------------------------------------------------------------------------
# export and check


def _check_format(fmt) -> str:
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str, one of {FORMATS}, got {type(fmt).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return fmt


def _check_example(example) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a torch.Tensor input batch (e.g. (N, 3, 32, 32)), "
                        f"got {type(example).__name__}")
    if not example.dtype.is_floating_point:
        raise TypeError(f"example must be a floating-point tensor, got {example.dtype}")
    if example.dim() == 0 or example.shape[0] < 1:
        raise ValueError(f"example must be a batch with at least one sample, got shape {tuple(example.shape)}")
    return example.detach()


def _check_path(path, name: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def _require_onnx(*, runtime: bool = False):
    """onnx + onnxscript (exporting) or onnxruntime (running); ImportError with the install hint if missing."""
    names = ("onnxruntime",) if runtime else ("onnx", "onnxscript")
    modules = []
    for name in names:
        try:
            modules.append(__import__(name))
        except ImportError as exc:
            raise ImportError(f"format 'onnx' needs the {name} package, which is not installed: {_ONNX_HINT}") from exc
    return modules


@torch.no_grad()
def _eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients; the model's train/eval modes are restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _module_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' deprecation notices and info logging (TorchScript is deprecated in torch 2.9+)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated.*")
            warnings.filterwarnings("ignore", message="The TorchScript type system")
            yield
    finally:
        logger.setLevel(level)


def _pair(example: torch.Tensor) -> torch.Tensor:
    """A batch of two from ``example``: what the dynamic-batch exports trace with (a batch of one would be
    specialised, and ``torch.export`` stores its example inputs in the .pt2 file)."""
    return example[:2].clone() if example.shape[0] >= 2 else torch.cat([example, example])


def _export_onnx(plain: nn.Module, example: torch.Tensor, path: Path) -> None:
    _require_onnx()
    batch = torch.export.Dim("batch")
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=ONNX_OPSET, dynamo=True,
                  external_data=False, verbose=False)
    try:  # a dynamic batch dimension
        program = torch.onnx.export(plain, (_pair(example),), dynamic_shapes=({0: batch},), **kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. a model that specialises on the batch size
        warnings.warn(f"ONNX export with a dynamic batch failed ({type(exc).__name__}: {exc}); exporting "
                      f"for batch {example.shape[0]} only", stacklevel=3)
        program = torch.onnx.export(plain, (example,), **kwargs)
    program.save(str(path), external_data=False)


def _export_pt2(plain: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        program = torch.export.export(plain, (_pair(example),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"torch.export with a dynamic batch failed ({type(exc).__name__}: {exc}); exporting for "
                      f"batch {example.shape[0]} only", stacklevel=3)
        program = torch.export.export(plain, (example,))
    torch.export.save(program, path)


def _export_torchscript(plain: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        scripted = torch.jit.script(plain)
    except Exception as exc:  # noqa: BLE001 - scripting is stricter than tracing
        warnings.warn(f"torch.jit.script failed ({type(exc).__name__}: {exc}); tracing instead", stacklevel=3)
        scripted = torch.jit.trace(plain, (example,), check_trace=False)
    torch.jit.save(scripted, str(path))


def export(model: nn.Module, fmt: str, out, example: torch.Tensor) -> Path:
    """Write split ``model`` in its plain form (:func:`to_plain`, eval mode) to ``out``; return the path.

    ``fmt``:

    * ``"plain"``: TorchScript (``torch.jit.script`` of the plain model, ``torch.jit.trace`` with a
      warning should scripting fail; ``torch.jit.save``); load with ``torch.jit.load(path)``,
      PyTorch only (no splitkern import). TorchScript is deprecated since torch 2.9 but still works.
    * ``"pt2"``: ``torch.export.export`` of the plain model with a dynamic batch dimension (traced
      with two samples of ``example``, which the file stores), ``torch.export.save``; load with
      ``torch.export.load(path).module()``, PyTorch only.
    * ``"onnx"``: ONNX (opset 18, ``torch.onnx.export(dynamo=True)``, dynamic batch dimension, one
      file); run with ``onnxruntime.InferenceSession(path)``, input ``"input"``, output
      ``"output"``. Needs onnx and onnxscript (``pip install splitkern[onnx]``), else ``ImportError``.

    Should a dynamic batch fail to export, the file is specialised to ``example``'s batch size,
    with a warning.

    ``example`` is an input batch (e.g. ``(N, 3, 32, 32)`` for the CIFAR models) on the model's
    device; its shape (batch aside) is what the exports are specialised to. ``out`` is the file
    to write (parents are created). Raises ``ValueError``/``TypeError`` naming the bad argument.
    """
    fmt = _check_format(fmt)
    example = _check_example(example)
    path = _check_path(out, "out")
    if path.is_dir():
        raise ValueError(f"out must be a file path, {str(path)!r} is a directory")
    plain = to_plain(model)
    example = example.to(_module_device(plain))
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        _eval_output(plain, example)  # a wrong input fails here, with torch's own message
    with _quiet():
        if fmt == "plain":
            _export_torchscript(plain, example, path)
        elif fmt == "pt2":
            _export_pt2(plain, example, path)
        else:
            _export_onnx(plain, example, path)
    return path


def load_export(fmt: str, path):
    """The exported model as a callable ``f(x: torch.Tensor) -> torch.Tensor`` (outputs on CPU for ONNX).

    ``"plain"``: ``torch.jit.load``; ``"pt2"``: ``torch.export.load(path).module()``; ``"onnx"``: an
    ``onnxruntime.InferenceSession`` (CPU) fed with ``x`` as numpy. Neither torch loader imports splitkern.
    """
    fmt = _check_format(fmt)
    path = _check_path(path, "path")
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r}: no such file")
    if fmt == "plain":
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")
    if fmt == "pt2":
        return torch.export.load(path).module()
    (ort,) = _require_onnx(runtime=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    run.session = session
    return run


def check_export(fmt: str, path, model: nn.Module, example: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    """Max abs difference between the export at ``path`` and ``model`` (eval mode) on ``example``.

    Loads the file with its format's own loader (:func:`load_export`), runs it on CPU and compares
    with ``model(example)``. Raises ``ValueError`` if the outputs' shapes differ or the difference
    exceeds ``tolerance`` (1e-4 for fp32).
    """
    fmt = _check_format(fmt)
    example = _check_example(example)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return _compare(fmt, path, load_export(fmt, path), model, example, tolerance)


def _compare(fmt: str, path, loaded, model: nn.Module, example: torch.Tensor, tolerance: float) -> float:
    """:func:`check_export` on checked arguments and an export already loaded by :func:`load_export`."""
    expected = _eval_output(model, example.to(_module_device(model))).float().cpu()
    with torch.no_grad():
        if fmt == "onnx":
            actual = loaded(example)
        else:
            if fmt == "plain":
                loaded.eval()
            actual = loaded(example.to(_module_device(loaded)))
    actual = actual.float().cpu()
    if actual.shape != expected.shape:
        raise ValueError(f"{fmt} export {str(path)!r} outputs shape {tuple(actual.shape)}, the model "
                         f"{tuple(expected.shape)}")
    error = float((actual - expected).abs().max()) if actual.numel() else 0.0
    if not error <= tolerance:  # also catches NaN
        raise ValueError(f"{fmt} export {str(path)!r} differs from the model by {error:.3g} (max abs), "
                         f"more than the tolerance {tolerance:g}")
    return error


# ----------------------------------------------------------------------------------------------------------------
# report


def _latencies_ms(fns, x: torch.Tensor, repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time (ms) of each ``fn(x)`` over ``repeats`` calls after ``warmup`` calls, no gradients.

    The calls are interleaved (one of each per round), so that a load change on a shared machine
    affects every model alike.
    """
    times = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns:
                fn(x)
        for _ in range(repeats):
            for fn, spent in zip(fns, times):
                start = time.perf_counter()
                fn(x)
                spent.append(time.perf_counter() - start)
    return [1e3 * statistics.median(spent) for spent in times]


def _parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` outside normalisation layers: :func:`~splitkern.splitnet.count_parameters`'s
    convention (conv/linear weights and biases) for a plain model, whose batched layers hold raw parameters."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return sum(p.numel() for m in model.modules() if not isinstance(m, norms) for p in m.parameters(recurse=False))


def _dense_twin(split_model: nn.Module) -> nn.Module:
    """The unsplit model of the same class and config (fresh weights): for size and speed only."""
    import splitkern.models as models

    from splitkern.splitnet.plan import is_split, split_record

    record = split_record(split_model) if is_split(split_model) else None
    if record is None or not isinstance(getattr(models, record.model, None), type):
        raise ValueError("the checkpoint's model carries no split record naming a splitkern.models class")
    return getattr(models, record.model)(**record.config, split=None).eval()


def export_report(ckpt, fmt: str, out, image_size: int = 32, batch_size: int = 64, repeats: int = 5) -> str:
    """Export the split model saved at ``ckpt`` (:func:`splitkern.save`) and describe the result.

    Loads ``ckpt`` with :func:`splitkern.load`, writes ``fmt`` to ``out`` (:func:`export`) with an
    example batch ``(batch_size, 3, image_size, image_size)`` (seeded ``randn``), checks it
    (:func:`check_export`, max abs error printed) and tabulates parameters (conv/linear weights and
    biases) and median CPU latency (ms per batch of ``batch_size``, ``repeats`` timed calls after
    2 warm-up calls) of the exported model, the split model (:func:`splitkern.accelerate`: BatchNorm
    folded, strategies planned for the batch) and the dense model of the same class and config (fresh
    weights, for size and speed). Returns the text (what the CLI prints).
    """
    import splitkern
    from splitkern.splitnet import count_parameters

    fmt = _check_format(fmt)
    ckpt = _check_path(ckpt, "ckpt")
    for name, value in (("image_size", image_size), ("batch_size", batch_size), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if fmt == "onnx":
        _require_onnx()
        _require_onnx(runtime=True)
    split_model = splitkern.load(ckpt).eval()
    from splitkern.splitnet.plan import is_split, split_record

    if not is_split(split_model):
        raise ValueError(f"ckpt {str(ckpt)!r} holds a dense model, not a split one (export takes split.pt)")
    meta = split_record(split_model).meta()
    example = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    path = export(split_model, fmt, out, example)
    seconds = time.perf_counter() - start
    exported = load_export(fmt, path)  # once: checked, then timed
    error = _compare(fmt, path, exported, split_model, example, TOLERANCE)
    dense = _dense_twin(split_model)
    exported_params = _parameter_count(to_plain(split_model))  # what the file holds (BN excluded)
    latencies = _latencies_ms([exported, splitkern.accelerate(split_model, example), dense], example, repeats)
    rows = list(zip([f"exported ({fmt})", "split (splitkern)", "dense"],
                    [exported_params, count_parameters(split_model), count_parameters(dense)], latencies))
    size = path.stat().st_size
    lines = [f"checkpoint: {ckpt} ({meta['model']} {meta['config']}, split {meta['spec']})",
             f"exported: {fmt} -> {path} ({size / 2**20:.2f} MiB, {seconds:.1f} s); load with {_LOADERS[fmt]}",
             f"max abs error vs split model: {error:.3g} (batch {batch_size}, {image_size}x{image_size}, "
             f"tolerance {TOLERANCE:g})",
             f"CPU latency: median of {repeats} interleaved calls (after 2 warm-up), batch {batch_size}, "
             f"{torch.get_num_threads()} torch threads",
             f"{'model':<20} {'parameters':>12} {'latency ms':>11}"]
    lines += [f"{name:<20} {params:>12,} {ms:>11.2f}" for name, params, ms in rows]
    return "\n".join(lines)
