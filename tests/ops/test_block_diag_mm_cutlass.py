"""block_diag_mm on the CUTLASS sm90 grouped GEMMs (csrc/cutlass): the problem tables their GPU kernel
builds, checked on CPU by running the GEMMs they describe; the alignment rule that routes a call to
them; and, on an sm_90 GPU, every op and gradient against the reference."""

import pytest
import torch

import splitkern
from splitkern import backend
from splitkern.layout import block_layout
from splitkern.reference import block_diag_mm as reference
from tests.helpers import DEVICE, random_permutation

ext = pytest.importorskip("splitkern.extension.block_diag_mm")

LAYOUTS = {
    "equal": ((16, 16, 16, 16), (32, 32, 32, 32)),
    "ragged": ((8, 40, 16), (24, 8, 64)),
    "empty": ((16, 0, 8, 24), (8, 16, 0, 32)),
    "size-8": ((8,), (8,)),
    "size-1": ((1, 8), (8, 1)),
    "unaligned": ((5, 0, 11, 16), (7, 4, 9, 8)),
    "many": (tuple(8 * (1 + g % 3) for g in range(130)), tuple(8 * (1 + g % 2) for g in range(130))),
}
ROWS = (0, 1, 17)

# (A strides, B strides) of each pass as CUTLASS reads them, from (lda, ldb): problems.h's table
OPERAND_STRIDES = {
    "forward": (lambda lda: (lda, 1), lambda ldb: (1, ldb)),  # A row-major, B column-major
    "grad_input": (lambda lda: (lda, 1), lambda ldb: (ldb, 1)),  # A, B row-major
    "grad_weight": (lambda lda: (1, lda), lambda ldb: (ldb, 1)),  # A column-major, B row-major
}


def _run_table(which, table, a, b, d):
    """D_i = A_i B_i for every row of a problem table, operands read through its offsets and strides."""
    a_strides, b_strides = OPERAND_STRIDES[which]
    for m, n, k, a_off, lda, b_off, ldb, d_off, ldd in table.tolist():
        a_i = a.flatten().as_strided((m, k), a_strides(lda), a_off)
        b_i = b.flatten().as_strided((k, n), b_strides(ldb), b_off)
        d.flatten().as_strided((m, n), (ldd, 1), d_off).copy_(a_i @ b_i)
    return d


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_problem_tables_compute_every_pass(name, rows):
    layout = block_layout(*LAYOUTS[name])
    x = torch.randn(rows, layout.in_features, dtype=torch.float64)
    w = torch.randn(layout.weight_numel, dtype=torch.float64)
    dy = torch.randn(rows, layout.out_features, dtype=torch.float64)
    tables = {which: ext.block_diag_mm_cutlass_problems(which, layout, rows) for which in ext.PASSES}
    y = _run_table("forward", tables["forward"], x, w, torch.zeros(rows, layout.out_features, dtype=torch.float64))
    dx = _run_table("grad_input", tables["grad_input"], dy, w, torch.zeros_like(x))
    dw = _run_table("grad_weight", tables["grad_weight"], dy, x, torch.zeros_like(w))
    torch.testing.assert_close(y, reference.block_diag_mm(x, w, None, layout))
    torch.testing.assert_close(dx, reference.block_diag_mm_grad_input(dy, w, layout))
    torch.testing.assert_close(dw, reference.block_diag_mm_grad_weight(dy, x, layout))
    listed = sum(1 for k, n in zip(layout.in_sizes, layout.out_sizes) if k and n) if rows else 0
    assert all(len(t) == listed for t in tables.values())  # empty groups (and M = 0) launch nothing
    assert all(tuple(t.shape[1:]) == (len(ext.PROBLEM_COLUMNS),) for t in tables.values())


def test_problem_table_rejects_bad_arguments():
    with pytest.raises(RuntimeError, match="pass must be"):
        torch.ops.splitkern.ext_block_diag_mm_cutlass_problems(3, [8], [8], 4)
    with pytest.raises(RuntimeError, match="same number"):
        torch.ops.splitkern.ext_block_diag_mm_cutlass_problems(0, [8, 8], [8], 4)


@pytest.fixture
def on_hopper_with_cutlass(monkeypatch):
    """cutlass_reason as on an sm_90 GPU with the CUTLASS kernels built (the rule itself, without one)."""
    monkeypatch.setattr(ext, "_cutlass_built", lambda: True)
    monkeypatch.setattr(ext, "_hopper", lambda device: True)


class _CudaLike:
    def __init__(self, dtype):
        self.device, self.dtype = torch.device("cuda", 0), dtype


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_alignment_rule(name, on_hopper_with_cutlass):
    layout = block_layout(*LAYOUTS[name])
    aligned = name not in ("unaligned", "size-1")
    for dtype in (torch.float16, torch.bfloat16):
        reason = ext.cutlass_reason(_CudaLike(dtype), layout)
        assert (reason == "") == aligned, reason
        if not aligned:
            assert "multiple of 8" in reason
    assert "fp16/bf16" in ext.cutlass_reason(_CudaLike(torch.float32), layout)


def test_routing_follows_the_rule(monkeypatch, on_hopper_with_cutlass):
    calls = []

    class Ops:
        def ext_block_diag_mm(self, *args):
            calls.append("ext_block_diag_mm")

        def ext_block_diag_mm_cutlass(self, *args):
            calls.append("ext_block_diag_mm_cutlass")
    monkeypatch.setattr(ext, "_ops", Ops())
    x = _CudaLike(torch.bfloat16)
    ext.block_diag_mm(x, None, None, block_layout(*LAYOUTS["ragged"]))
    ext.block_diag_mm(x, None, None, block_layout(*LAYOUTS["unaligned"]))
    assert calls == ["ext_block_diag_mm_cutlass", "ext_block_diag_mm"]


def test_without_a_hopper_gpu_the_reason_says_why():
    layout = block_layout(*LAYOUTS["equal"])
    reason = ext.cutlass_reason(torch.zeros(1, dtype=torch.bfloat16), layout)
    assert reason and ("sm_90" in reason or "built without" in reason)


def test_info_states_the_rule():
    from splitkern.info import report

    assert ext.CUTLASS_RULE in report()


def _hopper_with_cutlass() -> bool:
    return DEVICE.type == "cuda" and not ext.cutlass_reason(torch.zeros(1, device=DEVICE, dtype=torch.bfloat16),
                                                             block_layout((8,), (8,)))


needs_cutlass_gpu = pytest.mark.skipif(not _hopper_with_cutlass(), reason="needs an sm_90 GPU and the CUTLASS build")
TOLERANCE = {torch.float16: dict(rtol=1e-2, atol=2e-2), torch.bfloat16: dict(rtol=2e-2, atol=5e-2)}


@pytest.mark.gpu
@needs_cutlass_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [0, 1, 17, 4096])
@pytest.mark.parametrize("indices", [False, True], ids=["grouped", "permuted"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_pass_matches_the_reference_on_gpu(name, indices, rows, dtype):
    layout = block_layout(*LAYOUTS[name])
    x = torch.randn(rows, layout.in_features, device=DEVICE, dtype=dtype)
    w = torch.randn(layout.weight_numel, device=DEVICE, dtype=dtype) / 8
    b = torch.randn(layout.out_features, device=DEVICE, dtype=dtype)
    dy = torch.randn(rows, layout.out_features, device=DEVICE, dtype=dtype)
    ii, oi = ((random_permutation(layout.in_features), random_permutation(layout.out_features)) if indices
              else (None, None))
    f32 = [t.float() if t is not None else None for t in (x, w, b, dy)]
    want = (reference.block_diag_mm(f32[0], f32[1], f32[2], layout, ii, oi),
            reference.block_diag_mm_grad_input(f32[3], f32[1], layout, ii, oi),
            reference.block_diag_mm_grad_weight(f32[3], f32[0], layout, ii, oi))
    got = (ext.block_diag_mm(x, w, b, layout, ii, oi), ext.block_diag_mm_grad_input(dy, w, layout, ii, oi),
           ext.block_diag_mm_grad_weight(dy, x, layout, ii, oi))
    for g, r in zip(got, want):
        torch.testing.assert_close(g.float(), r, **TOLERANCE[dtype])


@pytest.mark.gpu
@needs_cutlass_gpu
def test_split_linear_forward_and_backward_capture_in_a_cuda_graph_without_warm_up():
    layer = splitkern.nn.SplitLinear((64, 128, 64), (128, 64, 64), device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(256, layer.in_features, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with backend.use_backend("extension"), torch.cuda.stream(stream), torch.cuda.graph(graph):
        y = layer(x)
        y.float().square().sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    with backend.use_backend("reference"):
        x_ref = x.detach().float().requires_grad_()
        ref_layer = splitkern.nn.SplitLinear((64, 128, 64), (128, 64, 64), device=DEVICE)
        ref_layer.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
        ref_layer(x_ref).square().sum().backward()
    torch.testing.assert_close(y.float(), ref_layer(x_ref).detach(), **TOLERANCE[torch.bfloat16])
    torch.testing.assert_close(x.grad.float(), x_ref.grad, rtol=5e-2, atol=2e-1)
