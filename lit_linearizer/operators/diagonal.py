"""Diagonal operators: a learnable diagonal, and a 0/1 diagonal projection (straight-through)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_linearizer.operators.base import LatentOperator

__all__ = ["DiagonalOperator", "DiagonalProjection"]


class DiagonalOperator(LatentOperator):
    """``A = diag(d)``. Pseudo-inverse: ``diag(1/d_i)`` where ``d_i != 0``, else 0 (cheap, exact)."""

    pinv_is_cheap = True

    def __init__(self, features: int, init_value: float = 1.0):
        super().__init__(features, features)
        self.diagonal = nn.Parameter(torch.full((features,), float(init_value)))

    def forward(self, z, t=None):
        self.check_input(z)
        return z * self.diagonal

    def transpose(self, z, t=None):
        return self.forward(z, t)

    def matrix(self, t=None):
        return torch.diag(self.diagonal)

    def pseudo_inverse(self, t=None):
        d = self.diagonal.detach()
        safe = torch.where(d != 0, d, torch.ones_like(d))
        op = DiagonalOperator(self.in_features).to(d)
        op.diagonal = nn.Parameter(torch.where(d != 0, 1.0 / safe, torch.zeros_like(d)), requires_grad=False)
        return op


class DiagonalProjection(LatentOperator):
    """``P = diag(m)`` with ``m`` in {0, 1}: keeps a learned subset of latent coordinates.

    ``m = round(p) + p - p.detach()`` with ``p = sigmoid(logits)``: the forward value is
    exactly 0 or 1 (``p - p.detach()`` is exactly zero), so ``P^2 = P`` holds exactly in the
    forward pass, while gradients flow to ``logits`` as if ``m = p`` (straight-through).
    An orthogonal projection is its own pseudo-inverse.

    Args:
        features: N.
        init_keep_probability: initial ``p`` of every coordinate (>0.5 starts as the identity).
    """

    pinv_is_cheap = True

    def __init__(self, features: int, init_keep_probability: float = 0.9):
        super().__init__(features, features)
        if not 0.0 < init_keep_probability < 1.0:
            raise ValueError(f"init_keep_probability must be in (0, 1), got {init_keep_probability}")
        logit = math.log(init_keep_probability / (1.0 - init_keep_probability))
        self.logits = nn.Parameter(torch.full((features,), logit))

    def keep_probability(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def mask(self) -> Tensor:
        p = self.keep_probability()
        return torch.round(p) + (p - p.detach())

    @property
    def rank(self) -> int:
        return int((self.keep_probability() > 0.5).sum())

    def forward(self, z, t=None):
        self.check_input(z)
        return z * self.mask()

    def transpose(self, z, t=None):
        return self.forward(z, t)

    def matrix(self, t=None):
        return torch.diag(self.mask())

    def pseudo_inverse(self, t=None):
        return self
