"""A dense matrix operator: any linear map, for latents small enough to hold N x M floats."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_linearizer.operators.base import LatentOperator


class DenseOperator(LatentOperator):
    """``A z`` with a learnable ``(out_features, in_features)`` matrix.

    ``init="identity"`` starts at I (padded or cropped when not square), ``"random"`` at a
    Gaussian matrix scaled by ``1/sqrt(in_features)``. The pseudo-inverse is exact (SVD) but
    not cheap.
    """

    def __init__(self, in_features: int, out_features: int | None = None, init: str = "identity"):
        out_features = in_features if out_features is None else out_features
        super().__init__(in_features, out_features)
        if init == "identity":
            weight = torch.eye(out_features, in_features)
        elif init == "random":
            weight = torch.randn(out_features, in_features) / in_features**0.5
        else:
            raise ValueError(f"unknown init {init!r}; use 'identity' or 'random'")
        self.weight = nn.Parameter(weight)

    @classmethod
    def from_matrix(cls, matrix: Tensor, trainable: bool = False) -> "DenseOperator":
        op = cls(matrix.shape[1], matrix.shape[0])
        op.weight = nn.Parameter(matrix.detach().clone(), requires_grad=trainable)
        return op

    def forward(self, z, t=None):
        self.check_input(z)
        return z @ self.weight.T

    def transpose(self, z, t=None):
        self.check_input(z, self.out_features)
        return z @ self.weight

    def matrix(self, t=None):
        return self.weight
