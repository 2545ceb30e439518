"""The closed-form flow-matching operator of a fixed g: ``A_t = E[z1 | z_t]`` from latent moments.

For a fixed g, the flow-matching loss ``E |A_t z_t - z1|^2`` over linear ``A_t`` is least squares.
With noise latents ``z0`` (mean m0, covariance S0) independent of data latents ``z1`` (m1, S1)
and ``z_t = (1 - t) z0 + t z1``, its minimiser on centred latents is

    A_t = t S1 ((1 - t)^2 S0 + t^2 S1)^-1,

which is ``E[z1 | z_t]`` exactly when the latents are Gaussian. Every ``A_t`` is diagonal in one
basis: with ``S0 = L L^T`` and ``L^-1 S1 L^-T = U diag(lam) U^T``, ``P = L U``,

    A_t = P diag(a_t(lam)) P^-1,   a_t(lam) = t lam / ((1 - t)^2 + t^2 lam),

so the latent ODE is a set of scalar ODEs and the one-step matrix B of any solver is
``P diag(c) P^-1`` (``sampling.collapse`` computes c from scalars). The exact flow map is
``P diag(sqrt(lam)) P^-1``: it carries ``N(m0, S0)`` onto ``N(m1, S1)``.

Large latents (CelebA-64: N = 12,288) keep the data's principal subspace: ``S ~ Q Sigma Q^T +
sigma^2 (I - Q Q^T)`` with Q the top-K directions of the data latents (a one-pass Nystrom sketch),
and ``A_t = s_t I + P diag(a_t - s_t) P^+`` with ``s_t = a_t(sigma1^2 / sigma0^2)``: scalar plus
rank K, stored in ``2 N K`` numbers.

The operator acts on centred latents; the means are part of the fit (``source_mean``,
``target_mean``). The generator is ``g_x^-1(B (g_y(x0) - m0) + m1)``: a Linearizer between the
induced spaces whose origins are the latent means (``flows.ShiftedFlow``), still exactly linear.

Example:
    >>> import torch
    >>> from lit_linearizer.sampling import collapse
    >>> z0, z1 = torch.randn(500, 4, dtype=torch.float64), 3.0 * torch.randn(500, 4, dtype=torch.float64)
    >>> noise, data = LatentMoments(4), LatentMoments(4)
    >>> noise.update(z0); data.update(z1)
    >>> A = fit_gaussian_transport(noise, data, dtype=torch.float64)
    >>> B = collapse(A, 64, "rk4")  # B carries the noise covariance onto the data covariance
    >>> cov = lambda z: torch.cov(z.T, correction=0)
    >>> bool(torch.allclose(B.matrix() @ cov(z0) @ B.matrix().T, cov(z1), rtol=1e-5, atol=1e-5))
    True
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from lit_linearizer.operators.base import LatentOperator

__all__ = ["GaussianTransportOperator", "LatentMoments", "fit_gaussian_transport", "transport_coefficient"]


def transport_coefficient(t: Tensor, ratio: Tensor) -> Tensor:
    """``a_t(lam) = t lam / ((1 - t)^2 + t^2 lam)``: the eigenvalue of ``A_t`` for a variance ratio ``lam``."""
    return t * ratio / ((1.0 - t) ** 2 + t * t * ratio)


class LatentMoments:
    """Streaming first and second moments of latents ``(B, N)`` in float64; every state is a sum.

    Three kinds, by what they keep:

    - ``LatentMoments(N)``: the full ``N x N`` second moment (exact; ``N^2`` doubles).
    - ``LatentMoments(N, rank=K)``: a Nystrom sketch ``sum z z^T Omega`` with ``K + oversample``
      random directions, from which ``principal()`` recovers the top-K covariance.
    - ``LatentMoments(N, basis=Q)``: the moments of the coordinates ``Q^T z`` and the total
      variance, for the second side of a principal-subspace fit (``projected()``).

    Covariances are population moments (divided by n, not n - 1): the least-squares minimiser of
    the flow-matching loss over these very samples. ``reduce`` sums the state over processes.
    """

    def __init__(self, features: int, rank: int | None = None, basis: Tensor | None = None, oversample: int = 16,
                 seed: int = 0, device: torch.device | str | None = None):
        self.features = int(features)
        if rank is not None and basis is not None:
            raise ValueError("LatentMoments keeps a sketch (rank=) or the coordinates in a basis (basis=), not both")
        self.rank = None if rank is None or rank >= features else int(rank)
        kw = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros((), **kw)
        self.sum = torch.zeros(self.features, **kw)
        self.sum_sq_norm = torch.zeros((), **kw)
        self.directions: Tensor | None = None  # Omega (sketch) or Q (projected)
        self.basis = None
        if basis is not None:
            if basis.dim() != 2 or basis.shape[0] != self.features:
                raise ValueError(f"basis must have shape ({self.features}, K), got {tuple(basis.shape)}")
            self.basis = basis.to(**kw)
            self.second = torch.zeros(basis.shape[1], basis.shape[1], **kw)
        elif self.rank is not None:
            width = min(self.features, self.rank + oversample)
            generator = torch.Generator().manual_seed(seed)
            omega = torch.randn(self.features, width, generator=generator, dtype=torch.float64)
            self.directions = torch.linalg.qr(omega).Q.to(device)
            self.second = torch.zeros(self.features, width, **kw)
        else:
            self.second = torch.zeros(self.features, self.features, **kw)

    def update(self, z: Tensor) -> None:
        z = z.detach().flatten(1).to(self.sum.device, torch.float64)
        if z.shape[1] != self.features:
            raise ValueError(f"LatentMoments of {self.features} features got latents of shape {tuple(z.shape)}")
        self.count += z.shape[0]
        self.sum += z.sum(0)
        self.sum_sq_norm += (z * z).sum()
        if self.basis is not None:
            coordinates = z @ self.basis
            self.second += coordinates.T @ coordinates
        else:
            self.second += z.T @ (z if self.directions is None else z @ self.directions)

    def reduce(self, all_reduce: Callable[[Tensor], Tensor]) -> None:
        """Sum the state over processes (``all_reduce`` returns the summed tensor)."""
        for name in ("count", "sum", "sum_sq_norm", "second"):
            setattr(self, name, all_reduce(getattr(self, name)))

    def _check_count(self) -> Tensor:
        if self.count < 2:
            raise ValueError(f"LatentMoments needs at least 2 latents, got {int(self.count)}")
        return self.count

    @property
    def mean(self) -> Tensor:
        return self.sum / self._check_count()

    @property
    def total_variance(self) -> Tensor:
        """The trace of the covariance."""
        n, m = self._check_count(), self.mean
        return (self.sum_sq_norm - n * (m @ m)) / n

    def covariance(self) -> Tensor:
        """The full ``N x N`` covariance (the full kind only)."""
        if self.directions is not None or self.basis is not None:
            raise ValueError("covariance() needs full moments; these keep a sketch or a subspace")
        n, m = self._check_count(), self.mean
        return (self.second - n * torch.outer(m, m)) / n

    def principal(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Q (N, K), Sigma (K, K), sigma^2)``: covariance ~ ``Q Sigma Q^T + sigma^2 (I - Q Q^T)`` (sketch kind)."""
        if self.directions is None:
            raise ValueError("principal() needs a sketch: LatentMoments(features, rank=K)")
        n, m, omega = self._check_count(), self.mean, self.directions
        sketch = (self.second - n * torch.outer(m, m @ omega)) / n  # C Omega
        core = omega.T @ sketch  # Omega^T C Omega
        # Nystrom, C ~ Y core^-1 Y^T, through a slightly shifted Cholesky of the small core.
        shift = 1e-12 * core.diagonal().abs().max().clamp_min(1e-300)
        chol = torch.linalg.cholesky(core + shift * torch.eye(core.shape[0], dtype=core.dtype, device=core.device))
        factor = torch.linalg.solve_triangular(chol, sketch.T, upper=False).T  # C ~ factor factor^T
        u, s, _ = torch.linalg.svd(factor, full_matrices=False)
        q, variances = u[:, : self.rank], s[: self.rank] ** 2
        residual = ((self.total_variance - variances.sum()) / (self.features - self.rank)).clamp_min(0.0)
        return q, torch.diag(variances), residual

    def projected(self) -> tuple[Tensor, Tensor]:
        """``(Sigma (K, K), sigma^2)``: the covariance of ``Q^T z`` and the mean variance outside Q (basis kind)."""
        if self.basis is None:
            raise ValueError("projected() needs LatentMoments(features, basis=Q)")
        n, m = self._check_count(), self.mean
        mq = self.basis.T @ m
        sigma = (self.second - n * torch.outer(mq, mq)) / n
        k = self.basis.shape[1]
        residual = ((self.total_variance - sigma.trace()) / max(self.features - k, 1)).clamp_min(0.0)
        return sigma, residual


class GaussianTransportOperator(LatentOperator):
    """``A_t = s_t I + P diag(a_t(lam) - s_t) P^+`` on centred latents (module docstring). Not trainable.

    Built by ``fit_gaussian_transport``. ``left = P`` and ``right = P^+T`` (``right^T left = I``),
    ``eigenvalues = lam``; ``residual_ratio`` is the data/noise variance ratio outside P's range
    (unused when P is square). ``source_mean`` and ``target_mean`` are the latent means the
    operator's inputs and outputs are centred on.
    """

    time_conditioned = True

    def __init__(self, left: Tensor, right: Tensor, eigenvalues: Tensor, residual_ratio: Tensor | float,
                 source_mean: Tensor, target_mean: Tensor):
        n, k = left.shape
        if right.shape != (n, k) or eigenvalues.shape != (k,) or source_mean.shape != (n,) or target_mean.shape != (n,):
            raise ValueError(
                f"GaussianTransportOperator needs left/right (N, K), eigenvalues (K,) and means (N,), got "
                f"{tuple(left.shape)}, {tuple(right.shape)}, {tuple(eigenvalues.shape)}, {tuple(source_mean.shape)}"
            )
        super().__init__(n, n)
        self.register_buffer("left", left)
        self.register_buffer("right", right)
        self.register_buffer("eigenvalues", eigenvalues)
        self.register_buffer("residual_ratio", torch.as_tensor(residual_ratio, dtype=left.dtype).reshape(()))
        self.register_buffer("source_mean", source_mean)
        self.register_buffer("target_mean", target_mean)

    @property
    def full_rank(self) -> bool:
        return self.left.shape[1] == self.in_features

    def _times(self, t, batch: int) -> Tensor:
        if t is None:
            raise ValueError("GaussianTransportOperator is time-conditioned: pass t (a float or a (B,) tensor)")
        t = torch.as_tensor(t, dtype=self.left.dtype, device=self.left.device).reshape(-1)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"t must be a float or have shape ({batch},), got {tuple(t.shape)}")
        return t

    def spectrum(self, times: Tensor) -> tuple[Tensor, Tensor]:
        """``(s (T,), a (T, K))``: the scalar part and the eigenvalues of ``A_t`` at ``times (T,)``."""
        t = times.reshape(-1, 1).to(self.left.dtype)
        a = transport_coefficient(t, self.eigenvalues)
        s = torch.zeros_like(t[:, 0]) if self.full_rank else transport_coefficient(t[:, 0], self.residual_ratio)
        return s, a

    def _apply_at(self, z: Tensor, t, out_basis: Tensor, in_basis: Tensor) -> Tensor:
        self.check_input(z)
        s, a = self.spectrum(self._times(t, z.shape[0]))
        return s[:, None] * z + ((z @ in_basis) * (a - s[:, None])) @ out_basis.T

    def forward(self, z, t=None):
        return self._apply_at(z, t, self.left, self.right)

    def transpose(self, z, t=None):
        return self._apply_at(z, t, self.right, self.left)

    def grid_spectrum(self, times: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(s (T,), P (N, K), a - s (T, K), P^+T (N, K))``: every ``A_tau`` as scalar plus diagonal-core low rank."""
        s, a = self.spectrum(times)
        return s, self.left, a - s[:, None], self.right

    def matrix(self, t=None):
        s, a = self.spectrum(self._times(t, 1))
        eye = torch.eye(self.in_features, dtype=self.left.dtype, device=self.left.device)
        return s[0] * eye + (self.left * (a[0] - s[0])) @ self.right.T

    def extra_repr(self) -> str:
        return f"features={self.in_features}, rank={self.left.shape[1]}"


@torch.no_grad()
def fit_gaussian_transport(source: LatentMoments, target: LatentMoments, dtype: torch.dtype = torch.float32,
                           jitter: float = 1e-9) -> GaussianTransportOperator:
    """The closed-form flow-matching operator from noise-latent (``source``) to data-latent (``target``) moments.

    Both full (dense fit), or ``target`` a sketch (``rank=K``) and ``source`` projected onto the
    target's principal basis (``basis=target.principal()[0]``). The linear algebra runs in float64;
    the operator is returned in ``dtype``. ``jitter`` (relative to the mean noise variance) keeps
    the Cholesky of a rank-deficient noise covariance finite.
    """
    if source.features != target.features:
        raise ValueError(f"noise and data moments have {source.features} and {target.features} features")
    if target.directions is None and target.basis is None:
        if source.directions is not None or source.basis is not None:
            raise ValueError("a dense fit needs full noise moments: LatentMoments(features)")
        s0, s1, basis = source.covariance(), target.covariance(), None
        residual_ratio = torch.ones((), dtype=torch.float64)
    else:
        basis, s1, residual1 = target.principal()
        if source.basis is None or source.basis.shape != basis.shape or not torch.allclose(source.basis, basis):
            raise ValueError("a principal-subspace fit needs the noise moments projected onto the data's basis: "
                             "LatentMoments(features, basis=data.principal()[0])")
        s0, residual0 = source.projected()
        residual_ratio = residual1 / residual0.clamp_min(1e-300)
    eye = torch.eye(s0.shape[0], dtype=torch.float64, device=s0.device)
    chol = torch.linalg.cholesky(s0 + jitter * s0.diagonal().mean() * eye)
    whitened = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol, s1, upper=False).T, upper=False)
    lam, u = torch.linalg.eigh(0.5 * (whitened + whitened.T))
    p = chol @ u  # S0 = P P^T, S1 = P diag(lam) P^T
    p_inv_t = torch.linalg.solve_triangular(chol.T, u, upper=True)  # P^-T = L^-T U
    if basis is not None:
        p, p_inv_t = basis @ p, basis @ p_inv_t
    return GaussianTransportOperator(p.to(dtype), p_inv_t.to(dtype), lam.clamp_min(0.0).to(dtype),
                                     residual_ratio.to(dtype), source.mean.to(dtype), target.mean.to(dtype))
