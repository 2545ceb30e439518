"""2x2 squeeze (space-to-depth): turns (C, H, W) into (4C, H/2, W/2), losslessly."""

from __future__ import annotations

import torch.nn.functional as F

from lit_linearizer.flows.base import InvertibleModule

__all__ = ["Squeeze"]


class Squeeze(InvertibleModule):
    """Gives couplings at least four channels to split, e.g. for single-channel MNIST."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward_and_log_det(self, x, cond=None):
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"Squeeze needs (B, C, H, W) with H and W divisible by {self.factor}, got shape {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, y, cond=None):
        return F.pixel_shuffle(y, self.factor)
