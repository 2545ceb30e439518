"""A per-channel (depthwise) convolution on the latent grid: the style operator of the paper."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lit_linearizer.operators.base import LatentOperator


class DepthwiseConvOperator(LatentOperator):
    """``A z`` = each latent channel convolved with its own ``k x k`` kernel (zero padding, 'same').

    Needs the latent's ``(C, H, W)`` shape. Starts as the identity (a centred delta kernel).
    The transpose is the transposed convolution with the same kernel, the exact adjoint of a
    zero-padded stride-1 convolution. Its pseudo-inverse has no cheap form (dense fallback).
    """

    def __init__(self, latent_shape: Sequence[int], kernel_size: int = 5):
        channels, height, width = latent_shape
        super().__init__(channels * height * width, channels * height * width)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so the output keeps the latent's size, got {kernel_size}")
        self.latent_shape = (channels, height, width)
        self.kernel_size = kernel_size
        kernel = torch.zeros(channels, 1, kernel_size, kernel_size)
        kernel[:, :, kernel_size // 2, kernel_size // 2] = 1.0
        self.kernel = nn.Parameter(kernel)

    def _grid(self, z):
        self.check_input(z)
        return z.view(z.shape[0], *self.latent_shape)

    def forward(self, z, t=None):
        out = F.conv2d(self._grid(z), self.kernel, padding=self.kernel_size // 2, groups=self.latent_shape[0])
        return out.flatten(1)

    def transpose(self, z, t=None):
        out = F.conv_transpose2d(
            self._grid(z), self.kernel, padding=self.kernel_size // 2, groups=self.latent_shape[0]
        )
        return out.flatten(1)

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}, kernel_size={self.kernel_size}"
