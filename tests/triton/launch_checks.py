"""The fake-GPU checks of tests/triton/test_launch.py, run in a process without the interpreter
(Triton's compiled path needs ``triton.jit`` kernels, not interpreter ones):
``python -m tests.triton.launch_checks`` prints {check: "ok" or its traceback} as JSON.

Triton's own path runs for real here (binding, specialization, a real sm_90 compile); only the
driver is fake: it reports a device, a stream and a target, and its launcher records its
arguments instead of launching.
"""

from __future__ import annotations

import json
import traceback
import types

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from splitkern.triton import _launch, block_diag_mm, grouped_conv

STREAM = 7


class RecordingDriver:
    """What ``JITFunction.run`` and ``CompiledKernel`` ask of ``triton.runtime.driver.active``."""

    def __init__(self):
        self.launches = []
        self.utils = types.SimpleNamespace(
            load_binary=lambda name, kernel, shared, device: (object(), object(), 64, 0, 1024),
            get_device_properties=lambda device: {"max_shared_mem": 232448, "multiprocessor_count": 132},
            unload_module=lambda module: None)

    def launcher_cls(self, src, metadata):
        return lambda *args: self.launches.append(args)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return STREAM

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def with_fake_gpu(check):
    """``check(driver)`` with a fresh recording driver active (this process has no other)."""
    driver = RecordingDriver()
    triton.runtime.driver.set_active(driver)
    check(driver)


def jit_function(kernel) -> JITFunction:
    """A fresh compiled-path kernel (no binders of another driver), also under the interpreter."""
    return JITFunction(kernel.fn if hasattr(kernel, "fn") else kernel)


def same_value(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return x is y
    if type(x).__name__ == "LazyDict":  # the launch metadata Triton builds per launch for its hooks
        return type(y) is type(x) and x.get() == y.get()
    return x == y


def same_launch(a: tuple, b: tuple) -> bool:
    """Launcher arguments equal: tensors by identity, everything else by value."""
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))


def fresh_tensors(args: tuple) -> tuple:
    """``args`` with every tensor replaced by a new one of the same dtype and shape."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def variant(variants, label_start: str):
    return next(v for v in variants if v[1].startswith(label_start))


def real_launches():
    mm, conv = block_diag_mm.static_variants(), grouped_conv.static_variants()
    return [variant(mm, "forward-bfloat16-aligned-indexed-m16"), variant(mm, "forward-bfloat16-ragged-m128-persistent"),
            variant(mm, "grad_weight-bfloat16-ragged-indexed"), variant(conv, "forward")]


LAUNCH_NAMES = ("mm-forward", "mm-persistent", "mm-grad-weight", "conv-forward")


def direct_launch_hands_the_launcher_what_kernel_grid_does(fake_gpu, index):
    kernel, _, args, kwargs, _ = real_launches()[index]
    grid = (3, 2)
    cache = _launch.CachedLaunches(jit_function(kernel))
    cache(grid, args, kwargs)  # Triton's path: compiles, launches, fills the cache
    assert cache.hits == 0 and len(fake_gpu.launches) == 1

    again = fresh_tensors(args)
    cache(grid, again, kwargs)  # the same signature: the direct launch
    triton_path = cache.kernel[grid](*again, **kwargs)  # Triton's own, for the same arguments
    assert cache.hits == 1
    direct, own = fake_gpu.launches[1:]
    assert same_launch(direct, own)
    assert direct[:4] == (3, 2, 1, STREAM)
    assert list(cache.compiled.values()) == [triton_path]


def small_kernel():
    return variant(block_diag_mm.static_variants(), "forward-bfloat16-aligned-m16")


def a_misaligned_tensor_launches_through_kernel_grid(fake_gpu):
    kernel, _, args, kwargs, _ = small_kernel()
    cache = _launch.CachedLaunches(jit_function(kernel))
    cache((1,), args, kwargs)
    a = args[0]
    shifted = torch.empty(a.numel() + 1, dtype=a.dtype)[1:].view_as(a)  # 2-byte offset: not 16-aligned
    cache((1,), (shifted,) + args[1:], kwargs)
    assert cache.hits == 0 and len(cache.compiled) == 1  # launched by Triton, not kept
    assert same_launch(fake_gpu.launches[-1][9:], cache.values((shifted,) + args[1:], kwargs))


def a_changed_integer_or_option_is_a_new_signature(fake_gpu):
    kernel, _, args, kwargs, _ = small_kernel()
    cache = _launch.CachedLaunches(jit_function(kernel))
    cache((1,), args, kwargs)
    cache((1,), args[:-1] + (args[-1] + 16,), kwargs)
    cache((1,), args, kwargs | {"num_warps": kwargs["num_warps"] * 2})
    assert cache.hits == 0 and len(cache.compiled) == 3
    cache((1,), fresh_tensors(args), kwargs)
    assert cache.hits == 1


def launch_keeps_one_cache_per_kernel_and_bounds_it(fake_gpu):
    kernel, _, args, kwargs, _ = small_kernel()
    fn = jit_function(kernel)
    _launch.MAX_SIGNATURES = 2
    for extra in (0, 16, 32):
        _launch.launch(fn, (1,), args[:-1] + (args[-1] + extra,), kwargs)
    assert fn in _launch._CACHES and len(_launch._CACHES[fn].compiled) == 1
    assert len(fake_gpu.launches) == 3




class CountingKernel:
    """A stand-in kernel: counts ``kernel[grid](...)`` launches."""

    pre_run_hooks = ()

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.launches += 1
        return run


def an_unhashable_argument_launches_through_kernel_grid(fake_gpu):
    kernel, _, args, kwargs, _ = small_kernel()
    cache = _launch.CachedLaunches(jit_function(kernel))
    cache.kernel = CountingKernel()
    cache((1,), args, kwargs | {"unhashable": []})
    cache((1,), args, kwargs | {"unhashable": []})
    assert cache.kernel.launches == 2 and cache.hits == 0 and not cache.compiled


CHECKS = {
    **{f"direct-launch-{name}": (lambda d, i=i: direct_launch_hands_the_launcher_what_kernel_grid_does(d, i))
       for i, name in enumerate(LAUNCH_NAMES)},
    "misaligned-tensor": a_misaligned_tensor_launches_through_kernel_grid,
    "changed-integer-or-option": a_changed_integer_or_option_is_a_new_signature,
    "bounded-cache": launch_keeps_one_cache_per_kernel_and_bounds_it,
    "unhashable-argument": an_unhashable_argument_launches_through_kernel_grid,
}


def run_checks() -> dict[str, str]:
    results = {}
    for name, check in CHECKS.items():
        try:
            with_fake_gpu(check)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    return results


if __name__ == "__main__":
    print(json.dumps(run_checks()))
