"""fp32 precision follows torch's own settings: matmul ops as torch.mm, conv ops as F.conv2d."""

import subprocess
import sys

import pytest
import torch

from splitkern.precision import fp32_precision, input_precision

# Each case sets torch's flags in a fresh interpreter (they are process-global, and mixing the
# legacy and new APIs makes later legacy reads raise), then prints (matmul, conv).
CASES = [
    ("", ("ieee", "tf32")),  # torch's defaults: cuBLAS fp32 is IEEE, cuDNN conv allows TF32
    ("torch.backends.cuda.matmul.allow_tf32 = True", ("tf32", "tf32")),
    ("torch.backends.cudnn.allow_tf32 = False", ("ieee", "ieee")),
    ("torch.set_float32_matmul_precision('high')", ("tf32", "tf32")),
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", ("tf32", "tf32")),
    ("torch.backends.cudnn.conv.fp32_precision = 'ieee'", ("ieee", "ieee")),
    ("torch.backends.fp32_precision = 'tf32'", ("tf32", "tf32")),
    # the new API after the legacy one: reading torch.backends.cuda.matmul.allow_tf32 would raise here
    ("torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cuda.matmul.fp32_precision = 'ieee'",
     ("ieee", "tf32")),
]


@pytest.mark.parametrize("setup, expected", CASES)
def test_fp32_precision_follows_torch_settings(setup, expected):
    code = ("import torch\n" + setup + "\nfrom splitkern.precision import fp32_precision\n"
            "print(fp32_precision('matmul'), fp32_precision('conv'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert tuple(out.stdout.split()) == expected


def test_only_fp32_outside_the_interpreter_can_use_tf32():
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert input_precision(dtype, "matmul") == "ieee" and input_precision(dtype, "conv") == "ieee"
    assert input_precision(torch.float32, "conv", interpreted=True) == "ieee"
    assert input_precision(torch.float32, "conv") == fp32_precision("conv")


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="kind"):
        fp32_precision("attention")
