"""The one place that decides which backend runs an op.

Backends:

* ``reference``: pure PyTorch (:mod:`splitkern.reference`); every device and dtype.
* ``triton``: Triton kernels (:mod:`splitkern.triton`); CUDA tensors, or CPU tensors
  when the process was started with ``TRITON_INTERPRET=1`` (the Triton interpreter,
  for tests: fp32/fp16 only, slow).
* ``extension``: the compiled extension ``splitkern._C`` (its CUDA kernels on CUDA
  tensors, its C++ kernels on CPU tensors), for the ops it implements. ``cuda`` is
  accepted as an alias (its name before 0.2; it never meant CUDA only).

Which backends an op has, and the module that runs it on each, is :mod:`splitkern.registry`.

Selection: the innermost :func:`use_backend` context, else the ``SPLITKERN_BACKEND``
environment variable (read when splitkern is imported; :func:`reload_environment` reads it again),
else automatic (the fastest backend that supports the op, the
device and the dtype). A forced backend that cannot run a call raises
:class:`BackendUnavailableError`; nothing silently falls back.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

from splitkern import registry
from splitkern.registry import BACKENDS

ALIASES = {"cuda": "extension"}
_ENV_VAR = "SPLITKERN_BACKEND"
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRETER_DTYPES = (torch.float32, torch.float16)  # the interpreter has no bf16 dot
_AUTO_ORDER = {"cuda": ("triton", "reference"), "cpu": ("reference",)}


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this call (not installed, wrong device or dtype)."""


_state = threading.local()


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _check_name(name: str, source: str) -> str:
    """``name`` (or the backend it is an alias of), else a TypeError/ValueError naming ``source``."""
    if not isinstance(name, str):
        raise TypeError(f"{source}: backend must be a str, got {type(name).__name__}")
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; choose one of {BACKENDS} (or the alias 'cuda')")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Force backend ``name`` for splitkern ops called inside the ``with`` block.

    ``name`` is one of :data:`BACKENDS` (or the alias ``"cuda"`` for ``"extension"``).
    Raises ``ValueError`` for an unknown name and :class:`BackendUnavailableError`
    when the backend is not usable in this process at all (e.g. Triton not
    installed, the extension not built).
    """
    name = _check_name(name, "use_backend")
    reason = _unusable_reason(name)
    if reason:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")
    _stack().append(name)
    try:
        yield name
    finally:
        _stack().pop()


_environment = [os.environ.get(_ENV_VAR, "")]


def reload_environment() -> None:
    """Read ``SPLITKERN_BACKEND`` again (it is read once, at import: every layer call consults it, and an
    environment read per call is measurable at small shapes)."""
    _environment[0] = os.environ.get(_ENV_VAR, "")


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``SPLITKERN_BACKEND``, or None."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    env = _environment[0].strip()
    if env in ("", "auto"):
        return None
    return _check_name(env, _ENV_VAR)


@functools.lru_cache(maxsize=None)
def _triton_module():
    try:
        from splitkern import triton as sk_triton
    except ImportError as exc:  # triton missing or broken
        return None, f"cannot import triton ({exc})"
    return sk_triton, ""


@functools.lru_cache(maxsize=None)
def extension():
    """``(splitkern._C, "")`` when the compiled extension is usable, else ``(None, why not)``."""
    try:
        from splitkern import _C
        import splitkern.extension  # noqa: F401  (defines the ext_* schemas _C implements)
    except ImportError as exc:
        return None, f"the compiled extension splitkern._C is not built ({exc})"
    return _C, ""


def triton_interpreted() -> bool:
    """True when splitkern's Triton kernels run in the Triton CPU interpreter."""
    module, _ = _triton_module()
    return bool(module and module.INTERPRETED)


def prepare_layout(layout, device: torch.device, taps: int = 1) -> None:
    """Build on ``device`` every device table a kernel may read for ``layout`` (offsets, tile tables; with
    ``taps`` > 1, a convolution's, the weight re-packing indices too).

    Layers call this when built or moved, so no forward or backward copies a table host -> device
    (a blocking copy: it stalls the first call per batch bucket and breaks CUDA graph capture).
    Only the Triton kernels read device tables (the extension passes its group table as kernel
    parameters); nothing to do where they cannot run.
    """
    device = torch.device(device)
    module, _ = _triton_module()
    if module is not None and (device.type == "cuda" or (device.type == "cpu" and module.INTERPRETED)):
        module.prepare_layout(layout, device, taps)


def _unusable_reason(name: str) -> str:
    if name == "triton":
        return _triton_module()[1]
    if name == "extension":
        return extension()[1]
    return ""


def unsupported_reason(name: str, op: str, device: torch.device, dtype: torch.dtype) -> str:
    """Why backend ``name`` cannot run ``op`` on (device, dtype); empty if it can."""
    name = _check_name(name, "backend")
    if name not in registry.get(op).modules:
        return f"{op!r} has no {name} implementation"
    reason = _unusable_reason(name)
    if reason or name == "reference":
        return reason
    if name == "triton":
        if device.type == "cuda":
            return "" if dtype in _TRITON_DTYPES else f"triton kernels take {_TRITON_DTYPES}, got {dtype}"
        if device.type == "cpu" and triton_interpreted():
            ok = dtype in _INTERPRETER_DTYPES
            return "" if ok else f"the Triton interpreter takes {_INTERPRETER_DTYPES}, got {dtype}"
        return f"triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU), got {device}"
    ext = extension()[0]
    if f"{op}:{device.type}" not in ext.kernels():
        return f"the compiled extension has no {device.type} kernel for {op!r} yet"
    return ""


def available_backends(device: str | torch.device = "cpu", op: str = "block_diag_mm",
                       dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends that can run ``op`` on ``device`` in ``dtype`` in this process."""
    device = torch.device(device)
    return [b for b in BACKENDS if not unsupported_reason(b, op, device, dtype)]


def select(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """Name of the backend that runs ``op`` for tensors on ``device`` of ``dtype``."""
    forced = forced_backend()
    if forced is not None:
        reason = unsupported_reason(forced, op, device, dtype)
        if reason:
            raise BackendUnavailableError(f"{op}: forced backend {forced!r} cannot run here: {reason}")
        return forced
    for name in _AUTO_ORDER.get(device.type, ("reference",)):
        if not unsupported_reason(name, op, device, dtype):
            return name
    return "reference"


def implementation(op: str, device: torch.device, dtype: torch.dtype):
    """The module (``splitkern.<backend>.<op>`` for the built-in ops) whose functions run ``op`` here."""
    return registry.get(op).implementation(select(op, device, dtype))


def check_device(spec, name: str = "device") -> torch.device:
    """``spec`` as a ``torch.device`` that this process can use, else a ``ValueError`` naming ``name``
    (checked before any data is loaded or model built: a missing GPU is the first thing a user hears)."""
    try:
        device = spec if isinstance(spec, torch.device) else torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name}: {spec!r} is not a device (e.g. 'cpu', 'cuda', 'cuda:1'): {exc}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}: '{spec}' asks for a GPU, but this machine has no usable CUDA device "
                             "(torch.cuda.is_available() is False); use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name}: '{spec}' asks for GPU {device.index}, but this machine has {count} "
                             f"(cuda:0{'' if count == 1 else f' to cuda:{count - 1}'})")
    elif device.type not in ("cpu", "meta"):
        raise ValueError(f"{name}: '{spec}': splitkern runs on 'cpu' and 'cuda' devices")
    return device


def rank_device(spec, env):
    """The device this process should use: ``cuda`` without an index means ``cuda:LOCAL_RANK`` under
    torchrun (NCCL needs one GPU per rank; ``env`` holds torchrun's variables); anything else,
    malformed names included, as given (:func:`check_device` judges it)."""
    try:
        device = spec if isinstance(spec, torch.device) else torch.device(spec)
    except (RuntimeError, TypeError):
        return spec
    if device.type == "cuda" and device.index is None and int(env.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(env.get("LOCAL_RANK", "0")))
    return device
