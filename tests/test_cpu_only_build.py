"""The extension without nvcc: setup.py's CppExtension build (``SPLITKERN_CPU_ONLY_BUILD=1``: csrc/*.cpp only,
what a machine without a CUDA toolkit gets) compiles, lists only CPU kernels, and its kernels match the
reference through the public ops; a C++-only build that cannot compile installs without the extension."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECK = """
import glob, importlib.util, sys
import torch

path, = glob.glob({lib!r} + "/splitkern/_C*.so")
spec = importlib.util.spec_from_file_location("splitkern._C", path)
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
sys.modules["splitkern._C"] = ext  # splitkern loads this build as its extension
import splitkern
from splitkern import backend, info
from splitkern.ops import block_diag_mm, group_weight_reg, grouped_conv

print("kernels", ext.kernels())
print("runtime", ext.cuda_runtime_version(), repr(ext.cuda_archs))
print(info.report())
torch.manual_seed(0)
ins, outs = [3, 0, 5], [4, 2, 6]
x = torch.randn(7, 8, dtype=torch.float64)
img = torch.randn(2, 8, 5, 5, dtype=torch.float64)
w = torch.randn(3 * 4 + 5 * 6, dtype=torch.float64)
w9 = torch.randn(9 * (3 * 4 + 5 * 6), dtype=torch.float64)
b = torch.randn(12, dtype=torch.float64)
ii, oi = torch.randperm(8), torch.randperm(12)
p = torch.softmax(torch.randn(3, 8, dtype=torch.float64), 0)
q = torch.softmax(torch.randn(3, 12, dtype=torch.float64), 0)

def run(name):
    leaves = [t.clone().requires_grad_() for t in (x, img, w, w9, b, p, q)]
    lx, limg, lw, lw9, lb, lp, lq = leaves
    with splitkern.use_backend(name):
        ys = (block_diag_mm(lx, lw, lb, in_sizes=ins, out_sizes=outs, in_index=ii, out_index=oi),
              grouped_conv(limg, lw9, lb, in_sizes=ins, out_sizes=outs, kernel_size=3, padding=1,
                           in_index=ii, out_index=oi),
              group_weight_reg(lw9[:96].view(12, 8), lp, lq))
        grads = torch.autograd.grad(ys, leaves, [torch.randn_like(y, generator=torch.Generator().manual_seed(1))
                                                  for y in ys], allow_unused=True)
    return [*ys, *(g for g in grads if g is not None)]

got, want = run("extension"), run("reference")
assert len(got) == len(want) == 10
for g, r in zip(got, want):
    torch.testing.assert_close(g, r)
print("matches the reference:", len(got), "tensors")
"""


def _build(tmp_path, **env):
    """``setup.py build_ext`` of the C++-only extension into ``tmp_path/lib``."""
    command = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp",
               str(tmp_path / "tmp")]
    environment = {**os.environ, "SPLITKERN_CPU_ONLY_BUILD": "1", **env}
    environment.pop("SPLITKERN_SKIP_CUDA_BUILD", None)
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)


def test_the_cpp_only_extension_builds_and_matches_the_reference(tmp_path):
    built = _build(tmp_path)
    assert built.returncode == 0 and "building the C++ CPU kernels only" in built.stdout, built.stdout + built.stderr
    out = subprocess.run([sys.executable, "-c", CHECK.format(lib=str(tmp_path / "lib"))], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "kernels ['block_diag_mm:cpu', 'group_weight_reg:cpu', 'grouped_conv:cpu']" in out.stdout
    assert "runtime 0 ''" in out.stdout
    assert "extension splitkern._C: C++ only (built without nvcc), 3 kernels:" in out.stdout
    assert "block_diag_mm on cpu (fp32): usable ['reference', " in out.stdout and "'extension'], chosen" in out.stdout
    assert "matches the reference: 10 tensors" in out.stdout


def test_a_cpp_only_build_without_a_compiler_installs_without_the_extension(tmp_path):
    built = _build(tmp_path, CC="/nonexistent/cc", CXX="/nonexistent/c++")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "WARNING: could not build the C++ extension splitkern._C" in built.stdout
    assert not list(tmp_path.glob("lib/splitkern/_C*.so"))
