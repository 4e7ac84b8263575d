"""The package without its compiled extension, the CLI entry points."""

import os
import subprocess
import sys

BLOCK_EXTENSION = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "splitkern._C":
            raise ImportError("extension hidden for this test")
sys.meta_path.insert(0, Block())
"""


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SPLITKERN_BACKEND")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_works_without_the_extension():
    out = _python(BLOCK_EXTENSION + """
import torch, splitkern
from splitkern.nn import SplitLinear
layer = SplitLinear((3, 2), (2, 4))
print("shape", tuple(layer(torch.randn(5, 5)).shape))
print("cuda usable:", "cuda" in splitkern.available_backends("cpu"))
try:
    with splitkern.use_backend("cuda"):
        pass
except splitkern.BackendUnavailableError as exc:
    print("raised:", exc)
""")
    assert out.returncode == 0, out.stderr
    assert "shape (5, 6)" in out.stdout and "cuda usable: False" in out.stdout
    assert "raised:" in out.stdout and "not built" in out.stdout


def test_info_cli_lists_every_op():
    out = _python("from splitkern.cli import main; main(['info'])")
    assert out.returncode == 0, out.stderr
    for op in ("block_diag_mm", "grouped_conv", "group_weight_reg"):
        assert f"{op} on cpu" in out.stdout
        assert f"  {op}:cpu: C++" in out.stdout  # the extension's kernels, as built in CI
