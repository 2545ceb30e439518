"""The Linearizer's algebra in float64: superposition, adjoint, pseudo-inverse, powers, composition,
SVD and the induced vector spaces, with non-square and rank-deficient operators and networks
perturbed far from the identity. Every identity is held to 1e-10 relative."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_linearizer import InducedSpace, Linearizer, LinearizerSVD
from lit_linearizer.flows import GlowNetwork, IdentityFlow, ResidualFlowNetwork
from lit_linearizer.operators import DenseOperator, DiagonalProjection, IdentityOperator, TimeLowRankOperator

TOL = 1e-10
BATCH = 3


pytestmark = pytest.mark.usefixtures("float64_default")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def rel_err(a, b):
    """Worst per-sample ||a - b|| / ||b||."""
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


def close_scalars(a, b, scale):
    """Inner products compared relative to the size of the vectors that formed them."""
    return ((a - b).abs() / scale).max().item()


def prepared(net, cond=None, scale=0.1):
    """ActNorm's data-dependent init, then every parameter perturbed: g is far from the identity.

    0.1 * randn, not more: with 0.3 the Glow networks' Jacobians reach condition numbers of
    1e7-1e8 at some points (e.g. at the induced zero g^-1(0)), and round trips through g^-1
    then lose more than 1e-10 to float64 roundoff whatever the implementation.
    """
    shape = net.in_shape
    net.train()
    net(2.0 * torch.randn(4, *shape) + 0.5, cond)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net.eval()


def glow(shape, conditional=False, steps=2):
    # hidden 16: with 8 channels, GroupNorm(8, 8) on the 1x1 latent of a squeezed (2, 2, 2) input
    # normalises single values (constant output; PyTorch refuses batches of one).
    return prepared(GlowNetwork(shape, steps, "conv", 16, conditional=conditional), 1.0 if conditional else None)


def rank_deficient(m, n, r):
    return (torch.randn(m, r) @ torch.randn(r, n)) / (n**0.5)


def _nonsquare():
    g_x, g_y = glow((1, 4, 4)), glow((2, 2, 2))
    A = DenseOperator.from_matrix(rank_deficient(8, 16, 5))
    return Linearizer(g_x, A, g_y), None


def _shared_conditional():
    net = glow((1, 4, 4), conditional=True)
    return Linearizer(net.bind(1.0), DenseOperator.from_matrix(rank_deficient(16, 16, 10)), net.bind(0.0)), None


def _time_residual():
    g_x = prepared(ResidualFlowNetwork((1, 4, 4), 2, 8, conditional=False))
    g_y = glow((1, 4, 4))
    A = TimeLowRankOperator(16, rank=2, basis_size=4, hidden=16, embedding_dim=8, identity_scale="zero")
    with torch.no_grad():
        for p in A.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return Linearizer(g_x, A, g_y), 0.4


def _tensor_matrix_unet():
    g = prepared(GlowNetwork((1, 8, 8), 1, "unet", 8, conditional=False, conditioner_kwargs={"levels": 1}), scale=0.1)
    return Linearizer(g, rank_deficient(64, 64, 20)), None  # A given as a tensor, g_y defaults to g_x


CONFIGS = {
    "nonsquare_rank5": _nonsquare,
    "shared_conditional": _shared_conditional,
    "time_residual": _time_residual,
    "unet_tensor_A": _tensor_matrix_unet,
}


def build(name, seed=0):
    torch.manual_seed(seed)
    return CONFIGS[name]()


def rand_x(f, seed=1):
    torch.manual_seed(seed)
    return torch.randn(BATCH, *f.x_shape), torch.randn(BATCH, *f.x_shape)


def rand_y(f, seed=2):
    torch.manual_seed(seed)
    return torch.randn(BATCH, *f.y_shape), torch.randn(BATCH, *f.y_shape)


# --------------------------------------------------------------------------------------------
# the definition and linearity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_is_g_y_inverse_of_A_g_x(name):
    f, t = build(name)
    x, _ = rand_x(f)
    y, _ = rand_y(f)
    # the networks are far from the identity
    assert rel_err(f.g_x(x), x) > 0.1 and rel_err(f.g_y(y), y) > 0.1
    z = f.A(f.g_x(x).flatten(1), t)
    expected = f.g_y.inverse(z.reshape(BATCH, *f.y_shape))
    torch.testing.assert_close(f(x, t), expected, rtol=1e-13, atol=1e-13)
    assert f(x, t).shape == (BATCH, *f.y_shape)
    # nonlinear in pixel space: ordinary superposition fails (so the induced one below is not trivial)
    x2 = torch.randn_like(x)
    assert rel_err(f(x + 2 * x2, t), f(x, t) + 2 * f(x2, t)) > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_superposition_in_induced_spaces(name):
    f, t = build(name)
    xs, ys = f.x_space, f.y_space
    x1, x2 = rand_x(f)
    torch.manual_seed(3)
    for a, b in [(0.7, -1.3), (torch.randn(BATCH), torch.randn(BATCH))]:
        lhs = f(xs.add(xs.scale(a, x1), xs.scale(b, x2)), t)
        rhs = ys.add(ys.scale(a, f(x1, t)), ys.scale(b, f(x2, t)))
        assert rel_err(lhs, rhs) <= TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transpose_is_the_adjoint(name):
    f, t = build(name)
    x, _ = rand_x(f)
    y, _ = rand_y(f)
    fx, fty = f(x, t), f.transpose(y, t)
    assert fty.shape == x.shape
    lhs = f.y_space.inner(fx, y)
    rhs = f.x_space.inner(x, fty)
    scale = f.y_space.norm(fx) * f.y_space.norm(y) + f.x_space.norm(x) * f.x_space.norm(fty)
    assert close_scalars(lhs, rhs, scale) <= TOL
    # transpose is not the pseudo-inverse for these operators
    assert rel_err(fty, f.pinv(y, t)) > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pseudo_inverse_penrose_identities(name):
    f, t = build(name)
    xs, ys = f.x_space, f.y_space
    x1, x2 = rand_x(f)
    y1, y2 = rand_y(f)
    fx = f(x1, t)
    # 1. f f+ f = f
    assert rel_err(f(f.pinv(fx, t), t), fx) <= TOL
    # 2. f+ f f+ = f+
    py = f.pinv(y1, t)
    assert rel_err(f.pinv(f(py, t), t), py) <= TOL
    # 3. f f+ is self-adjoint in <.,.>_gy
    p1, p2 = f(f.pinv(y1, t), t), f(f.pinv(y2, t), t)
    lhs, rhs = ys.inner(p1, y2), ys.inner(y1, p2)
    assert close_scalars(lhs, rhs, ys.norm(y1) * ys.norm(y2)) <= TOL
    # 4. f+ f is self-adjoint in <.,.>_gx
    q1, q2 = f.pinv(f(x1, t), t), f.pinv(f(x2, t), t)
    lhs, rhs = xs.inner(q1, x2), xs.inner(x1, q2)
    assert close_scalars(lhs, rhs, xs.norm(x1) * xs.norm(x2)) <= TOL
    # rank-deficient A: f f+ and f+ f are projections, not the identity
    assert rel_err(p1, y1) > 1e-3 and rel_err(q1, x1) > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_svd_reconstructs_f(name):
    f, t = build(name)
    svd = f.svd(t=t)
    assert isinstance(svd, LinearizerSVD)
    M = f.A.matrix(t)
    k = min(M.shape)
    torch.testing.assert_close(svd.singular_values, torch.linalg.svdvals(M), rtol=1e-12, atol=1e-12)
    assert svd.x_vectors.shape == (k, *f.x_shape) and svd.y_vectors.shape == (k, *f.y_shape)
    xs, ys = f.x_space, f.y_space
    # singular vectors are orthonormal in the induced inner products
    gram_x = xs.encode(svd.x_vectors) @ xs.encode(svd.x_vectors).T
    gram_y = ys.encode(svd.y_vectors) @ ys.encode(svd.y_vectors).T
    assert (gram_x - torch.eye(k)).abs().max() <= TOL and (gram_y - torch.eye(k)).abs().max() <= TOL
    # f(x) = (+)_i s_i <x, v_i>_gx (.) u_i
    x, _ = rand_x(f)
    coeffs = (
        torch.stack([xs.inner(x, svd.x_vectors[i : i + 1].expand_as(x)) for i in range(k)], dim=1) * svd.singular_values
    )
    assert rel_err(ys.linear_combination(coeffs, svd.y_vectors), f(x, t)) <= TOL
    # f maps each right singular vector to s_i times the left one
    for i in range(3):
        lhs = f(svd.x_vectors[i : i + 1], t)
        rhs = ys.scale(svd.singular_values[i], svd.y_vectors[i : i + 1])
        assert rel_err(lhs, rhs) <= TOL
    # truncation keeps the top k
    top = f.svd(k=3, t=t)
    torch.testing.assert_close(top.singular_values, svd.singular_values[:3], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"k must be in \[1,"):
        f.svd(k=k + 1, t=t)


# --------------------------------------------------------------------------------------------
# powers and composition
# --------------------------------------------------------------------------------------------
def _square(rank=None):
    torch.manual_seed(0)
    g = glow((1, 4, 4))
    if rank is None:  # invertible, singular values in [0.5, 1.5]
        q1, q2 = torch.linalg.qr(torch.randn(16, 16)).Q, torch.linalg.qr(torch.randn(16, 16)).Q
        M = q1 @ torch.diag(torch.linspace(0.5, 1.5, 16)) @ q2
    else:
        M = rank_deficient(16, 16, rank)
    return Linearizer(g, DenseOperator.from_matrix(M))


def test_power_equals_repeated_application():
    f = _square()
    x, _ = rand_x(f)
    repeated = x
    for n in range(1, 5):
        repeated = f(repeated)
        assert rel_err(f.power(n)(x), repeated) <= TOL
    assert rel_err(f.power(0)(x), x) <= TOL
    assert isinstance(f.power(0).A, IdentityOperator)
    assert rel_err(f.power(1)(x), f(x)) <= TOL


def test_negative_power_inverts_invertible_A():
    f = _square()
    x, _ = rand_x(f)
    inv = f.power(-1)
    assert rel_err(inv(f(x)), x) <= TOL
    assert rel_err(f(inv(x)), x) <= TOL
    assert rel_err(f.power(-2)(x), inv(inv(x))) <= TOL
    assert rel_err(f.power(-2)(f.power(2)(x)), x) <= TOL
    # for an invertible A the pseudo-inverse is the inverse
    assert rel_err(f.pinv(x), inv(x)) <= TOL


def test_negative_power_of_singular_A_names_the_rank():
    f = _square(rank=5)
    with pytest.raises(ValueError, match=r"rank 5"):
        f.power(-1)
    with pytest.raises(ValueError, match=r"rank 5"):
        f.power(-3)
    f.power(2)  # positive powers are fine


def test_power_needs_one_network_and_square_A():
    f, _ = build("nonsquare_rank5")
    with pytest.raises(ValueError, match=r"^power needs a square A .* but A maps 16 -> 8 features$"):
        f.power(2)
    torch.manual_seed(0)
    g1, g2 = glow((1, 4, 4)), glow((1, 4, 4))
    with pytest.raises(ValueError, match=r"^power needs g_y to be the same network as g_x .* differ$"):
        Linearizer(g1, DenseOperator(16), g2).power(2)


def test_projection_core_makes_f_idempotent_everywhere():
    torch.manual_seed(0)
    g = glow((1, 4, 4))
    P = DiagonalProjection(16)
    with torch.no_grad():
        P.logits.copy_(torch.randn(16) * 3)
    f = Linearizer(g, P)
    assert 0 < P.rank < 16
    x = 5.0 * torch.randn(BATCH, 1, 4, 4)  # far from any data
    fx = f(x)
    assert rel_err(f(fx), fx) <= TOL
    assert rel_err(fx, x) > 1e-3
    assert rel_err(f.power(2)(x), fx) <= TOL


def test_compose_with_shared_conditional_network():
    torch.manual_seed(0)
    net = glow((1, 4, 4), conditional=True)
    A1 = DenseOperator.from_matrix(torch.randn(16, 16) / 4)
    A2 = DenseOperator.from_matrix(rank_deficient(16, 16, 9))
    f1 = Linearizer(net.bind(1.0), A1, net.bind(0.0))
    f2 = Linearizer(net.bind(0.0), A2, net.bind(1.0))
    h = f2.compose(f1)
    x, _ = rand_x(f1)
    assert rel_err(h(x), f2(f1(x))) <= TOL
    torch.testing.assert_close(h.A.matrix(), A2.matrix() @ A1.matrix(), rtol=1e-13, atol=1e-13)
    assert h.g_x.same_as(f1.g_x) and h.g_y.same_as(f2.g_y)
    # the other order is also defined (f1's input net is f2's output net)
    assert rel_err(f1.compose(f2)(x), f1(f2(x))) <= TOL
    # a mismatched middle network: f1 outputs through g(., 0) but this one reads with g(., 1)
    f_bad = Linearizer(net.bind(1.0), A2, net.bind(0.0))
    with pytest.raises(ValueError, match="cannot compose"):
        f_bad.compose(f1)


def test_compose_non_square_chain():
    torch.manual_seed(0)
    g_a, g_b, g_c = glow((1, 4, 4)), glow((2, 2, 2)), glow((3, 2, 2))
    f1 = Linearizer(g_a, DenseOperator.from_matrix(rank_deficient(8, 16, 5)), g_b)
    f2 = Linearizer(g_b, DenseOperator.from_matrix(torch.randn(12, 8) / 3), g_c)
    h = f2.compose(f1)
    assert (h.x_shape, h.y_shape) == ((1, 4, 4), (3, 2, 2))
    x, x2 = rand_x(f1)
    assert rel_err(h(x), f2(f1(x))) <= TOL
    # the composite is a Linearizer like any other: superposition and pinv identities hold
    xs, ys = h.x_space, h.y_space
    assert rel_err(h(xs.add(x, xs.scale(-0.5, x2))), ys.add(h(x), ys.scale(-0.5, h(x2)))) <= TOL
    assert rel_err(h(h.pinv(h(x))), h(x)) <= TOL
    # same shape but a different network in the middle
    other = glow((2, 2, 2))
    with pytest.raises(ValueError, match="shared middle network"):
        Linearizer(other, DenseOperator(8, 12), g_c).compose(f1)


# --------------------------------------------------------------------------------------------
# the induced vector spaces
# --------------------------------------------------------------------------------------------
def _spaces():
    torch.manual_seed(0)
    cond_net = glow((1, 4, 4), conditional=True)
    return {
        "glow": InducedSpace(glow((1, 4, 4)), (1, 4, 4)),
        "glow_cond_y": InducedSpace(cond_net.bind(0.0), (1, 4, 4)),
        "glow_nonsquare": InducedSpace(glow((2, 2, 2)), (2, 2, 2)),
        "residual": InducedSpace(prepared(ResidualFlowNetwork((1, 4, 4), 2, 8, conditional=False)), (1, 4, 4)),
    }


@pytest.mark.parametrize("name", ["glow", "glow_cond_y", "glow_nonsquare", "residual"])
def test_induced_space_axioms(name):
    S = _spaces()[name]
    torch.manual_seed(5)
    u, v, w = (torch.randn(BATCH, *S.shape) for _ in range(3))
    a, b = 0.8, -1.7
    add, scale, inner = S.add, S.scale, S.inner
    zero = S.zero(BATCH)
    assert zero.shape == u.shape and zero.dtype == torch.float64
    # the operations are not pixel-space ones (otherwise the checks below are trivial)
    assert rel_err(add(u, v), u + v) > 1e-3
    assert zero.abs().max() > 1e-3
    checks = {
        "associativity": (add(add(u, v), w), add(u, add(v, w))),
        "commutativity": (add(u, v), add(v, u)),
        "zero identity": (add(u, zero), u),
        "additive inverse": (add(u, scale(-1.0, u)), zero),
        "distributivity over vectors": (scale(a, add(u, v)), add(scale(a, u), scale(a, v))),
        "distributivity over scalars": (scale(a + b, u), add(scale(a, u), scale(b, u))),
        "scalar compatibility": (scale(a, scale(b, u)), scale(a * b, u)),
        "unit scalar": (scale(1.0, u), u),
        "per-sample scalars": (scale(torch.tensor([a, b, 2.0]), u)[1:2], scale(b, u[1:2])),
        "linear combination": (
            S.linear_combination(torch.tensor([[a, b, 0.5]]), torch.cat([u[:1], v[:1], w[:1]])),
            add(add(scale(a, u[:1]), scale(b, v[:1])), scale(0.5, w[:1])),
        ),
    }
    for what, (lhs, rhs) in checks.items():
        assert rel_err(lhs, rhs) <= TOL, what
    assert rel_err(scale(0.0, u), zero) <= TOL
    # inner product: symmetric, bilinear in the induced operations, positive definite
    nu, nv, nw = S.norm(u), S.norm(v), S.norm(w)
    assert close_scalars(inner(u, v), inner(v, u), nu * nv) <= TOL
    lhs = inner(add(scale(a, u), scale(b, v)), w)
    rhs = a * inner(u, w) + b * inner(v, w)
    assert close_scalars(lhs, rhs, (abs(a) * nu + abs(b) * nv) * nw) <= TOL
    assert (inner(u, u) > 0).all()
    assert inner(zero, zero).abs().max() <= TOL**2 * nu.max() ** 2
    torch.testing.assert_close(S.norm(scale(b, u)), abs(b) * nu, rtol=TOL, atol=0)


# --------------------------------------------------------------------------------------------
# identity networks and errors
# --------------------------------------------------------------------------------------------
def test_identity_networks_give_the_matrix():
    torch.manual_seed(0)
    M = rank_deficient(6, 6, 3)
    f = Linearizer(IdentityFlow(), M)
    x = torch.randn(4, 6)
    torch.testing.assert_close(f(x), x @ M.T, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(f.transpose(x), x @ M, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(f.pinv(x), x @ torch.linalg.pinv(M).T, rtol=1e-10, atol=1e-10)
    g = Linearizer(IdentityFlow(), DenseOperator.from_matrix(torch.randn(3, 6)), x_shape=(6,), y_shape=(3,))
    assert g(x).shape == (4, 3)
    with pytest.raises(ValueError, match="pass x_shape and y_shape"):
        Linearizer(IdentityFlow(), DenseOperator.from_matrix(torch.randn(3, 6)))


def test_shape_errors():
    f, _ = build("nonsquare_rank5")
    with pytest.raises(ValueError, match=r"expected inputs of shape \(B, 1, 4, 4\)"):
        f(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"expected inputs of shape \(B, 2, 2, 2\)"):
        f.transpose(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expected inputs of shape \(B, 2, 2, 2\)"):
        f.pinv(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"x-space shape \(1, 4, 4\) has 16 values but the operator's input has 15"):
        Linearizer(f.g_x, DenseOperator(15, 8), f.g_y)
    with pytest.raises(ValueError, match=r"y-space shape \(2, 2, 2\) has 8 values but the operator's output has 9"):
        Linearizer(f.g_x, DenseOperator(16, 9), f.g_y)
    with pytest.raises(ValueError, match="2-D matrix"):
        Linearizer(f.g_x, torch.randn(2, 16, 16))
    with pytest.raises(TypeError, match="LatentOperator"):
        Linearizer(f.g_x, "A")
    with pytest.raises(ValueError, match=r"y-space shape \(1, 4, 4\) has 16 values but the operator's output has 8"):
        Linearizer(f.g_x, f.A)  # g_y defaults to g_x, whose shape does not fit A's output


# --------------------------------------------------------------------------------------------
# plain networks, time-conditioned powers, and errors that name the problem
# --------------------------------------------------------------------------------------------
class PlainBijection(nn.Module):
    """A plain nn.Module (no InvertibleModule, no same_as, no in_shape): ``sinh(W x + b)``."""

    def __init__(self, shape):
        super().__init__()
        n = int(torch.tensor(shape).prod())
        q = torch.linalg.qr(torch.randn(n, n)).Q
        self.weight = nn.Parameter(q @ torch.diag(torch.linspace(0.7, 1.4, n)))
        self.bias = nn.Parameter(0.3 * torch.randn(n))

    def forward(self, x):
        return torch.sinh(x.flatten(1) @ self.weight.T + self.bias).view_as(x)

    def inverse(self, y):
        u = torch.asinh(y.flatten(1)) - self.bias
        return torch.linalg.solve(self.weight, u.T).T.view_as(y)


def test_plain_modules_work_for_power_and_compose():
    torch.manual_seed(0)
    g = PlainBijection((1, 4, 4))
    A1 = DenseOperator.from_matrix(torch.randn(16, 16) / 4 + torch.eye(16))
    A2 = DenseOperator.from_matrix(rank_deficient(16, 16, 9))
    f1, f2 = Linearizer(g, A1, x_shape=(1, 4, 4)), Linearizer(g, A2, x_shape=(1, 4, 4))
    x, _ = rand_x(f1)
    assert rel_err(f1(x), x) > 1e-2
    assert rel_err(f1.power(3)(x), f1(f1(f1(x)))) <= TOL
    assert rel_err(f1.power(-1)(f1(x)), x) <= TOL
    assert rel_err(f2.compose(f1)(x), f2(f1(x))) <= TOL
    assert rel_err(f1(f1.pinv(f1(x))), f1(x)) <= TOL
    # without same_as, "the same network" means the same object
    other = PlainBijection((1, 4, 4))
    with pytest.raises(ValueError, match="same network as g_x"):
        Linearizer(g, A1, other, x_shape=(1, 4, 4)).power(2)
    with pytest.raises(ValueError, match="shared middle network"):
        Linearizer(other, A2, x_shape=(1, 4, 4)).compose(f1)


def _time_conditioned():
    torch.manual_seed(0)
    g = glow((1, 4, 4))
    A = TimeLowRankOperator(16, rank=2, basis_size=4, hidden=16, embedding_dim=8)
    with torch.no_grad():
        for p in A.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return Linearizer(g, A)


def test_time_conditioned_power_inverse_and_at_time():
    f = _time_conditioned()
    x, _ = rand_x(f)
    t = 0.4
    assert rel_err(f(x, t), f(x, 0.8)) > 1e-3  # the time matters
    with pytest.raises(
        ValueError, match=r"^power\(n < 0\) of a time-conditioned f needs the time: f.power\(n, t=...\)"
    ):
        f.power(-1)
    inv = f.power(-1, t=t)
    assert not inv.A.time_conditioned
    assert rel_err(inv(f(x, t)), x) <= TOL and rel_err(f(inv(x), t), x) <= TOL
    assert rel_err(f.power(-2, t=t)(f(f(x, t), t)), x) <= TOL
    assert rel_err(f.power(2, t=t)(x), f(f(x, t), t)) <= TOL
    assert rel_err(f.power(2)(x, t), f(f(x, t), t)) <= TOL  # without t: stays time-conditioned
    fixed = f.at_time(t)
    assert not fixed.A.time_conditioned and rel_err(fixed(x), f(x, t)) <= TOL
    assert rel_err(fixed.pinv(f(x, t)), f.pinv(f(x, t), t)) <= TOL
    g = _square()
    assert g.at_time(0.3) is g


def raises_one_line(exception, match, call):
    with pytest.raises(exception, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_bad_calls_name_the_argument():
    f = _square()
    x, _ = rand_x(f)
    for n in (2.5, 2.0, "2", True, None):
        raises_one_line(
            TypeError, r"^power: n must be an integer \(\.\.\., -1, 0, 1, 2, \.\.\.\), got", lambda n=n: f.power(n)
        )
    assert rel_err(f.power(torch.tensor(2).item())(x), f(f(x))) <= TOL
    raises_one_line(
        TypeError, r"^svd: k must be an integer \(how many singular triplets\) or None, got 2.5", lambda: f.svd(k=2.5)
    )
    raises_one_line(TypeError, r"^compose: other must be a Linearizer, got DenseOperator", lambda: f.compose(f.A))
    # the induced spaces: batches that do not match
    X = f.x_space
    v4, v3 = torch.randn(4, 1, 4, 4), torch.randn(3, 1, 4, 4)
    raises_one_line(
        ValueError,
        r"^scale: a must be a scalar or hold one scalar per sample, shape \(4,\), got shape \(3,\) for a batch of 4$",
        lambda: X.scale(torch.tensor([1.0, 2.0, 3.0]), v4),
    )
    raises_one_line(
        ValueError,
        r"^add: v1 and v2 must have one shape .* got \(4, 1, 4, 4\) and \(3, 1, 4, 4\)$",
        lambda: X.add(v4, v3),
    )
    raises_one_line(ValueError, r"^inner: v1 and v2 must have one shape", lambda: X.inner(v4, v3))
    raises_one_line(
        ValueError,
        r"^linear_combination: coefficients must have shape \(B, k\) with k = 3",
        lambda: X.linear_combination(torch.randn(2, 4), v3),
    )
    # per-sample scalars of shape (B,) or (B, 1) are fine
    torch.testing.assert_close(X.scale(torch.arange(4.0), v4), X.scale(torch.arange(4.0)[:, None], v4))


def test_dtype_mismatch_names_both_sides():
    torch.manual_seed(0)
    g64 = glow((1, 4, 4))  # float64 (the tests' default dtype)
    x = torch.randn(2, 1, 4, 4)
    f = Linearizer(g64, DenseOperator(16, init="random").float())
    for call in (lambda: f(x), lambda: f.transpose(x), lambda: f.pinv(x)):
        raises_one_line(
            TypeError,
            r"^dtype mismatch: g_[xy]\([xy]\) is torch.float64 but the operator A is torch.float32; "
            r"put A, g_x and g_y in one dtype",
            call,
        )
    f64 = Linearizer(g64, DenseOperator(16, init="random"))
    raises_one_line(TypeError, r"^dtype mismatch: x is torch.float32 but g_x is torch.float64", lambda: f64(x.float()))
    g32 = glow((1, 4, 4)).float()
    mixed = Linearizer(g64, DenseOperator(16, init="random"), g32)
    raises_one_line(
        TypeError, r"^dtype mismatch: A g_x\(x\) is torch.float64 but g_y is torch.float32", lambda: mixed(x)
    )
    # inside autocast mixed dtypes are autocast's business: no check in the forward pass
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f.float()(x.float())
