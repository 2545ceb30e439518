"""An operator applied on the 2x2 space-to-depth view of a latent grid: ``S^T B S``.

Example:
    >>> import torch
    >>> from lit_linearizer.operators.convolution import DepthwiseConvOperator
    >>> op = SqueezedOperator(DepthwiseConvOperator((12, 3, 4), kernel_size=3), latent_shape=(3, 6, 8))
    >>> z = torch.randn(2, 144, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(op(z), z)  # S^T I S = I
    True
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor
from torch.nn import functional as F

from lit_linearizer.errors import ConfigError
from lit_linearizer.operators.base import LatentOperator

__all__ = ["SqueezedOperator"]


class SqueezedOperator(LatentOperator):
    """``S^T B S``: an operator ``B`` applied on the 2x2 space-to-depth view ``S z`` of a ``(C, H, W)`` latent.

    ``S`` is a permutation (``pixel_unshuffle``, the squeeze inside GlowNetwork), so this is
    still one linear map of the flat latent and the transpose is ``S^T B^T S``. A kernel on the
    squeezed grid treats the four pixels of each 2x2 cell as separate channels, as g's own
    couplings do; a kernel on the unsqueezed grid would mix them with one weight and leave a
    2x2 checkerboard in the outputs.
    """

    def __init__(self, inner: LatentOperator, latent_shape: Sequence[int]):
        channels, height, width = (int(s) for s in latent_shape)
        if height % 2 or width % 2:
            raise ConfigError(f"a squeezed operator needs an even latent grid, got {tuple(latent_shape)}")
        super().__init__(inner.in_features, inner.out_features)
        if inner.in_features != channels * height * width or not inner.is_square:
            raise ValueError(f"the inner operator must be square on {channels * height * width} values")
        self.inner = inner
        self.latent_shape = (channels, height, width)

    def _squeeze(self, z: Tensor) -> Tensor:
        self.check_input(z)
        return F.pixel_unshuffle(z.view(z.shape[0], *self.latent_shape), 2).flatten(1)

    def _unsqueeze(self, z: Tensor) -> Tensor:
        c, h, w = self.latent_shape
        return F.pixel_shuffle(z.view(z.shape[0], 4 * c, h // 2, w // 2), 2).flatten(1)

    def forward(self, z, t=None):
        return self._unsqueeze(self.inner(self._squeeze(z), t))

    def transpose(self, z, t=None):
        return self._unsqueeze(self.inner.transpose(self._squeeze(z), t))

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}"
