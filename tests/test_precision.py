"""The algebra under an ambient ``torch.autocast(bfloat16)``: every algebra call equals the call
outside autocast (float32 tolerance) and returns the operator's dtype (float32), while forward
passes keep following the autocast."""

from __future__ import annotations

import pytest
import torch

from lit_linearizer import Linearizer
from lit_linearizer.flows import GlowNetwork
from lit_linearizer.operators import (
    DenseOperator,
    DepthwiseConvOperator,
    DiagonalOperator,
    ObliqueProjection,
    OrthogonalProjection,
    ScalarPlusLowRank,
    TimeLowRankOperator,
)
from lit_linearizer.operators.precision import autocast_off, no_autocast
from lit_linearizer.sampling import collapse, integrate

F32 = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def perturb_(module, scale):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _time_low_rank(identity_scale="learned"):
    op = TimeLowRankOperator(12, rank=2, basis_size=4, hidden=16, embedding_dim=8, identity_scale=identity_scale)
    return perturb_(op, 0.2)


OPERATORS = {
    "dense": lambda: (DenseOperator(8, init="random"), None),
    "dense_rank_deficient": lambda: (DenseOperator.from_matrix(torch.randn(6, 2) @ torch.randn(2, 9)), None),
    "diagonal": lambda: (perturb_(DiagonalOperator(8), 1.0), None),
    "scalar_plus_low_rank": lambda: (
        ScalarPlusLowRank(0.7, torch.randn(10, 3), torch.randn(3, 3), torch.randn(10, 3)),
        None,
    ),
    "low_rank_s0": lambda: (ScalarPlusLowRank(0.0, torch.randn(10, 3), torch.randn(3, 3), torch.randn(10, 3)), None),
    "orthogonal_projection": lambda: (OrthogonalProjection(8, 3), None),
    "oblique_projection": lambda: (ObliqueProjection(8, 3, init_shear=1.0), None),
    "depthwise": lambda: (perturb_(DepthwiseConvOperator((2, 2, 3), kernel_size=3), 0.5), None),
    "time_low_rank": lambda: (_time_low_rank(), 0.3),
    "time_low_rank_zero_scale": lambda: (_time_low_rank("zero"), 0.6),
    "product_combination": lambda: (
        (DenseOperator(8, init="random") @ perturb_(DiagonalOperator(8), 1.0)) - 0.5 * DenseOperator(8, init="random"),
        None,
    ),
}


def test_autocast_is_really_on_in_these_tests():
    a = torch.randn(4, 4)
    with bf16():
        assert (a @ a).dtype == torch.bfloat16
        assert torch.linalg.pinv(a).dtype == torch.bfloat16
        with no_autocast():
            assert (a @ a).dtype == torch.float32
        assert autocast_off(lambda: a @ a)().dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")  # restored on the way out


@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_algebra_ignores_autocast(name):
    torch.manual_seed(0)
    op, t = OPERATORS[name]()
    assert op.dtype == torch.float32
    outside = {"matrix": op.matrix(t), "pinv": op.pseudo_inverse(t).matrix(), "at_time": op.at_time(t).matrix(t)}
    with bf16():
        inside = {"matrix": op.matrix(t), "pinv": op.pseudo_inverse(t).matrix(), "at_time": op.at_time(t).matrix(t)}
        pinv = op.pseudo_inverse(t)
    for key in outside:
        assert inside[key].dtype == torch.float32, key
        torch.testing.assert_close(inside[key], outside[key], **F32, msg=key)
    # the pseudo-inverse built inside autocast holds float32 tensors and works outside it
    assert all(x.dtype == torch.float32 for x in [*pinv.parameters(), *pinv.buffers()])
    w = torch.randn(3, op.out_features)
    torch.testing.assert_close(pinv(w), w @ outside["pinv"].T, **F32)
    # forward passes still follow the autocast (the training path)
    if name == "dense":
        with bf16():
            assert op(torch.randn(3, op.in_features), t).dtype == torch.bfloat16


@pytest.mark.parametrize("factored", [True, False], ids=["factored", "dense"])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_collapse_and_integrate_ignore_autocast(method, factored):
    torch.manual_seed(1)
    op = _time_low_rank()
    z = torch.randn(4, 12)
    B_out, z_out = collapse(op, 10, method, factored=factored), integrate(op, z, 10, method)
    with bf16():
        B_in, z_in = collapse(op, 10, method, factored=factored), integrate(op, z, 10, method)
    assert all(x.dtype == torch.float32 for x in [*B_in.parameters(), *B_in.buffers()])
    assert z_in.dtype == torch.float32
    torch.testing.assert_close(B_in.matrix(), B_out.matrix(), **F32)
    torch.testing.assert_close(z_in, z_out, **F32)
    torch.testing.assert_close(B_in(z), z_out, rtol=1e-4, atol=1e-5)  # usable outside autocast: float32 B


def _linearizer():
    torch.manual_seed(2)
    g = GlowNetwork((1, 4, 4), 2, "conv", 16, conditional=False)
    g.train()
    g(torch.randn(4, 1, 4, 4))  # ActNorm's data-dependent init
    perturb_(g, 0.05).eval()
    q1, q2 = torch.linalg.qr(torch.randn(16, 16)).Q, torch.linalg.qr(torch.randn(16, 16)).Q
    return Linearizer(g, DenseOperator.from_matrix(q1 @ torch.diag(torch.linspace(0.5, 1.5, 16)) @ q2))


def _linearizer_calls(f, x, y):
    X = f.x_space
    svd = f.svd(k=3)
    return {
        "pinv": f.pinv(y),
        "transpose": f.transpose(y),
        "svd_values": svd.singular_values,
        "svd_x_vectors": svd.x_vectors,
        "svd_y_vectors": svd.y_vectors,
        "power_inverse": f.power(-1).A.matrix(),
        "power_2": f.power(2).A.matrix(),
        "compose": f.compose(f).A.matrix(),
        "add": X.add(x, y),
        "scale": X.scale(torch.tensor([0.5, -2.0, 1.5]), x),
        "inner": X.inner(x, y),
        "norm": X.norm(x),
        "zero": X.zero(2),
        "linear_combination": X.linear_combination(torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), x),
    }


def test_linearizer_algebra_ignores_autocast():
    f = _linearizer()
    torch.manual_seed(3)
    x, y = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    outside = _linearizer_calls(f, x, y)
    with bf16():
        inside = _linearizer_calls(f, x, y)
        forward_inside = f(x)
    # the forward pass follows the autocast (bf16 products inside g and A): not the float32 value
    assert (forward_inside - f(x)).abs().max() > 1e-4
    for key in outside:
        assert inside[key].dtype == torch.float32, key
        torch.testing.assert_close(inside[key], outside[key], **F32, msg=key)
