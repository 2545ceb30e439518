"""The closed-form flow-matching operator: the least-squares minimiser, an exact collapse, a Gaussian transport."""

from __future__ import annotations

import pytest
import torch

from lit_linearizer.operators import GaussianTransportOperator, LatentMoments, fit_gaussian_transport
from lit_linearizer.sampling import collapse, integrate

pytestmark = pytest.mark.usefixtures("float64_default")


def correlated(n: int, features: int, scale: float, shift: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    return scale * torch.randn(n, features, generator=generator) @ mixing + shift


def moments_of(z: torch.Tensor, **kwargs) -> LatentMoments:
    moments = LatentMoments(z.shape[1], **kwargs)
    for chunk in z.split(7):  # streamed in uneven batches
        moments.update(chunk)
    return moments


def fitted(z0: torch.Tensor, z1: torch.Tensor) -> GaussianTransportOperator:
    return fit_gaussian_transport(moments_of(z0), moments_of(z1), dtype=torch.float64, jitter=0.0)


def test_moments_match_torch():
    z = correlated(50, 6, 2.0, 0.5, seed=0)
    moments = moments_of(z)
    torch.testing.assert_close(moments.mean, z.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moments.covariance(), torch.cov(z.T, correction=0), rtol=1e-12, atol=1e-12)
    # The state is a sum: the moments of two halves, summed, are the moments of the whole.
    first, second = moments_of(z[:20]), moments_of(z[20:])
    states = iter([second.count, second.sum, second.sum_sq_norm, second.second])  # reduce's order
    first.reduce(lambda tensor: tensor + next(states))
    torch.testing.assert_close(first.covariance(), moments.covariance(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.93])
def test_closed_form_is_the_least_squares_minimiser(t):
    """Over every (noise, data) pair of the samples, A_t (centred) is the affine least-squares fit of z1 on z_t."""
    z0, z1 = correlated(30, 5, 1.0, 0.5, seed=1), correlated(40, 5, 3.0, -1.0, seed=2)
    operator = fitted(z0, z1)
    zt = ((1 - t) * z0[:, None] + t * z1[None]).reshape(-1, 5)
    target = z1[None].expand(30, 40, 5).reshape(-1, 5)
    design = torch.cat([zt, torch.ones(len(zt), 1)], dim=1)
    solution = torch.linalg.lstsq(design, target).solution
    z = torch.randn(9, 5, generator=torch.Generator().manual_seed(3))
    direct = torch.cat([z, torch.ones(9, 1)], dim=1) @ solution
    mean_t = (1 - t) * operator.source_mean + t * operator.target_mean
    ours = operator(z - mean_t, t) + operator.target_mean
    torch.testing.assert_close(ours, direct, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(operator.matrix(t), operator(torch.eye(5), t).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("num_steps", [1, 7, 50])
def test_collapse_equals_the_iterated_sampler(method, num_steps):
    operator = fitted(correlated(60, 8, 1.0, 0.3, seed=4), correlated(70, 8, 2.5, 1.0, seed=5))
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(6))
    B = collapse(operator, num_steps, method)
    iterated = integrate(operator, z, num_steps, method)
    torch.testing.assert_close(B(z), iterated, rtol=1e-10, atol=1e-10)
    dense = collapse(operator, num_steps, method, factored=False)
    torch.testing.assert_close(B.matrix(), dense.matrix(), rtol=1e-10, atol=1e-10)


def test_rk4_collapse_transports_the_noise_covariance_onto_the_data_covariance():
    z0, z1 = correlated(200, 6, 1.0, 0.0, seed=7), correlated(300, 6, 2.0, 0.0, seed=8)
    operator = fitted(z0, z1)
    s0, s1 = torch.cov(z0.T, correction=0), torch.cov(z1.T, correction=0)
    errors = []  # the variance ratios span 0.02 .. 157 here: a stiff ODE, fourth order from T ~ 32 on
    for steps in (32, 64, 128):
        B = collapse(operator, steps, "rk4").matrix()
        errors.append(float((B @ s0 @ B.T - s1).norm() / s1.norm()))
    assert errors[-1] < 1e-6
    assert errors[1] / errors[2] > 2**3.6  # fourth order (measured 15x per halving)
    # The exact flow map: P diag(sqrt(lam)) P^-1.
    flow_map = (operator.left * operator.eigenvalues.sqrt()) @ operator.right.T
    torch.testing.assert_close(flow_map @ s0 @ flow_map.T, s1, rtol=1e-10, atol=1e-10)


def test_principal_subspace_sketch_and_factored_fit():
    """Data of rank <= K: the sketch is exact. The factored operator is the dense formula for the
    subspace-plus-isotropic covariance model, at every t, and its collapse equals the sampler."""
    features, rank = 40, 6
    generator = torch.Generator().manual_seed(9)
    basis = torch.linalg.qr(torch.randn(features, rank, generator=generator)).Q
    z1 = (torch.randn(300, rank, generator=generator) * torch.tensor([5.0, 4, 3, 2, 1, 0.5])) @ basis.T + 0.7
    data = moments_of(z1, rank=rank)
    q, sigma, residual = data.principal()
    torch.testing.assert_close(q @ sigma @ q.T, torch.cov(z1.T, correction=0), rtol=1e-8, atol=1e-8)
    assert float(residual) < 1e-10

    z1 = z1 + 0.1 * torch.randn(300, features, generator=generator)  # now full rank: subspace + residual
    data = moments_of(z1, rank=rank)
    q, sigma1, residual1 = data.principal()
    z0 = correlated(400, features, 1.0, 0.2, seed=10)
    noise = moments_of(z0, basis=q)
    sigma0, residual0 = noise.projected()
    operator = fit_gaussian_transport(noise, data, dtype=torch.float64, jitter=0.0)
    assert not operator.full_rank
    complement = torch.eye(features) - q @ q.T
    s0 = q @ sigma0 @ q.T + residual0 * complement
    s1 = q @ sigma1 @ q.T + residual1 * complement
    for t in (0.1, 0.6, 0.95):
        expected = t * s1 @ torch.linalg.inv((1 - t) ** 2 * s0 + t**2 * s1)
        torch.testing.assert_close(operator.matrix(t), expected, rtol=1e-9, atol=1e-9)
    z = torch.randn(5, features, generator=generator)
    iterated = integrate(operator, z, 20, "rk4")
    torch.testing.assert_close(collapse(operator, 20, "rk4")(z), iterated, rtol=1e-10, atol=1e-10)


def test_the_one_step_matrix_inverts():
    """B's pseudo-inverse (inversion of real images) is its inverse when the data covariance has full rank."""
    operator = fitted(correlated(80, 6, 1.0, 0.0, seed=11), correlated(90, 6, 2.0, 0.0, seed=12))
    B = collapse(operator, 30, "rk4")
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(B.pseudo_inverse()(B(z)), z, rtol=1e-9, atol=1e-9)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ValueError, match="at least 2 latents"):
        _ = LatentMoments(3).mean
    with pytest.raises(ValueError, match="latents of shape"):
        LatentMoments(3).update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="projected onto the data's basis"):
        fit_gaussian_transport(moments_of(torch.randn(20, 10)), moments_of(torch.randn(20, 10), rank=3))
    operator = fitted(torch.randn(20, 3), torch.randn(20, 3))
    with pytest.raises(ValueError, match="time-conditioned"):
        operator(torch.zeros(1, 3))
