"""Latent operators: transposes, dense matrices, pseudo-inverses, projections, banks, algebra."""

from __future__ import annotations

import pytest
import torch

from lit_linearizer.operators import (
    DenseOperator,
    DepthwiseConvOperator,
    DiagonalOperator,
    DiagonalProjection,
    IdentityOperator,
    LinearCombination,
    OperatorBank,
    OrthogonalProjection,
    ProductOperator,
    ScalarPlusLowRank,
    TimeLowRankOperator,
)

pytestmark = pytest.mark.usefixtures("float64_default")


def perturb_(module, scale):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def assert_penrose(M, P, tol=1e-10):
    """The four Moore-Penrose identities for P = M^+ (relative to the sizes involved)."""
    scale_m, scale_p = M.norm(), P.norm()
    assert (M @ P @ M - M).norm() <= tol * scale_m * max(1.0, (scale_m * scale_p).item())
    assert (P @ M @ P - P).norm() <= tol * scale_p * max(1.0, (scale_m * scale_p).item())
    assert ((M @ P).T - M @ P).norm() <= tol * max(1.0, (scale_m * scale_p).item())
    assert ((P @ M).T - P @ M).norm() <= tol * max(1.0, (scale_m * scale_p).item())


def low_rank_matrix(m, n, r):
    return torch.randn(m, r) @ torch.randn(r, n)


# ---------------------------------------------------------------------------------------------
# a zoo of operators: name -> factory returning (operator, t)
# ---------------------------------------------------------------------------------------------
def _time_low_rank(identity_scale="learned", features=8):
    op = TimeLowRankOperator(features, rank=2, basis_size=4, hidden=16, embedding_dim=8, identity_scale=identity_scale)
    return perturb_(op, 0.2)


def _bank():
    ops = [DenseOperator(6, init="random"), DiagonalOperator(6), _diagonal_projection()]
    perturb_(ops[1], 1.0)
    return OperatorBank(ops, ["a", "b", "c"])


ZOO = {
    "identity": lambda: (IdentityOperator(6), None),
    "dense": lambda: (DenseOperator(6, init="random"), None),
    "dense_nonsquare": lambda: (DenseOperator(7, 4, init="random"), None),
    "dense_rank_deficient": lambda: (DenseOperator.from_matrix(low_rank_matrix(5, 8, 2)), None),
    "scalar_plus_low_rank": lambda: (
        ScalarPlusLowRank(0.7, torch.randn(8, 3), torch.randn(3, 3), torch.randn(8, 3)),
        None,
    ),
    "low_rank_s0": lambda: (
        ScalarPlusLowRank(0.0, torch.randn(8, 3), low_rank_matrix(3, 3, 2), torch.randn(8, 3)),
        None,
    ),
    "time_low_rank": lambda: (_time_low_rank(), 0.3),
    "time_low_rank_zero_scale": lambda: (_time_low_rank("zero"), 0.6),
    "diagonal_with_zeros": lambda: (_diagonal_with_zeros(), None),
    "diagonal_projection": lambda: (_diagonal_projection(), None),
    "orthogonal_projection": lambda: (OrthogonalProjection(8, 3), None),
    "depthwise": lambda: (perturb_(DepthwiseConvOperator((2, 3, 4), kernel_size=3), 0.5), None),
    "product_nonsquare": lambda: (DenseOperator(5, 7, init="random") @ DenseOperator(6, 5, init="random"), None),
    "product_with_time": lambda: (_time_low_rank(features=6) @ DenseOperator(6, init="random"), 0.45),
    "combination": lambda: (
        0.3 * DenseOperator(6, init="random") - perturb_(DiagonalOperator(6), 1.0) + IdentityOperator(6),
        None,
    ),
    "bank_combine": lambda: (_bank().combine({"a": 0.25, "c": -1.5}), None),
}


def _diagonal_projection():
    op = DiagonalProjection(6)
    with torch.no_grad():
        op.logits.copy_(torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, -0.2]))  # keeps 3 of 6
    return op


def _diagonal_with_zeros():
    op = DiagonalOperator(6)
    with torch.no_grad():
        op.diagonal.copy_(torch.tensor([2.0, 0.0, -0.5, 3.0, 0.0, 1e-3]))
    return op


def build(name, seed=0):
    torch.manual_seed(seed)
    return ZOO[name]()


@pytest.mark.parametrize("name", list(ZOO))
def test_transpose_is_the_adjoint(name):
    op, t = build(name)
    torch.manual_seed(1)
    z = torch.randn(5, op.in_features)
    w = torch.randn(5, op.out_features)
    lhs = (op(z, t) * w).sum(1)
    rhs = (z * op.transpose(w, t)).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12 * lhs.abs().max().item())
    M = op.matrix(t)
    assert M.shape == (op.out_features, op.in_features)
    torch.testing.assert_close(op.transpose(w, t), w @ M, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(ZOO))
def test_matrix_matches_forward(name):
    op, t = build(name)
    torch.manual_seed(2)
    z = torch.randn(5, op.in_features)
    M = op.matrix(t)
    torch.testing.assert_close(op(z, t), z @ M.T, rtol=1e-12, atol=1e-12)
    if name not in ("identity",):
        assert M.abs().sum() > 0 and not torch.equal(M, torch.eye(*M.shape))


@pytest.mark.parametrize("name", list(ZOO))
def test_pseudo_inverse_satisfies_penrose_identities(name):
    op, t = build(name)
    M = op.matrix(t)
    pinv = op.pseudo_inverse(t)
    assert (pinv.in_features, pinv.out_features) == (op.out_features, op.in_features)
    P = pinv.matrix()
    assert_penrose(M, P)
    torch.testing.assert_close(P, torch.linalg.pinv(M), rtol=1e-8, atol=1e-8)
    # applying the pseudo-inverse operator agrees with its matrix
    torch.manual_seed(3)
    w = torch.randn(4, op.out_features)
    torch.testing.assert_close(pinv(w), w @ P.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["identity", "diagonal_with_zeros", "diagonal_projection", "orthogonal_projection",
                                  "scalar_plus_low_rank", "low_rank_s0", "time_low_rank"])
def test_cheap_pseudo_inverses_avoid_dense_svd(name, monkeypatch):
    op, t = build(name)
    assert op.pinv_is_cheap
    M = op.matrix(t)

    def forbidden(*args, **kwargs):
        raise AssertionError("dense pinv of the full matrix")

    real_pinv = torch.linalg.pinv

    def guarded(A, *args, **kwargs):  # small cores (K x K) may use pinv, the N x N matrix may not
        if A.shape == M.shape and A.shape[0] == op.in_features:
            forbidden()
        return real_pinv(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "pinv", guarded)
    P = op.pseudo_inverse(t).matrix()
    monkeypatch.undo()
    assert_penrose(M, P)


# ---------------------------------------------------------------------------------------------
# ScalarPlusLowRank and TimeLowRankOperator
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.7, -2.0, 0.0])
@pytest.mark.parametrize("core_rank", [3, 1])
@pytest.mark.parametrize("dependent_bases", [False, True])
def test_scalar_plus_low_rank_pinv_equals_dense_pinv(scale, core_rank, dependent_bases):
    torch.manual_seed(4)
    n, k = 10, 3
    left, right = torch.randn(n, k), torch.randn(n, k)
    if dependent_bases:
        left[:, 2] = left[:, 0] - 2 * left[:, 1]  # rank-deficient P: QR must still be exact
    core = low_rank_matrix(k, k, core_rank)
    op = ScalarPlusLowRank(scale, left, core, right)
    M = op.matrix()
    torch.testing.assert_close(M, scale * torch.eye(n) + left @ core @ right.T, rtol=1e-14, atol=1e-14)
    if scale == 0.0:
        assert torch.linalg.matrix_rank(M) < n  # the rank-deficient case
    P = op.pseudo_inverse().matrix()
    torch.testing.assert_close(P, torch.linalg.pinv(M), rtol=1e-9, atol=1e-9)
    assert_penrose(M, P)
    assert isinstance(op.pseudo_inverse(), ScalarPlusLowRank)


def test_scalar_plus_low_rank_singular_with_nonzero_scale_raises():
    e = torch.zeros(5, 1)
    e[0] = 1.0
    op = ScalarPlusLowRank(1.0, e, -torch.ones(1, 1), e)  # I - e e^T: singular
    with pytest.raises(ValueError, match="singular"):
        op.pseudo_inverse()


def test_scalar_plus_low_rank_shapes_and_memory():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        ScalarPlusLowRank(1.0, torch.randn(8, 3), torch.randn(3, 3), torch.randn(8, 2))
    op = ScalarPlusLowRank(1.0, torch.randn(100, 4), torch.randn(4, 4), torch.randn(100, 4))
    assert op.numel() == 2 * 100 * 4 + 16 + 1


def test_time_low_rank_per_sample_times_equal_scalar_calls():
    op = build("time_low_rank")[0]
    torch.manual_seed(5)
    z = torch.randn(6, op.in_features)
    times = torch.tensor([0.0, 0.1, 0.35, 0.5, 0.9, 1.0])
    batched, batched_t = op(z, times), op.transpose(z, times)
    for i in range(6):
        torch.testing.assert_close(batched[i : i + 1], op(z[i : i + 1], float(times[i])), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(
            batched_t[i : i + 1], op.transpose(z[i : i + 1], float(times[i])), rtol=1e-13, atol=1e-13
        )
        torch.testing.assert_close(batched[i], op.matrix(float(times[i])) @ z[i], rtol=1e-12, atol=1e-12)
    # the time matters (otherwise the check above is vacuous)
    assert rel(op(z, 0.1), op(z, 0.9)) > 1e-2
    # a single-element t tensor broadcasts like a float
    torch.testing.assert_close(op(z, torch.tensor([0.35])), op(z, 0.35), rtol=0, atol=0)


def test_time_low_rank_at_time_and_errors():
    op = build("time_low_rank")[0]
    torch.manual_seed(6)
    z = torch.randn(3, op.in_features)
    fixed = op.at_time(0.25)
    assert isinstance(fixed, ScalarPlusLowRank)
    torch.testing.assert_close(fixed(z), op(z, 0.25), rtol=1e-13, atol=1e-13)
    # c(t) is learned: at init it is exactly t, after perturbation it is not
    fresh = TimeLowRankOperator(8, rank=2, basis_size=4, hidden=16, embedding_dim=8)
    times = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(fresh.coefficients(times)[0], times, rtol=0, atol=0)
    assert (op.coefficients(times)[0] - times).abs().max() > 1e-2
    zero = TimeLowRankOperator(8, rank=2, basis_size=4, hidden=16, embedding_dim=8, identity_scale="zero")
    assert torch.equal(zero.coefficients(times)[0], torch.zeros(3))
    with pytest.raises(ValueError, match="needs a time"):
        op(z)
    with pytest.raises(ValueError, match="t must be"):
        op(z, torch.rand(2))
    with pytest.raises(ValueError, match="identity_scale"):
        TimeLowRankOperator(8, identity_scale="half")
    with pytest.raises(ValueError, match="rank <= basis_size <= features"):
        TimeLowRankOperator(8, rank=4, basis_size=2)
    with pytest.raises(ValueError, match=r"expects input of shape"):
        op(torch.randn(3, 7), 0.5)


# ---------------------------------------------------------------------------------------------
# projections
# ---------------------------------------------------------------------------------------------
def _assert_exact_projection(op):
    mask = op.mask()
    assert bool(((mask == 0) | (mask == 1)).all())
    P = op.matrix()
    assert torch.equal(P @ P, P)
    assert torch.equal(P.T, P)
    z = torch.randn(4, op.in_features)
    out = op(z)
    assert torch.equal(op(out), out)  # idempotent on vectors, exactly
    assert bool(((out == z) | (out == 0)).all())
    assert op.rank == int(mask.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_projection_is_exact_and_stays_exact_after_training(dtype):
    torch.manual_seed(7)
    op = DiagonalProjection(32).to(dtype)
    with torch.no_grad():
        op.logits.copy_(0.05 * torch.randn(32, dtype=dtype))  # p near 0.5: steps flip entries
    _assert_exact_projection(op)
    optimizer = torch.optim.SGD(op.parameters(), lr=5.0)
    target = torch.randn(16, 32, dtype=dtype)
    x = torch.randn(16, 32, dtype=dtype)
    before = op.mask().detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        loss = ((op(x) - target) ** 2).mean() + 0.1 * op.keep_probability().mean()
        loss.backward()
        # straight-through: the gradient reaches the logits although the mask is piecewise constant
        assert op.logits.grad is not None and op.logits.grad.abs().max() > 0
        optimizer.step()
        _assert_exact_projection(op)
    assert not torch.equal(op.mask().detach(), before)  # the training changed which coordinates are kept
    assert op.pseudo_inverse() is op


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_orthogonal_projection_is_idempotent(dtype, tol):
    torch.manual_seed(8)
    op = OrthogonalProjection(20, 6).to(dtype)
    for _ in range(2):
        P = op.matrix()
        assert (P @ P - P).abs().max() <= tol
        assert (P.T - P).abs().max() <= tol
        assert abs(torch.trace(P).item() - 6) <= 20 * tol
        z = torch.randn(3, 20, dtype=dtype)
        assert (op(op(z)) - op(z)).abs().max() <= 10 * tol * z.abs().max()
        # a gradient step keeps it a projection (it is rebuilt from the QR of the weight)
        loss = (op(z) - z.flip(1)).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            op.weight.sub_(0.5 * op.weight.grad)
        op.weight.grad = None
    with pytest.raises(ValueError, match="rank"):
        OrthogonalProjection(5, 6)


# ---------------------------------------------------------------------------------------------
# banks and the operator algebra
# ---------------------------------------------------------------------------------------------
def test_bank_combine_and_interpolate():
    bank = _bank_seeded()
    mats = [bank[i].matrix() for i in range(3)]
    torch.manual_seed(9)
    z = torch.randn(4, 6)

    combined = bank.combine([0.2, -1.0, 3.5])
    torch.testing.assert_close(combined.matrix(), 0.2 * mats[0] - mats[1] + 3.5 * mats[2], rtol=1e-14, atol=1e-14)
    by_name = bank.combine({"c": 3.5, "a": 0.2, "b": -1.0})
    torch.testing.assert_close(by_name(z), combined(z), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(combined.transpose(z), z @ combined.matrix(), rtol=1e-13, atol=1e-13)

    for alpha in (0.0, 0.3, 1.0):
        interp = bank.interpolate("a", "b", alpha)
        expected = alpha * mats[0] + (1 - alpha) * mats[1]
        torch.testing.assert_close(interp.matrix(), expected, rtol=1e-14, atol=1e-14)
    # the end points reproduce the members exactly (not just closely)
    assert torch.equal(bank.interpolate("a", "b", 1.0)(z), bank["a"](z))
    assert torch.equal(bank.interpolate("a", "b", 0.0)(z), bank["b"](z))
    assert torch.equal(bank.interpolate(0, 2, 0.0).matrix(), mats[2])
    assert torch.equal(bank.interpolate(0, 2, 1.0).matrix(), mats[0])
    # the interpolation is of operators, and is affine in alpha
    mid = bank.interpolate("a", "c", 0.5)(z)
    torch.testing.assert_close(mid, 0.5 * (bank["a"](z) + bank["c"](z)), rtol=1e-14, atol=1e-14)


def _bank_seeded():
    torch.manual_seed(10)
    return _bank()


def test_bank_indexing_per_sample_and_errors():
    bank = _bank_seeded()
    assert len(bank) == 3 and bank["b"] is bank[1] and bank[-1] is bank[2]
    torch.manual_seed(11)
    z = torch.randn(5, 6)
    idx = torch.tensor([2, 0, 0, 1, 2])
    out = bank.apply_per_sample(z, idx)
    for i in range(5):
        torch.testing.assert_close(out[i : i + 1], bank[int(idx[i])](z[i : i + 1]), rtol=1e-14, atol=1e-14)
    with pytest.raises(KeyError, match="no operator named"):
        bank["zzz"]
    with pytest.raises(IndexError):
        bank[3]
    with pytest.raises(ValueError, match="one shape"):
        OperatorBank([DenseOperator(6), DenseOperator(5)])
    with pytest.raises(ValueError, match="unique name"):
        OperatorBank([DenseOperator(6), DenseOperator(6)], ["x", "x"])
    with pytest.raises(ValueError, match="need 3 weights"):
        bank.combine([1.0, 2.0])
    replicated = OperatorBank.replicate(lambda: DenseOperator(4, init="random"), ["p", "q"])
    assert replicated.names == ["p", "q"] and replicated["p"] is not replicated["q"]


def test_operator_algebra_matches_matrices():
    torch.manual_seed(12)
    a, b = DenseOperator(6, init="random"), perturb_(DiagonalOperator(6), 1.0)
    c = DenseOperator(6, 3, init="random")  # 6 -> 3
    ma, mb, mc = a.matrix(), b.matrix(), c.matrix()
    cases = [
        (a @ b, ma @ mb),
        (c @ a @ b, mc @ ma @ mb),
        (a + b, ma + mb),
        (a - b, ma - mb),
        (2.5 * a, 2.5 * ma),
        (a * -0.5, -0.5 * ma),
        (-b, -mb),
        (LinearCombination([0.3, 0.7], [a, b]) @ a, (0.3 * ma + 0.7 * mb) @ ma),
    ]
    for op, expected in cases:
        torch.testing.assert_close(op.matrix(), expected, rtol=1e-13, atol=1e-13)
        w = torch.randn(2, op.out_features)
        torch.testing.assert_close(op.transpose(w), w @ expected, rtol=1e-13, atol=1e-13)
    assert (c @ a).in_features == 6 and (c @ a).out_features == 3


def test_product_and_combination_shape_errors():
    a, c = DenseOperator(6), DenseOperator(6, 3)  # c: 6 -> 3
    message = r"cannot multiply operators: DenseOperator takes 6 features but DenseOperator returns 3"
    with pytest.raises(ValueError, match=message):
        a @ c
    with pytest.raises(ValueError, match="at least one factor"):
        ProductOperator([])
    with pytest.raises(ValueError, match=r"cannot add operators of different shapes \(out, in\)"):
        a + c
    with pytest.raises(ValueError, match="one coefficient per operator"):
        LinearCombination([1.0, 2.0], [a])
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 6\)"):
        a(torch.randn(2, 5))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DepthwiseConvOperator((2, 3, 3), kernel_size=4)
    with pytest.raises(ValueError, match="unknown init"):
        DenseOperator(3, init="zeros")


def test_default_operators_start_as_identity():
    torch.manual_seed(13)
    z = torch.randn(3, 2 * 3 * 4)
    for op in (DenseOperator(24), DiagonalOperator(24), DepthwiseConvOperator((2, 3, 4), 5), DiagonalProjection(24)):
        assert torch.equal(op(z), z), type(op).__name__
    assert torch.equal(DenseOperator(4, 6).matrix(), torch.eye(6, 4))
