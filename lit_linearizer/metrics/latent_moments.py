"""How far generated latents are from the data latents in mean and covariance (a torchmetrics Metric).

A linear latent generator can at best give its samples the data latents' first two moments
(LINEARIZER.md, section 7); this metric says how close it gets. Latents are compared in the
data's top-K principal coordinates, where a thousand samples estimate a covariance well (in all
N = 1,024 coordinates they would not: the sampling error alone would be of order one). Feed
held-out *data* latents to a second instance for the floor: the gap that sampling alone leaves.

Example:
    >>> import torch
    >>> data = torch.randn(2000, 8, dtype=torch.float64) * torch.arange(1, 9)
    >>> data = data - data.mean(0)
    >>> gap = LatentMomentGap.from_latents(data, rank=4)
    >>> gap.update(2 * data)  # twice too wide
    >>> {k: round(float(v), 2) for k, v in gap.compute().items()}
    {'latent_mean_gap': 0.0, 'latent_cov_gap': 3.0}
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["LatentMomentGap"]


class LatentMomentGap(Metric):
    """Relative mean and covariance gaps of latents ``(B, N)`` to reference moments, in K principal coordinates.

    ``<key>_mean_gap = |m - m_ref| / sqrt(tr S_ref)`` (in all N coordinates) and
    ``<key>_cov_gap = |S - S_ref|_F / |S_ref|_F`` in the coordinates ``Q^T (z - m_ref)`` of the
    reference's top-K principal directions Q.

    Args:
        basis: ``Q (N, K)`` with orthonormal columns.
        mean: the reference mean ``(N,)``.
        covariance: the reference covariance in Q's coordinates ``(K, K)``.
        total_variance: the trace of the reference covariance in all N coordinates.
        key: the values are ``<key>_mean_gap`` and ``<key>_cov_gap``.
    """

    full_state_update = False

    def __init__(
        self, basis: Tensor, mean: Tensor, covariance: Tensor, total_variance: float, key: str = "latent", **kwargs
    ):
        super().__init__(**kwargs)
        self.key = key
        k = basis.shape[1]
        if mean.shape != (basis.shape[0],) or covariance.shape != (k, k):
            raise ValueError(
                f"LatentMomentGap needs basis (N, K), mean (N,), covariance (K, K); got {tuple(basis.shape)}, "
                f"{tuple(mean.shape)}, {tuple(covariance.shape)}"
            )
        self.register_buffer("basis", basis.detach().double())
        self.register_buffer("reference_mean", mean.detach().double())
        self.register_buffer("reference_covariance", covariance.detach().double())
        self.reference_total_variance = float(total_variance)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("offset", torch.zeros(basis.shape[0], dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("second", torch.zeros(k, k, dtype=torch.float64), dist_reduce_fx="sum")

    @classmethod
    def from_latents(cls, latents: Tensor, rank: int = 64, **kwargs) -> "LatentMomentGap":
        """Reference moments (population) of data latents ``(n, N)``, in their top-``rank`` principal coordinates."""
        z = latents.detach().flatten(1).double()
        mean = z.mean(0)
        covariance = torch.cov(z.T, correction=0)
        values, vectors = torch.linalg.eigh(covariance)
        k = min(rank, z.shape[1])
        basis = vectors[:, -k:].flip(1)
        return cls(basis, mean, torch.diag(values[-k:].flip(0)), float(values.sum()), **kwargs)

    def update(self, latents: Tensor) -> None:
        centred = latents.detach().flatten(1).double() - self.reference_mean
        coordinates = centred @ self.basis
        self.count += coordinates.shape[0]
        self.offset += centred.sum(0)
        self.total += coordinates.sum(0)
        self.second += coordinates.T @ coordinates

    def compute(self) -> dict[str, Tensor]:
        mean = self.total / self.count
        covariance = self.second / self.count - torch.outer(mean, mean)
        reference = self.reference_covariance
        return {
            f"{self.key}_mean_gap": ((self.offset / self.count).norm() / self.reference_total_variance**0.5).float(),
            f"{self.key}_cov_gap": ((covariance - reference).norm() / reference.norm()).float(),
        }
