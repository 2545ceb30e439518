"""Latent ODE sampling: the collapsed one-step matrix B equals the iterative solver, in float64."""

from __future__ import annotations

import pytest
import torch

from lit_linearizer.operators import DenseOperator, ScalarPlusLowRank, TimeLowRankOperator
from lit_linearizer.sampling import collapse, integrate, velocity

N = 24
TOL = 1e-10


pytestmark = pytest.mark.usefixtures("float64_default")


def rel_err(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


def random_operator(features=N, seed=0, **kwargs):
    """An untrained TimeLowRankOperator with every parameter perturbed: c(t) != t, A_t far from I."""
    torch.manual_seed(seed)
    kwargs = {"rank": 3, "basis_size": 6, "hidden": 32, "embedding_dim": 16, **kwargs}
    op = TimeLowRankOperator(features, **kwargs)
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return op


def reference_B(op, num_steps, method, cross_terms=True):
    """B built densely from the formulas in docs/LINEARIZER.md, independently of the library.

    ``cross_terms=False`` is the reference implementation's wrong RK4 collapse:
    ``I + dt/6 (L(t) + 2 L(t + dt/2) + 2 L(t + dt/2) + L(t + dt))`` with first-order matrices.
    """
    n = op.in_features
    eye = torch.eye(n)
    dt = 1.0 / num_steps

    def A(t):
        return op.matrix(t)

    def L(t):
        return (A(t) - eye) / (1.0 - t)

    B = eye
    for k in range(num_steps):
        t = k / num_steps
        if k == num_steps - 1:
            M = A(t)
        elif method == "euler":
            M = eye + dt * L(t)
        elif cross_terms:
            k1 = L(t)
            k2 = L(t + dt / 2) @ (eye + dt / 2 * k1)
            k3 = L(t + dt / 2) @ (eye + dt / 2 * k2)
            k4 = L(t + dt) @ (eye + dt * k3)
            M = eye + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:
            M = eye + dt / 6 * (L(t) + 2 * L(t + dt / 2) + 2 * L(t + dt / 2) + L(t + dt))
        B = M @ B
    return B


def test_random_operator_is_nontrivial():
    op = random_operator()
    times = torch.linspace(0, 1, 11)
    scale = op.coefficients(times)[0]
    assert (scale - times).abs().max() > 1e-2  # the learned c(t) moved away from its init c = t
    assert scale.abs().min() > 1e-3
    M = op.matrix(0.5)
    assert torch.linalg.matrix_norm(M - scale[5] * torch.eye(N), ord=2) > 0.1  # a real low-rank part


@pytest.mark.parametrize("num_steps", [1, 2, 7, 100])
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "dense"])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_collapse_equals_integrate(method, factored, num_steps):
    op = random_operator()
    torch.manual_seed(1)
    z0 = torch.randn(5, N)
    z1 = integrate(op, z0, num_steps, method)
    B = collapse(op, num_steps, method, factored=factored)
    assert isinstance(B, ScalarPlusLowRank if factored else DenseOperator)
    assert rel_err(B(z0), z1) <= TOL
    # the trajectory did something: B is neither I nor the single-step A_0
    assert rel_err(z1, z0) > 1e-2
    if num_steps > 1:
        assert rel_err(z1, op(z0, 0.0)) > 1e-3
    # and both agree with the dense matrices written out from the documented formulas
    torch.testing.assert_close(B.matrix(), reference_B(op, num_steps, method), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_factored_and_dense_B_agree_and_transpose(method):
    op = random_operator(seed=3, identity_scale="zero")
    Bf, Bd = collapse(op, 7, method, factored=True), collapse(op, 7, method, factored=False)
    torch.testing.assert_close(Bf.matrix(), Bd.matrix(), rtol=TOL, atol=TOL)
    torch.manual_seed(4)
    w = torch.randn(3, N)
    torch.testing.assert_close(Bf.transpose(w), w @ Bd.matrix(), rtol=TOL, atol=TOL)
    # the pseudo-inverse of B (inversion: image latent -> noise latent) is exact
    M, P = Bf.matrix(), Bf.pseudo_inverse().matrix()
    torch.testing.assert_close(M @ P @ M, M, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(P, torch.linalg.pinv(M), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_dense_collapse_of_a_time_independent_operator(method):
    torch.manual_seed(5)
    op = DenseOperator(N, init="random")
    z0 = torch.randn(3, N)
    for num_steps in (1, 5):
        B = collapse(op, num_steps, method, factored=False)
        assert rel_err(B(z0), integrate(op, z0, num_steps, method)) <= TOL
    with pytest.raises(ValueError, match="factored=False"):
        collapse(op, 5, method, factored=True)


def test_one_step_is_A_at_zero_and_last_euler_step_is_exact():
    op = random_operator()
    torch.manual_seed(6)
    z0 = torch.randn(4, N)
    torch.testing.assert_close(integrate(op, z0, 1, "euler"), op(z0, 0.0), rtol=0, atol=0)
    torch.testing.assert_close(integrate(op, z0, 1, "rk4"), op(z0, 0.0), rtol=0, atol=0)
    # Euler's last step z + dt v(z, 1 - dt) is exactly A_{1 - dt} z: the sampler reaches t = 1
    t = 0.75
    torch.testing.assert_close(z0 + 0.25 * velocity(op, z0, t), op(z0, t), rtol=1e-13, atol=1e-13)
    two = integrate(op, z0, 4, "euler")
    manual = z0
    for k in range(3):
        manual = manual + 0.25 * velocity(op, manual, k / 4)
    torch.testing.assert_close(two, op(manual, 0.75), rtol=1e-13, atol=1e-13)


def test_rk4_collapse_without_cross_terms_is_wrong():
    """Regression: the reference's RK4 collapse drops the cross terms and misses iterated RK4."""
    op = random_operator(seed=7)
    torch.manual_seed(8)
    z0 = torch.randn(6, N)
    for num_steps in (6, 100):
        z1 = integrate(op, z0, num_steps, "rk4")
        wrong = z0 @ reference_B(op, num_steps, "rk4", cross_terms=False).T
        assert rel_err(wrong, z1) > 1e-3
        for factored in (True, False):
            assert rel_err(collapse(op, num_steps, "rk4", factored=factored)(z0), z1) <= TOL


def test_factored_B_memory_at_image_size(monkeypatch):
    """64 x 64 x 3 latents, rank 8, T = 100, default basis: B must stay far below N^2 numbers."""
    n = 64 * 64 * 3
    dense_numel = n * n  # Python int: 150,994,944; never allocated
    torch.manual_seed(9)
    op = TimeLowRankOperator(n, rank=8, hidden=64, embedding_dim=32)
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.01 * torch.randn_like(p))

    real_eye = torch.eye

    def guarded_eye(*args, **kwargs):
        if args and args[0] >= n:
            raise AssertionError("a dense N x N identity was allocated")
        return real_eye(*args, **kwargs)

    monkeypatch.setattr(torch, "eye", guarded_eye)
    for method in ("euler", "rk4"):
        B = collapse(op, 100, method, factored=True)
        assert isinstance(B, ScalarPlusLowRank)
        assert B.numel() <= dense_numel // 10
        assert B.numel() == 2 * n * op.basis_size + op.basis_size**2 + 1
        # still the right matrix: check it on two vectors against the iterative solver
        z0 = torch.randn(2, n)
        assert rel_err(B(z0), integrate(op, z0, 100, method)) <= TOL


@pytest.mark.parametrize("fn", ["integrate", "collapse"])
def test_bad_method_or_step_count_raise(fn):
    op = random_operator()
    z0 = torch.randn(2, N)

    def call(steps, method):
        if fn == "integrate":
            return integrate(op, z0, steps, method)
        return collapse(op, steps, method)

    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        call(4, "heun")
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        call(0, "euler")
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        call(-3, "rk4")
