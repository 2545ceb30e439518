"""An orthogonal projection onto a learned k-dimensional subspace: ``P = U U^T``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_linearizer.operators.base import LatentOperator

__all__ = ["OrthogonalProjection"]


class OrthogonalProjection(LatentOperator):
    """``P = U U^T`` with ``U`` the orthonormal Q factor of a learned ``(N, rank)`` matrix.

    ``P^2 = U (U^T U) U^T = P`` up to the roundoff of the QR (1e-7 in float32, 1e-16 in
    float64). Unlike the diagonal projection, the kept subspace need not align with latent
    coordinates. Symmetric and idempotent, so ``P^T = P^+ = P``.
    """

    pinv_is_cheap = True

    def __init__(self, features: int, rank: int):
        super().__init__(features, features)
        if not 0 < rank <= features:
            raise ValueError(f"rank must be in [1, {features}], got {rank}")
        self.rank = rank
        self.weight = nn.Parameter(torch.randn(features, rank))

    def basis(self) -> Tensor:
        return torch.linalg.qr(self.weight).Q

    def forward(self, z, t=None):
        self.check_input(z)
        u = self.basis()
        return (z @ u) @ u.T

    def transpose(self, z, t=None):
        return self.forward(z, t)

    def matrix(self, t=None):
        u = self.basis()
        return u @ u.T

    def pseudo_inverse(self, t=None):
        return self
