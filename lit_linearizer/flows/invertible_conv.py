"""Invertible 1x1 convolution with an LU-parametrised weight (Glow, section 3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule

__all__ = ["InvertibleConv1x1"]


class InvertibleConv1x1(InvertibleModule):
    """Channel mixing ``y = W x`` at every position, with ``W = P L (U + diag(s))``.

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular and
    ``s = sign * exp(log_s)``. The parametrisation gives the log-determinant for free
    (``sum(log_s)`` per position) and the inverse by two triangular solves, so no
    ``torch.linalg.inv`` runs per call (the reference inverts W on every inverse pass).
    Works on ``(B, C, *spatial)`` tensors, including ``(B, C)`` vectors.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.num_channels = num_channels
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("strict_lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def _lower(self) -> Tensor:
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        return self.lower * self.strict_lower_mask + eye

    def _upper(self) -> Tensor:
        return self.upper * self.strict_lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))

    def weight(self) -> Tensor:
        return self.permutation @ self._lower() @ self._upper()

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"InvertibleConv1x1 expects {self.num_channels} channels, got shape {tuple(x.shape)}")

    def forward_and_log_det(self, x, cond=None):
        self._check(x)
        y = torch.einsum("oc,bc...->bo...", self.weight(), x)
        log_det = (self.log_s.sum() * x[0, 0].numel()).expand(x.shape[0])
        return y, log_det

    def inverse(self, y, cond=None):
        self._check(y)
        # Columns are positions: (C, B * spatial).
        rhs = y.movedim(1, 0).reshape(self.num_channels, -1)
        rhs = self.permutation.T @ rhs
        rhs = torch.linalg.solve_triangular(self._lower(), rhs, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(self._upper(), rhs, upper=True)
        return x.reshape(self.num_channels, y.shape[0], *y.shape[2:]).movedim(0, 1)
