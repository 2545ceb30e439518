"""Latent ODE sampling: the collapsed one-step matrix B equals the iterative solver, in float64."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lit_linearizer.operators import DenseOperator, LatentOperator, ScalarPlusLowRank, TimeLowRankOperator
from lit_linearizer.sampling import (
    LAST_STEP_TABLEAUS,
    RK4,
    RK4_LAST,
    TABLEAUS,
    Tableau,
    collapse,
    integrate,
    step_times,
    velocity,
)

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


def reference_B(op, num_steps, method, cross_terms=True, last="nodes_below_one"):
    """B built densely from the formulas in the sampling module's docstring, independently of the library.

    Every step is written in velocity form with ``L(t) = (A_t - I) / (1 - t)``; the library takes its
    last step in data-prediction form, so agreement also checks that rewriting.
    ``cross_terms=False`` is the reference implementation's wrong RK4 collapse:
    ``I + dt/6 (L(t) + 2 L(t + dt/2) + 2 L(t + dt/2) + L(t + dt))`` with first-order matrices.
    ``last="A"`` is this module's former last step ``M = A_{1 - dt}`` for both solvers (first order
    for RK4: RK4 was then second order).
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
        if k == num_steps - 1 and (method == "euler" or last == "A" or not cross_terms):
            M = A(t)
        elif k == num_steps - 1:  # RK4's last step: five stages, fourth order, nodes 0, 1/4, 1/2, 1/2, 3/4
            k0 = L(t)
            k1 = L(t + dt / 4) @ (eye + dt / 4 * k0)
            k2 = L(t + dt / 2) @ (eye + dt / 2 * k0)
            k3 = L(t + dt / 2) @ (eye + dt / 4 * k0 + dt / 4 * k2)
            k4 = L(t + 3 * dt / 4) @ (eye + dt / 4 * k0 + dt / 2 * k3)
            M = eye + dt * (2 / 3 * k1 - 1 / 3 * k2 + 2 / 3 * k4)
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


def test_one_euler_step_is_A_at_zero_and_last_euler_step_is_exact():
    op = random_operator()
    torch.manual_seed(6)
    z0 = torch.randn(4, N)
    torch.testing.assert_close(integrate(op, z0, 1, "euler"), op(z0, 0.0), rtol=0, atol=0)
    # Euler's last step z + dt v(z, 1 - dt) is exactly A_{1 - dt} z: the sampler reaches t = 1
    t = 0.75
    torch.testing.assert_close(z0 + 0.25 * velocity(op, z0, t), op(z0, t), rtol=1e-13, atol=1e-13)
    two = integrate(op, z0, 4, "euler")
    manual = z0
    for k in range(3):
        manual = manual + 0.25 * velocity(op, manual, k / 4)
    torch.testing.assert_close(two, op(manual, 0.75), rtol=1e-13, atol=1e-13)
    # one RK4 step is the five-stage last step from t = 0, not A_0 (that would be first order)
    one = integrate(op, z0, 1, "rk4")
    torch.testing.assert_close(one, z0 @ reference_B(op, 1, "rk4").T, rtol=1e-12, atol=1e-12)
    assert rel_err(one, op(z0, 0.0)) > 1e-2


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


@pytest.mark.parametrize("fn", ["integrate", "collapse"])
def test_non_integer_step_count_names_the_argument(fn):
    op = random_operator()
    z0 = torch.randn(2, N)
    call = (lambda steps: integrate(op, z0, steps)) if fn == "integrate" else (lambda steps: collapse(op, steps))
    for bad in (2.5, 4.0, "8", True, None):
        with pytest.raises(TypeError, match=r"^num_steps must be an integer >= 1 \(the number of solver steps\), got"):
            call(bad)
    call(torch.tensor(3))  # anything with __index__ is an integer
    call(torch.tensor(3.0).long())
    with pytest.raises(TypeError, match=r"^num_steps must be an integer >= 1 .* got tensor\(3\.\) \(Tensor\)$"):
        call(torch.tensor(3.0))
    with pytest.raises(TypeError, match="operator must be a LatentOperator, got Tensor"):
        (integrate(torch.eye(N), z0, 2) if fn == "integrate" else collapse(torch.eye(N), 2, factored=False))
    with pytest.raises(ValueError, match=r"square operator, but it maps 6 -> 4 features"):
        (
            integrate(DenseOperator(6, 4), torch.randn(2, 6), 2)
            if fn == "integrate"
            else collapse(DenseOperator(6, 4), 2, factored=False)
        )


# ---------------------------------------------------------------------------------------------
# B is a value
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "dense"])
def test_B_owns_its_storage_and_survives_an_optimizer_step(factored):
    op = random_operator(seed=11)
    B = collapse(op, 20, "rk4", factored=factored)
    before = B.matrix().clone()
    tensors = [*B.parameters(), *B.buffers()]
    assert tensors and all(not x.requires_grad and x.grad_fn is None for x in tensors)
    op_storage = {p.untyped_storage().data_ptr() for p in op.parameters()}
    assert not op_storage & {x.untyped_storage().data_ptr() for x in tensors}
    torch.manual_seed(12)
    z = torch.randn(4, N)
    out = B(z)
    assert not out.requires_grad and out.grad_fn is None  # no autograd graph behind B
    # a gradient step on the source operator, in place as an optimizer does it: B does not move
    loss = (op(z, torch.rand(4)) - z.flip(1)).pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in op.parameters():
            p.sub_(0.5 * p.grad)
            p.mul_(1.5)
    assert torch.equal(B.matrix(), before)
    fresh = collapse(op, 20, "rk4", factored=factored)
    assert rel_err(fresh.matrix(), before) > 1e-2  # the update was real
    # the pseudo-inverse of B (and of A_t) is a value too
    P = B.pseudo_inverse()
    assert all(not x.requires_grad for x in [*P.parameters(), *P.buffers()])
    P_t = op.pseudo_inverse(0.3)
    assert all(not x.requires_grad for x in [*P_t.parameters(), *P_t.buffers()])
    assert not {p.untyped_storage().data_ptr() for p in op.parameters()} & {
        x.untyped_storage().data_ptr() for x in [*P_t.parameters(), *P_t.buffers()]
    }


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_pure_low_rank_operator_gives_B_without_identity_part(method):
    """c(t) = 0: every D_i of the last step has no identity part, so B's scale is exactly 0 (and
    its cheap pseudo-inverse takes the exact QR path), as for the exact flow."""
    op = random_operator(seed=13, identity_scale="zero")
    for num_steps in (1, 3, 10):
        B = collapse(op, num_steps, method)
        assert B.scale.item() == 0.0
        M = B.matrix()
        torch.testing.assert_close(B.pseudo_inverse().matrix(), torch.linalg.pinv(M), rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# the schemes and their order
# ---------------------------------------------------------------------------------------------
def order_conditions(tableau: Tableau) -> dict[str, tuple[Fraction, Fraction]]:
    """The eight conditions of order 4 (Butcher trees up to order 4): ``(value, required)``."""
    c, b = tableau.nodes, tableau.weights
    s = len(c)
    a = [[tableau.a[i][j] if j < i else Fraction(0) for j in range(s)] for i in range(s)]
    ac = [sum(a[i][j] * c[j] for j in range(s)) for i in range(s)]
    ac2 = [sum(a[i][j] * c[j] ** 2 for j in range(s)) for i in range(s)]
    aac = [sum(a[i][j] * ac[j] for j in range(s)) for i in range(s)]
    dot = lambda u: sum(bi * ui for bi, ui in zip(b, u))  # noqa: E731
    return {
        "b": (sum(b), Fraction(1)),
        "bc": (dot(c), Fraction(1, 2)),
        "bc2": (dot([x**2 for x in c]), Fraction(1, 3)),
        "bac": (dot(ac), Fraction(1, 6)),
        "bc3": (dot([x**3 for x in c]), Fraction(1, 4)),
        "bcac": (dot([x * y for x, y in zip(c, ac)]), Fraction(1, 8)),
        "bac2": (dot(ac2), Fraction(1, 12)),
        "baac": (dot(aac), Fraction(1, 24)),
    }


@pytest.mark.parametrize("name", ["rk4", "rk4_last"])
def test_rk4_tableaus_are_fourth_order(name):
    tableau = {"rk4": RK4, "rk4_last": RK4_LAST}[name]
    for condition, (value, required) in order_conditions(tableau).items():
        assert value == required, condition
    if name == "rk4_last":
        assert max(tableau.nodes) == Fraction(3, 4)  # never evaluates the singular L(1)
        alpha, w = tableau.data_prediction
        assert w == tuple(Fraction(x) for x in ("-5/9", "8/9", "2/3", "-8/3", "8/3")) and sum(w) == 1
        assert alpha[3] == (Fraction(1, 4), 0, Fraction(1, 2)) and alpha[4] == (Fraction(1, 4), 0, 0, 1)
    assert TABLEAUS["rk4"] is RK4 and LAST_STEP_TABLEAUS["rk4"] is RK4_LAST
    assert LAST_STEP_TABLEAUS["euler"].data_prediction == (((),), (Fraction(1),))  # z(1) = A_{1-h} z
    assert step_times(2, "rk4") == [0.0, 0.25, 0.5, 0.625, 0.75, 0.875]
    with pytest.raises(ValueError, match="every node below 1"):
        _ = RK4.data_prediction


class ClosedFormFlow(LatentOperator):
    """``A_t = s(t) I + U C(t) U^T`` (orthonormal U) whose flow map at t = 1, ``exact()``, is known."""

    time_conditioned = True

    def __init__(self, basis):
        super().__init__(basis.shape[0], basis.shape[0])
        self.register_buffer("basis", basis)

    def factors(self, times):
        raise NotImplementedError

    def _at(self, t):
        scale, core = self.factors(torch.as_tensor(t, dtype=self.basis.dtype).reshape(-1))
        assert scale.shape == (1,), "one time at a time"
        return scale[0], core[0]

    def grid_factors(self, times):
        scale, core = self.factors(times)
        return scale, self.basis, core, self.basis

    def forward(self, z, t=None):
        scale, core = self._at(t)
        return scale * z + ((z @ self.basis) @ core.T) @ self.basis.T

    def transpose(self, z, t=None):
        scale, core = self._at(t)
        return scale * z + ((z @ self.basis) @ core) @ self.basis.T

    def matrix(self, t=None):
        scale, core = self._at(t)
        return scale * torch.eye(self.in_features) + self.basis @ core @ self.basis.T


class GaussianFlow(ClosedFormFlow):
    """The exact conditional expectation of Gaussian latents: ``z0 ~ N(0, I)``, ``z1 ~ N(0, S)``
    independent, ``z_t = (1 - t) z0 + t z1``, ``S = I + U diag(v - 1) U^T``:

        A_t = E[z1 | z_t] = t S ((1 - t)^2 I + t^2 S)^{-1}.

    All A_t commute with S; per eigenvalue ``s`` the velocity ``(a_t - 1) z / (1 - t)`` with
    ``a_t = t s / ((1 - t)^2 + t^2 s)`` is ``d/dt log std_t`` for ``std_t^2 = (1 - t)^2 + t^2 s``:
    the flow scales each eigen-direction by ``std_t``, so ``z(1) = S^{1/2} z0``. ``A_1 = I``: the
    field is smooth up to t = 1.
    """

    def __init__(self, basis, variances):
        super().__init__(basis)
        self.register_buffer("variances", variances)

    @staticmethod
    def gain(t, s):
        return t * s / ((1 - t) ** 2 + t**2 * s)

    def factors(self, times):
        scale = self.gain(times, 1.0)
        return scale, torch.diag_embed(self.gain(times[:, None], self.variances) - scale[:, None])

    def exact(self):
        return torch.eye(self.in_features) + self.basis @ torch.diag(self.variances.sqrt() - 1) @ self.basis.T


class MatrixExpFlow(ClosedFormFlow):
    """A non-commuting field with a known flow: ``Phi_t = exp(alpha t + beta t^2) (I + U (E_t - I) U^T)``,
    ``E_t = exp(t X) exp(t^2 Y)``, so ``L(t) = Phi_t' Phi_t^-1 = (alpha + 2 beta t) I + U (X + E_t' ...) U^T``
    with ``E_t' E_t^-1 = X + exp(t X) 2 t Y exp(-t X)``, and ``A_t = I + (1 - t) L(t)``. The ``A_t`` do
    not commute, so the check covers every fourth-order condition, not only the commutative ones.
    """

    def __init__(self, basis, x, y, alpha, beta):
        super().__init__(basis)
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        self.alpha, self.beta = alpha, beta

    def factors(self, times):
        e = torch.linalg.matrix_exp(times[:, None, None] * self.x)
        generator = self.x + e @ (2 * times[:, None, None] * self.y) @ torch.linalg.inv(e)
        return 1 + (1 - times) * (self.alpha + 2 * self.beta * times), (1 - times)[:, None, None] * generator

    def exact(self):
        k = self.basis.shape[1]
        e = torch.linalg.matrix_exp(self.x) @ torch.linalg.matrix_exp(self.y)
        return math.exp(self.alpha + self.beta) * (
            torch.eye(self.in_features) + self.basis @ (e - torch.eye(k)) @ self.basis.T
        )


def closed_form_flow(name):
    torch.manual_seed(14)
    basis = torch.linalg.qr(torch.randn(12, 4)).Q
    if name == "gaussian":
        return GaussianFlow(basis, torch.tensor([0.05, 0.3, 2.0, 9.0]))
    return MatrixExpFlow(basis, 0.4 * torch.randn(4, 4), 0.4 * torch.randn(4, 4), 0.3, -0.4)


def spectral_rel_err(M, exact):
    return (torch.linalg.matrix_norm(M - exact, 2) / torch.linalg.matrix_norm(exact, 2)).item()


def measured_orders(errors):
    return [math.log2(e1 / e2) for e1, e2 in zip(errors[:-1], errors[1:])]


CONVERGENCE_STEPS = (16, 32, 64, 128)


@pytest.mark.parametrize("name", ["gaussian", "matrix_exp"])
def test_closed_form_flows_are_what_they_claim(name):
    """The test fields themselves: the ODE solution (a fine run of an independent solver) is ``exact()``."""
    op = closed_form_flow(name)
    exact = op.exact()
    assert spectral_rel_err(exact, torch.eye(12)) > 0.5  # the flow goes somewhere
    if name == "gaussian":  # A_t is E[z1 | z_t]: A_t = t S ((1 - t)^2 I + t^2 S)^-1
        S = exact @ exact
        t = 0.3
        torch.testing.assert_close(op.matrix(t), t * S @ torch.linalg.inv((1 - t) ** 2 * torch.eye(12) + t**2 * S))
    else:  # the A_t do not commute
        A1, A2 = op.matrix(0.2), op.matrix(0.7)
        assert (A1 @ A2 - A2 @ A1).norm() > 1e-2 * A1.norm() * A2.norm()
    # classical RK4 with 500 steps on [0, 1 - 1e-4], then Euler's last step A_{1-1e-4} (error O(1e-8):
    # A_t = I + (1 - t) L(t) makes the clean-latent prediction A_t z(t) stationary at t = 1)
    n, stop = 500, 1 - 1e-4
    h = stop / n
    times = torch.arange(2 * n + 1) * (h / 2)
    scales, cores = op.factors(times)
    eye = torch.eye(12)
    L = ((scales[:, None, None] - 1) * eye + op.basis @ cores @ op.basis.T) / (1 - times)[:, None, None]
    z = eye
    for k in range(n):
        k1 = L[2 * k] @ z
        k2 = L[2 * k + 1] @ (z + h / 2 * k1)
        k3 = L[2 * k + 1] @ (z + h / 2 * k2)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + L[2 * k + 2] @ (z + h * k3))
    assert spectral_rel_err(op.matrix(stop) @ z, exact) < 1e-6


@pytest.mark.parametrize("name", ["gaussian", "matrix_exp"])
def test_rk4_is_fourth_order_and_euler_first_order(name, record_property):
    op = closed_form_flow(name)
    exact = op.exact()
    errors = {}
    for method in ("rk4", "euler"):
        for factored in (True, False):
            errs = [
                spectral_rel_err(collapse(op, T, method, factored=factored).matrix(), exact) for T in CONVERGENCE_STEPS
            ]
            errors[method, factored] = errs
        torch.testing.assert_close(
            torch.tensor(errors[method, True]), torch.tensor(errors[method, False]), rtol=1e-6, atol=1e-14
        )
        # the collapse is the sampler: B z0 == T solver steps, to roundoff
        z0 = torch.randn(3, 12)
        assert rel_err(collapse(op, 128, method)(z0), integrate(op, z0, 128, method)) <= 1e-12
    rk4, euler = measured_orders(errors["rk4", True]), measured_orders(errors["euler", True])
    record_property("rk4_errors", errors["rk4", True])
    record_property("rk4_orders", rk4)
    record_property("euler_orders", euler)
    assert min(rk4) >= 3.8 and max(rk4) <= 4.6, rk4
    assert errors["rk4", True][-1] < 1e-8
    assert 0.8 <= min(euler) and max(euler) <= 1.2 and euler[-1] >= 0.9, euler
    # the former last step z <- A_{1-h} z (first order locally) made RK4 second order
    old = [spectral_rel_err(reference_B(op, T, "rk4", last="A"), exact) for T in CONVERGENCE_STEPS[:3]]
    assert max(measured_orders(old)) < 2.3 and old[-1] > 100 * errors["rk4", True][2]
