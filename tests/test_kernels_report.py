"""The static kernel report: every Triton kernel config compiles for sm_80 and sm_90
without spills, with tensor cores where they are required, within shared memory."""

import subprocess
import sys

import pytest
import torch

from splitkern.analysis import kernels
from splitkern.triton import block_diag_mm as tk
from tests.helpers import expect_cuda_build


@pytest.fixture(scope="module")
def reports():
    # Compiles every variant in clean child processes; Triton's on-disk cache keeps reruns fast.
    return kernels.triton_reports(progress=False)


def test_every_variant_compiled_for_both_archs(reports):
    labels = [label for _, label, *_ in kernels._variants()]
    assert labels
    for arch in kernels.ARCHS:
        mine = [r for r in reports if r.arch == arch]
        assert sorted(r.variant for r in mine) == sorted(label for label in labels if kernels.for_arch(label, arch))
        assert arch != "sm80" or not any(label.endswith("-sm90") for label in (r.variant for r in mine))
        assert not [r for r in mine if r.error], [r.error for r in mine if r.error][:3]


def test_no_problems(reports):
    assert kernels.problems(reports) == []


GEMM_KERNELS = {"grouped_mm_kernel", "grouped_mm_weight_grad_kernel", "grouped_conv_kernel",
                "grouped_conv_grad_input_kernel", "grouped_conv_grad_weight_kernel"}


def test_sixteen_bit_kernels_use_tensor_cores(reports):
    sixteen = [r for r in reports if "float16" in r.variant and r.kernel in GEMM_KERNELS]
    assert sixteen and all(r.tensor_cores and r.needs_tensor_cores for r in sixteen)
    ieee = [r for r in reports if "ieee" in r.variant]
    assert ieee and not any(r.needs_tensor_cores for r in ieee)


def test_report_covers_every_config_the_dispatcher_picks():
    labels = {label for _, label, *_ in kernels._variants()}
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float16, "float16"), (torch.float32, "float32-tf32")):
        for aligned, lname in ((True, "aligned"), (False, "ragged")):
            table = tk.config_table(dtype, aligned)
            for m in (1, 16, 17, 32, 33, 64, 65, 4096):
                cfg = tk.pick_config(m, dtype, aligned)
                bucket = next(b for b, c in table.items() if c == cfg)
                assert f"forward-{name}-{lname}-m{bucket}" in labels
                assert f"grad_input-{name}-{lname}-indexed-m{bucket}" in labels
        assert f"grad_weight-{name}-ragged" in labels


def test_triton_tma_variants_are_sm90_only_and_must_show_tma(reports):
    tma = [r for r in reports if "-tma-" in r.variant]
    assert tma and {r.arch for r in tma} == {"sm90"}
    assert all(r.needs_wgmma_tma and r.wgmma_tma for r in tma), [r.variant for r in tma if not r.wgmma_tma]


def test_specialisation_matches_the_jit():
    kernel, _, args, kwargs, _ = next(v for v in kernels._variants() if v[0] is tk.grouped_mm_kernel)
    _, src, options = kernels._source(kernel, args, kwargs)
    assert src.signature["stride_ak"] == "constexpr"  # unit strides become constants, as in the JIT
    assert src.signature["a_ptr"].startswith("*") and src.signature["M"] == "i32"
    assert options["num_warps"] == kwargs["num_warps"]


def _report(**overrides):
    base = dict(arch="sm90", kernel="k", variant="v", num_warps=4, num_stages=3, registers=128, stack_bytes=0,
                local_bytes=0, shared_bytes=1024, tensor_cores=True, needs_tensor_cores=True, blocks_per_sm=2)
    base.update(overrides)
    return kernels.KernelReport(**base)


@pytest.mark.parametrize("overrides, words", [
    (dict(stack_bytes=8), "spills"),
    (dict(local_bytes=4), "spills"),
    (dict(tensor_cores=False), "HGMMA"),
    (dict(arch="sm80", tensor_cores=False), "HMMA"),
    (dict(shared_bytes=232449), "shared memory"),
    (dict(arch="sm80", shared_bytes=166913), "shared memory"),
    (dict(error="CompilationError: x"), "compile error"),
    (dict(needs_wgmma_tma=True, wgmma_tma=False), "TMA GEMM (CUTLASS or Triton) without wgmma"),
])
def test_problems_flag_each_condition(overrides, words):
    assert kernels.problems([_report()]) == []
    found = kernels.problems([_report(**overrides)])
    assert len(found) == 1 and words in found[0]


def test_occupancy_estimate():
    # 128 regs x 256 threads = 32K regs -> 2 blocks by registers; 100 KB smem -> 2 blocks on sm90.
    assert kernels.blocks_per_sm("sm90", 128, 8, 100 * 1024) == 2
    assert kernels.blocks_per_sm("sm90", 32, 4, 0) == 16  # thread limit: 2048 / 128
    assert kernels.blocks_per_sm("sm80", 255, 4, 0) == 2


def test_parse_res_usage_of_a_real_cubin(tmp_path):
    source = tmp_path / "k.cu"
    source.write_text("__global__ void axpy(float a, const float* x, float* y)"
                      "{ int i = threadIdx.x; y[i] += a * x[i]; }\n")
    nvcc = "/usr/local/cuda/bin/nvcc"
    cubin = tmp_path / "k.cubin"
    try:
        subprocess.run([nvcc, "-cubin", "-arch=sm_90a", "-o", str(cubin), str(source)], check=True,
                       capture_output=True)
    except FileNotFoundError:
        pytest.skip("nvcc not installed")
    text = subprocess.run([kernels.cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    usage = kernels.parse_res_usage(text)
    (name, values), = usage.items()
    assert "axpy" in name and values["REG"] > 0 and values["STACK"] == 0


@pytest.mark.parametrize("command", [["-m", "splitkern.cli", "report-kernels"], ["-m", "splitkern.cli", "kernels"],
                                     ["-m", "splitkern.analysis.kernels"], ["-m", "splitkern.kernels"]])
def test_cli_entry_point_runs(command):
    """The report's CLI word and module, and their old names (aliases until 0.3)."""
    out = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--arch" in out.stdout and "splitkern report-kernels" in out.stdout


def test_extension_kernels_have_no_spills_and_use_tensor_cores():
    reports = kernels.extension_reports()
    assert reports, "the extension is built in CI; its cubins must be readable"
    for arch in kernels.ARCHS:
        gemms = [r for r in reports if r.arch == arch and r.needs_tensor_cores]
        assert len(gemms) >= 6, f"{arch}: expected fp16+bf16 matmul fwd/grad_input and conv kernels"
    assert kernels.problems(reports) == []


def test_cutlass_kernels_use_wgmma_and_tma_without_spills():
    from splitkern import _C

    if "block_diag_mm_cutlass:cuda" not in _C.kernels():
        if expect_cuda_build():
            pytest.fail("the CUDA build must hold the CUTLASS sm90 kernels (nvidia-cutlass is in requirements-dev)")
        pytest.skip("built without the CUTLASS kernels")
    cutlass = [r for r in kernels.extension_reports() if r.needs_wgmma_tma]
    # forward, grad_input, grad_weight in fp16 and bf16, sm_90a only
    assert len(cutlass) == 6 and {r.arch for r in cutlass} == {"sm90"}
    assert all(r.wgmma_tma and r.tensor_cores for r in cutlass)
    assert kernels.problems(cutlass) == []


def test_wgmma_tma_detection_reads_the_sass():
    sass = ("arch = sm_90a\n\tFunction : f\n /*0*/ UTMALDG.2D [UR4], [UR6] ;\n /*1*/ HGMMA.64x128x16.F32.BF16 R0 ;\n"
            "\tFunction : g\n /*0*/ HGMMA.64x128x16.F32 R0 ;\n")
    assert kernels._wgmma_tma_functions(sass) == {("sm90", "f")}
    assert kernels.is_cutlass_sm90_gemm("_ZN7cutlass13device_kernelINS_4gemm6kernel13GemmUniversalI...Sm90...")
    assert not kernels.is_cutlass_sm90_gemm("_ZN9splitkern4gemm19grouped_gemm_kernelI6__half")
