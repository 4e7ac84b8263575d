"""The cached direct launch (splitkern.triton._launch) hands Triton's launcher exactly what
``kernel[grid]`` hands it, for the real kernels, without a GPU (the checks in
``launch_checks.py``, run in a process without the interpreter); it falls back to
``kernel[grid]`` where it does not apply; on a GPU it computes what ``kernel[grid]`` computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
from triton.runtime.jit import JITFunction

from splitkern.triton import _launch
from tests.triton.launch_checks import CHECKS, LAUNCH_NAMES, CountingKernel

direct_only = pytest.mark.skipif(not _launch.DIRECT_LAUNCH, reason=f"no direct launch on Triton {triton.__version__}")


@pytest.fixture(scope="module")
def check_results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "tests.triton.launch_checks"], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).parents[2], timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@direct_only
@pytest.mark.parametrize("name", list(CHECKS))
def test_fake_gpu_check(check_results, name):
    assert check_results[name] == "ok", check_results[name]


def plain_kernel(x, n):  # made a JITFunction in the test (the interpreter's triton.jit makes other kernels)
    pass


def test_interpreter_kernels_and_other_tritons_launch_through_kernel_grid(monkeypatch):
    monkeypatch.setattr(_launch, "_CACHES", {})
    kernel = CountingKernel()  # not a JITFunction (an interpreter kernel is not one either)
    _launch.launch(kernel, (1,), (1, 2), {})
    assert kernel.launches == 1 and not _launch._CACHES
    monkeypatch.setattr(_launch, "DIRECT_LAUNCH", False)
    fn = JITFunction(plain_kernel)
    monkeypatch.setattr(JITFunction, "__getitem__", lambda self, grid: kernel[grid])
    _launch.launch(fn, (1,), (1, 2), {})
    assert kernel.launches == 2 and not _launch._CACHES


def test_versions():
    assert _launch._version("3.8.0") == (3, 8)
    assert _launch._version("3.6.0+git1234") == (3, 6)
    assert _launch._version("3.10.0rc1") == (3, 10)


@pytest.mark.gpu
@direct_only
def test_direct_launch_computes_what_kernel_grid_computes(monkeypatch):
    """On a GPU: a forward and backward through the direct launches equal Triton's own, bitwise."""
    from splitkern import ops
    from splitkern.backend import use_backend

    sizes = dict(in_sizes=(48, 80), out_sizes=(64, 64))
    x = torch.randn(96, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(48 * 64 + 80 * 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def run():
        with use_backend("triton"):
            y = ops.block_diag_mm(x, w, **sizes)
            return (y, *torch.autograd.grad(y.float().square().sum(), (x, w)))

    monkeypatch.setattr(_launch, "_CACHES", {})
    run()  # fills the caches
    direct = run()
    assert sum(cache.hits for cache in _launch._CACHES.values()) >= 3  # forward, grad_input, grad_weight
    monkeypatch.setattr(_launch, "_CACHES", {})
    monkeypatch.setattr(_launch, "DIRECT_LAUNCH", False)
    own = run()
    assert not _launch._CACHES
    for a, b in zip(direct, own):
        assert torch.equal(a, b)


@direct_only
def test_launch_benchmark_writes_its_tables(tmp_path):
    """benchmarks/bench_triton_launch.py on a few launches: one row per real launch variant."""
    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "benchmarks/bench_triton_launch.py", "--calls", "3", "--rounds", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=root, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    (csv_file,) = tmp_path.glob("triton_launch-cpu-*.csv")
    rows = csv_file.read_text().splitlines()
    assert rows[0].startswith("case,variant,arguments,kernel_grid_us,direct_us")
    assert [r.split(",")[0] for r in rows[1:]] == list(LAUNCH_NAMES)
    assert "| mm-forward |" in next(tmp_path.glob("triton_launch-cpu-*.md")).read_text()
