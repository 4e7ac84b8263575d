"""The package without its compiled extension, the CLI entry points."""

import os
import subprocess
import sys

from splitkern import registry

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
print("extension usable:", "extension" in splitkern.available_backends("cpu"))
try:
    with splitkern.use_backend("cuda"):
        pass
except splitkern.BackendUnavailableError as exc:
    print("raised:", exc)
""")
    assert out.returncode == 0, out.stderr
    assert "shape (5, 6)" in out.stdout and "extension usable: False" in out.stdout
    assert "raised:" in out.stdout and "not built" in out.stdout


def test_info_cli_lists_every_op():
    out = _python("from splitkern.cli import main; main(['info'])")
    assert out.returncode == 0, out.stderr
    for op in registry.OPS:
        assert f"{op} on cpu" in out.stdout
        assert f"  {op}:cpu: C++" in out.stdout  # the extension's kernels, as built in CI


def _hide_optional_packages(folder) -> str:
    """Code that makes the optional extras unimportable: stub packages first on sys.path whose import
    fails (a meta-path finder that raises would also break torch's own probes with find_spec)."""
    for name in ("tensorboard", "onnx", "onnxruntime", "onnxscript"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} hidden for this test')\n")
    return f"import sys; sys.path.insert(0, {str(folder)!r})\n"


def test_default_train_and_plot_need_only_the_declared_dependencies(tmp_path):
    """The Python API (splitkern.train) and plot, without the optional extras; matplotlib is declared."""
    from importlib.metadata import requires

    declared = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires("splitkern")
                if "extra ==" not in r}
    assert {"torch", "numpy", "tqdm", "matplotlib"} <= declared
    (tmp_path / "stubs").mkdir()
    out = _python(_hide_optional_packages(tmp_path / "stubs") + f"""
try:
    import tensorboard
    raise SystemExit("tensorboard was not hidden")
except ImportError:
    pass
import splitkern
from splitkern.data import synthetic_hierarchy
from splitkern.splitnet.plot import plot
tiny = synthetic_hierarchy(train_per_class=6, test_per_class=3)
config = splitkern.TrainConfig(model="wrn10-1", split="2", progress=False)
metrics = splitkern.train(config, dataset=tiny, stage1_epochs=2, warmup_epochs=1, stage2_epochs=1,
                          out={str(tmp_path / "run")!r})
print("accuracy", metrics["test_acc"], "figures", len(plot({str(tmp_path / "run")!r})))
""")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "figures 5" in out.stdout  # learning curves, accuracy vs parameters, assignments, blocks, off-block
    assert (tmp_path / "run" / "split.pt").exists() and not (tmp_path / "run" / "tensorboard").exists()
