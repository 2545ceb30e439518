"""An oblique (non-orthogonal) projection of fixed rank: ``P = U V^T`` with ``V^T U = I``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.operators.factored import ScalarPlusLowRank

__all__ = ["ObliqueProjection"]


class ObliqueProjection(LatentOperator):
    """Projection onto ``range(U)`` along ``range(V)``'s orthogonal complement: ``P = U V^T``.

    ``U`` is the orthonormal Q factor of a learned ``(N, rank)`` matrix (as in
    OrthogonalProjection) and ``V = U + (I - U U^T) W`` with a learned ``(N, rank)`` shear
    ``W``. Then ``V^T U = U^T U + W^T (I - U U^T) U = I`` for every ``W``, so
    ``P^2 = U (V^T U) V^T = P`` holds by construction, up to the roundoff of the QR
    (errors of order ``eps * |W|``; no matrix is inverted in the forward pass).

    ``W = 0`` gives the orthogonal projection ``U U^T``. With ``W != 0`` the range (where
    outputs live: ``U``) and the direction along which inputs are collapsed (the null space
    ``V^perp``) are learned separately: P is not symmetric and ``|P| = |V| >= 1``. Costs
    ``O(N rank)`` per sample and ``2 N rank`` parameters, so it scales to large latents.

    The pseudo-inverse is exact and cheap: ``P^+ = V (V^T V)^{-1} U^T`` (``U`` has orthonormal
    columns and ``V^T V = I + W^T (I - U U^T) W`` is well conditioned), returned as a
    ScalarPlusLowRank. An oblique projection is *not* its own pseudo-inverse.

    Args:
        features: N.
        rank: k, the dimension of the range (fixed).
        init_shear: std of the initial ``W`` entries, relative to ``1/sqrt(N)`` (0: start
            as an orthogonal projection).
    """

    pinv_is_cheap = True

    def __init__(self, features: int, rank: int, init_shear: float = 0.0):
        super().__init__(features, features)
        if not 0 < rank <= features:
            raise ValueError(f"rank must be in [1, {features}], got {rank}")
        if init_shear < 0:
            raise ValueError(f"init_shear must be >= 0, got {init_shear}")
        self.rank = int(rank)
        self.weight = nn.Parameter(torch.randn(features, rank))
        self.shear = nn.Parameter(init_shear * torch.randn(features, rank) / features**0.5)

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(U, V)`` with orthonormal ``U`` and ``V^T U = I``: ``P = U V^T``."""
        u = torch.linalg.qr(self.weight).Q
        w = self.shear
        return u, u + w - u @ (u.T @ w)

    def forward(self, z, t=None):
        self.check_input(z)
        u, v = self.factors()
        return (z @ v) @ u.T

    def transpose(self, z, t=None):
        self.check_input(z)
        u, v = self.factors()
        return (z @ u) @ v.T

    def matrix(self, t=None):
        u, v = self.factors()
        return u @ v.T

    def pseudo_inverse(self, t=None):
        u, v = (f.detach() for f in self.factors())
        gram = v.T @ v
        core = torch.linalg.solve(gram, torch.eye(self.rank, dtype=gram.dtype, device=gram.device))
        return ScalarPlusLowRank(0.0, v, core, u)

    def extra_repr(self) -> str:
        return f"features={self.in_features}, rank={self.rank}"
