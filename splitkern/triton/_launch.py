"""Cached kernel launches: a repeated launch skips Triton's argument binding.

``kernel[grid](*args, **kwargs)`` binds every argument to the kernel's signature and computes its
specialization in Python on every call: about 11 µs for the ~20 arguments of these kernels, more
than a small split layer's kernel takes on a GPU. :func:`launch` does that once per *launch
signature* and then launches the compiled kernel Triton chose, directly
(``compiled[grid](*arguments)``, Triton's own launcher, hooks and profilers included).

A launch signature determines Triton's specialization, conservatively: the current device, each
tensor argument's dtype, the exact value of every other argument and of every launch option
(``num_warps``, ``num_stages``, constexprs), all tensors 16-byte aligned (a launch with one that is not
goes through ``kernel[grid]`` and is not kept). Whatever Triton specializes on (dtypes, alignment,
integer divisibility, ``== 1``, 32/64-bit) is a function of it, so the compiled kernel of a signature
is the one ``kernel[grid]`` would pick.

The direct launch relies on two things of Triton's runtime: ``JITFunction.run`` returns the
:class:`~triton.compiler.CompiledKernel` it launched, and ``CompiledKernel[grid](*values)`` takes
the values of *all* the kernel's parameters, constexprs included, in signature order. Both hold on
the versions in :data:`DIRECT_LAUNCH_VERSIONS` (``tests/triton/test_launch.py`` checks, without a
GPU, that the direct launch hands Triton's launcher exactly what ``kernel[grid]`` hands it). Any
other Triton, the interpreter, a kernel with pre-run hooks or an argument that cannot be keyed
takes ``kernel[grid]`` every time.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Sequence

import torch
import triton
from triton.runtime.jit import JITFunction

DIRECT_LAUNCH_VERSIONS = ((3, 6), (3, 8))  # the Tritons the launcher checks ran on
MAX_SIGNATURES = 64  # per kernel; a layer sees one or two per input shape, a sweep many


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


DIRECT_LAUNCH = _version(triton.__version__) in DIRECT_LAUNCH_VERSIONS


def _picker(positions: tuple) -> Callable[[Sequence], tuple]:
    """A function returning the items at ``positions`` of a sequence, as a tuple (C speed)."""
    if len(positions) > 1:
        return operator.itemgetter(*positions)
    return lambda items: tuple(items[i] for i in positions)


class CachedLaunches:
    """The compiled kernels of one ``triton.jit`` kernel, by launch signature.

    A call site launches a kernel in one *form*: the number of positional arguments, which of them
    are tensors, and the keyword arguments' names. The first launch of a form (through
    ``kernel[grid]``) learns it; later launches of that form compute their signature from it.
    """

    __slots__ = ("kernel", "names", "defaults", "compiled", "hits", "_form", "_tensors", "_scalars", "_rest",
                 "_device")

    def __init__(self, kernel: JITFunction):
        self.kernel = kernel
        parameters = list(kernel.signature.parameters.values())
        self.names = tuple(p.name for p in parameters)
        self.defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
        self.compiled: dict[tuple, object] = {}
        self.hits = 0  # direct launches so far (tests and benchmarks read it)
        self._form = None
        self._device = triton.runtime.driver.active.get_current_device

    def values(self, args: tuple, kwargs: dict) -> tuple:
        """Every parameter's value in signature order, for a launch of the learnt form: ``args``, then
        ``kwargs`` or the default (what the compiled kernel's launcher takes)."""
        return args + self._rest(kwargs)

    def _learn(self, args: tuple, kwargs: dict) -> None:
        """The form of this launch (class docstring), if its later launches can be keyed."""
        rest = self.names[len(args):]
        self._form = ()  # (no launch of this kernel is keyed, unless the checks below pass)
        if len(args) > len(self.names) or any(n not in kwargs and n not in self.defaults for n in rest):
            return  # Triton will name the problem
        tensors = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        if not tensors:
            return
        self._tensors, self._scalars = _picker(tensors), _picker(tuple(i for i in range(len(args)) if i not in tensors))
        self._rest = (operator.itemgetter(*rest) if len(rest) > 1 and all(n in kwargs for n in rest)
                      else lambda kw: tuple(kw[n] if n in kw else self.defaults[n] for n in rest))
        self._form = (len(args), *kwargs)

    def signature(self, args: tuple, kwargs: dict) -> tuple | None:
        """The launch signature (module docstring) of a launch of the learnt form, or None when one of
        its tensors is not 16-byte aligned (the signature would have to say which)."""
        tensors = self._tensors(args)
        if functools.reduce(operator.or_, [t.data_ptr() for t in tensors]) & 15:
            return None
        return self._device(), self._scalars(args), tuple(kwargs.values()), tuple([t.dtype for t in tensors])

    def __call__(self, grid: tuple[int, ...], args: tuple, kwargs: dict) -> None:
        if self._form is None:
            self._learn(args, kwargs)
        key = None
        if self._form == (len(args), *kwargs):
            try:
                key = self.signature(args, kwargs)
                compiled = self.compiled.get(key)
            except (AttributeError, TypeError):  # not a tensor where the form has one; an unhashable value
                key = compiled = None
            if compiled is not None:
                self.hits += 1
                compiled[grid + (1,) * (3 - len(grid))](*self.values(args, kwargs))
                return
        compiled = self.kernel[grid](*args, **kwargs)
        if key is not None:
            if len(self.compiled) >= MAX_SIGNATURES:
                self.compiled.clear()
            self.compiled[key] = compiled


_CACHES: dict[JITFunction, CachedLaunches] = {}


def launch(kernel, grid: tuple[int, ...], args: tuple, kwargs: dict) -> None:
    """``kernel[grid](*args, **kwargs)``, with the compiled kernel of a repeated launch signature
    launched directly (module docstring). ``grid``: a tuple of 1-3 ints, not a callable."""
    cache = _CACHES.get(kernel)
    if cache is None:
        if not (DIRECT_LAUNCH and type(kernel) is JITFunction and not kernel.pre_run_hooks):
            kernel[grid](*args, **kwargs)  # the interpreter, an untested Triton, a hooked kernel
            return
        cache = _CACHES[kernel] = CachedLaunches(kernel)
    cache(grid, args, kwargs)


def clear() -> None:
    """Forget every cached compiled kernel (after changing Triton's options or knobs mid-process)."""
    _CACHES.clear()
