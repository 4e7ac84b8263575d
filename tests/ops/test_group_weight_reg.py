import math

import pytest
import torch

import splitkern
from splitkern.ops import group_weight_reg
from splitkern.reference.group_weight_reg import literal_group_weight_reg
from tests.helpers import DEVICE, assert_close, fast_backends, forward_and_grads

FAST = fast_backends("group_weight_reg")
SHAPES = [(7, 5), (70, 33), (1, 9), (6, 4, 3, 3), (9, 130, 3, 3), (5, 3, 1, 2)]


def assignments(groups, d_in, d_out, dtype=torch.float32):
    p = torch.softmax(torch.randn(groups, d_in, dtype=dtype), 0).to(DEVICE)
    q = torch.softmax(torch.randn(groups, d_out, dtype=dtype), 0).to(DEVICE)
    return p, q


def run(backend_name, w, p, q):
    with splitkern.use_backend(backend_name):
        return group_weight_reg(w, p, q)


def test_hand_computed_linear_case():
    # Hard assignment, feature 0 -> group 0, feature 1 -> group 1 on both sides. Only the two
    # inter-group weights count: row terms (|w01| + |w10|) / (2 sqrt 2), column terms the same,
    # normaliser 2 (G-1) sqrt(1/2) / G = 1/sqrt 2, so R_W = |w01| + |w10| = 4 + 2.
    w = torch.tensor([[3.0, -4.0], [2.0, 5.0]], device=DEVICE)
    eye = torch.eye(2, device=DEVICE)
    for name in ["reference", *FAST]:
        assert run(name, w, eye, eye).item() == pytest.approx(6.0, rel=1e-6)


def test_hand_computed_conv_case():
    # As above with a 1x2 kernel: M = mean of squares over the 2 taps, sigma0 = sqrt(1/(2*2)),
    # normaliser 0.5, so R_W = sqrt(2) (sqrt(M01) + sqrt(M10)) = sqrt(2) (sqrt(12.5) + sqrt(2)) = 7.
    w = torch.zeros(2, 2, 1, 2, device=DEVICE)
    w[0, 1, 0] = torch.tensor([3.0, 4.0])
    w[1, 0, 0] = torch.tensor([0.0, 2.0])
    w[0, 0, 0] = torch.tensor([7.0, 1.0])  # within-group weights do not count
    eye = torch.eye(2, device=DEVICE)
    for name in ["reference", *FAST]:
        assert run(name, w, eye, eye).item() == pytest.approx(7.0, rel=1e-6)


def test_uniform_assignment_of_an_all_equal_weight():
    # p = q = 1/G everywhere, W = 1: every sqrt is sqrt(D/G^2); closed form below.
    d_out, d_in, groups = 6, 4, 3
    w = torch.ones(d_out, d_in, device=DEVICE)
    p = torch.full((groups, d_in), 1 / groups, device=DEVICE)
    q = torch.full((groups, d_out), 1 / groups, device=DEVICE)
    keep = 1 - 1 / groups
    row = groups * d_in * keep * math.sqrt(d_out) / groups / (d_in * math.sqrt(d_out))
    col = groups * d_out * keep * math.sqrt(d_in) / groups / (math.sqrt(d_in) * d_out)
    expected = (row + col) / (2 * (groups - 1) * math.sqrt(1 / d_in) / groups)
    assert run("reference", w, p, q).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("groups", [2, 3, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_form_equals_literal_formula(shape, groups):
    w = torch.randn(*shape, device=DEVICE)
    p, q = assignments(groups, shape[1], shape[0])
    _, expected = forward_and_grads(literal_group_weight_reg, (w, p, q), torch.tensor(1.0, device=DEVICE))
    value, grads = forward_and_grads(lambda *t: run("reference", *t), (w, p, q), torch.tensor(1.0, device=DEVICE))
    assert_close(value, literal_group_weight_reg(w, p, q), rtol=1e-5, atol=1e-6)
    for actual, ref in zip(grads, expected):
        assert_close(actual, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend_name", FAST)
@pytest.mark.parametrize("groups", [2, 5, 17])
@pytest.mark.parametrize("shape", SHAPES)
def test_backend_matches_reference(backend_name, shape, groups):
    w = torch.randn(*shape, device=DEVICE)
    p, q = assignments(groups, shape[1], shape[0])
    grad = torch.tensor(0.7, device=DEVICE)
    ref_value, ref_grads = forward_and_grads(lambda *t: run("reference", *t), (w, p, q), grad)
    value, grads = forward_and_grads(lambda *t: run(backend_name, *t), (w, p, q), grad)
    assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    for actual, ref in zip(grads, ref_grads):
        assert_close(actual, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
def test_pruned_feature_has_finite_gradients(backend_name):
    w = torch.randn(5, 4, device=DEVICE)
    w[:, 2] = 0  # an input feature with no weights: its sqrt terms are 0
    p, q = assignments(3, 4, 5)
    _, grads = forward_and_grads(lambda *t: run(backend_name, *t), (w, p, q), torch.tensor(1.0, device=DEVICE))
    assert all(torch.isfinite(g).all() for g in grads)


def test_gradcheck_float64_reference():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    p, q = (t.requires_grad_() for t in assignments(3, 3, 4, torch.float64))
    assert torch.autograd.gradcheck(lambda *t: run("reference", *t), (w, p, q))


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
def test_opcheck(backend_name):
    w = torch.randn(6, 5, 3, 3, device=DEVICE)
    p, q = assignments(3, 5, 6)
    grad_a, grad_b = torch.randn_like(p), torch.randn_like(q)
    with splitkern.use_backend(backend_name):
        torch.library.opcheck(torch.ops.splitkern.group_weight_reg_gemms.default,
                              (w.requires_grad_(), p.requires_grad_(), q.requires_grad_()))
        torch.library.opcheck(torch.ops.splitkern.group_weight_reg_gemms_backward.default,
                              (w.detach(), p.detach(), q.detach(), grad_a, grad_b))


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
def test_torch_compile_fullgraph(backend_name):
    torch._dynamo.reset()
    w = torch.randn(8, 6, device=DEVICE, requires_grad=True)
    logits = torch.randn(2, 6, device=DEVICE, requires_grad=True)
    q = torch.softmax(torch.randn(2, 8, device=DEVICE), 0)

    def loss(w_, logits_):
        return group_weight_reg(w_, torch.softmax(logits_, 0), q)
    with splitkern.use_backend(backend_name):
        compiled = torch.compile(loss, fullgraph=True)
        assert_close(compiled(w, logits), loss(w, logits))
        assert_close(torch.autograd.grad(compiled(w, logits), logits)[0],
                     torch.autograd.grad(loss(w, logits), logits)[0])


@pytest.mark.parametrize("args, error, name", [
    (lambda w, p, q: (w.int(), p, q), TypeError, "weight"),
    (lambda w, p, q: (w[0], p, q), ValueError, "weight"),
    (lambda w, p, q: (w, p[:1], q[:1]), ValueError, "G >= 2"),
    (lambda w, p, q: (w, p[:, :4], q), ValueError, "p"),
    (lambda w, p, q: (w, p, q[:2]), ValueError, "q"),
    (lambda w, p, q: (w, p.to("meta"), q), ValueError, "p"),
    (lambda w, p, q: (w, p, "q"), TypeError, "q"),
])
def test_bad_input(args, error, name):
    w = torch.randn(6, 5, device=DEVICE)
    p, q = assignments(3, 5, 6)
    with pytest.raises(error, match=name):
        group_weight_reg(*args(w, p, q))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights(dtype):
    w = torch.randn(256, 128, 3, 3, device=DEVICE)
    p, q = assignments(4, 128, 256)
    expected = run("reference", w, p, q)
    for name in FAST:
        value = run(name, w.to(dtype), p, q)
        torch_value = run("reference", w.to(dtype), p, q)
        assert abs(value.item() - expected.item()) <= 2 * abs(torch_value.item() - expected.item()) + 1e-4
