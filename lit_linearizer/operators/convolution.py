"""Convolutions on the latent grid: per channel (depthwise, the paper's style operator) or mixing channels.

Both are one zero-padded, stride-1 ``k x k`` convolution of the ``(C, H, W)`` latent, ``groups`` apart,
and both start at the identity (a centred delta kernel). The transpose is the transposed convolution
with the same kernel, the exact adjoint. Neither has a cheap pseudo-inverse (dense fallback).

Example:
    >>> import torch
    >>> op = LatentConvOperator((2, 4, 4), kernel_size=3).double()
    >>> z, y = torch.randn(2, 5, 2 * 4 * 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(op(z), z)  # starts at the identity
    True
    >>> kernel = torch.randn(op.kernel.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    >>> with torch.no_grad():
    ...     _ = op.kernel.copy_(kernel)
    >>> bool(torch.allclose((op(z) * y).sum(1), (z * op.transpose(y)).sum(1)))  # <A z, y> = <z, A^T y>
    True
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lit_linearizer.operators.base import LatentOperator

__all__ = ["DepthwiseConvOperator", "LatentConvOperator", "LatentConvolution"]


class LatentConvolution(LatentOperator):
    """``A z`` = the latent grid convolved with a ``(C, C / groups, k, k)`` kernel (zero padding, 'same' size).

    ``depthwise``: ``groups = C`` (one kernel per channel), else ``groups = 1``. Needs the latent's
    ``(C, H, W)`` shape.
    """

    def __init__(self, latent_shape: Sequence[int], kernel_size: int, depthwise: bool):
        channels, height, width = (int(s) for s in latent_shape)
        super().__init__(channels * height * width, channels * height * width)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so the output keeps the latent's size, got {kernel_size}")
        self.latent_shape = (channels, height, width)
        self.kernel_size = kernel_size
        self.groups = channels if depthwise else 1
        per_group = channels // self.groups
        kernel = torch.zeros(channels, per_group, kernel_size, kernel_size)
        kernel[range(channels), [c % per_group for c in range(channels)], kernel_size // 2, kernel_size // 2] = 1.0
        self.kernel = nn.Parameter(kernel)

    def _grid(self, z: Tensor) -> Tensor:
        self.check_input(z)
        return z.view(z.shape[0], *self.latent_shape)

    def forward(self, z, t=None):
        return F.conv2d(self._grid(z), self.kernel, padding=self.kernel_size // 2, groups=self.groups).flatten(1)

    def transpose(self, z, t=None):
        out = F.conv_transpose2d(self._grid(z), self.kernel, padding=self.kernel_size // 2, groups=self.groups)
        return out.flatten(1)

    def at_shape(self, latent_shape: Sequence[int]) -> LatentConvolution:
        """The same convolution (sharing this kernel) on a latent grid of another size, same channels."""
        resized = type(self)(latent_shape, self.kernel_size)
        resized.kernel = self.kernel
        return resized

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}, kernel_size={self.kernel_size}"


class DepthwiseConvOperator(LatentConvolution):
    """Each latent channel convolved with its own ``k x k`` kernel: the style operator of the paper."""

    def __init__(self, latent_shape: Sequence[int], kernel_size: int = 5):
        super().__init__(latent_shape, kernel_size, depthwise=True)


class LatentConvOperator(LatentConvolution):
    """A ``k x k`` convolution that also mixes the latent channels (``C -> C``)."""

    def __init__(self, latent_shape: Sequence[int], kernel_size: int = 3):
        super().__init__(latent_shape, kernel_size, depthwise=False)
