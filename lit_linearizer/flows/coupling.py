"""Affine coupling layer (RealNVP/Glow) with a bounded log-scale."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_linearizer.flows.base import InvertibleModule, as_condition
from lit_linearizer.flows.conditioners import make_conditioner

__all__ = ["AffineCoupling"]


class AffineCoupling(InvertibleModule):
    """Split channels into (kept, transformed); ``transformed * exp(s) + t`` with (s, t) = NN(kept).

    The log-scale is bounded, ``s = b * tanh(raw / b)``, so one coupling can scale a
    channel by at most ``exp(+-b)``: this keeps the inverse well conditioned, which matters
    because the Linearizer decodes latents that no training image produced.
    ``swap=True`` keeps the second half and transforms the first.
    """

    def __init__(
        self,
        num_channels: int,
        conditioner: str = "conv",
        swap: bool = False,
        log_scale_bound: float = 2.0,
        **conditioner_kwargs,
    ):
        super().__init__()
        if num_channels < 2:
            raise ValueError(
                f"AffineCoupling needs at least 2 channels to split, got {num_channels}; "
                "enable the squeeze layer (squeeze: true) for single-channel images"
            )
        first = num_channels // 2
        self.split_sizes = (first, num_channels - first)
        self.swap = swap
        kept, transformed = self.split_sizes[::-1] if swap else self.split_sizes
        self.log_scale_bound = log_scale_bound
        self.conditioner = make_conditioner(conditioner, kept, 2 * transformed, **conditioner_kwargs)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = torch.split(x, self.split_sizes, dim=1)
        return (b, a) if self.swap else (a, b)

    def _join(self, kept: Tensor, transformed: Tensor) -> Tensor:
        return torch.cat([transformed, kept] if self.swap else [kept, transformed], dim=1)

    def _scale_and_shift(self, kept: Tensor, cond) -> tuple[Tensor, Tensor]:
        raw_log_scale, shift = self.conditioner(kept, as_condition(cond, kept)).chunk(2, dim=1)
        bound = self.log_scale_bound
        return bound * torch.tanh(raw_log_scale / bound), shift

    def forward_and_log_det(self, x, cond=None):
        kept, transformed = self._split(x)
        log_scale, shift = self._scale_and_shift(kept, cond)
        y = self._join(kept, transformed * torch.exp(log_scale) + shift)
        return y, log_scale.flatten(1).sum(1)

    def inverse(self, y, cond=None):
        kept, transformed = self._split(y)
        log_scale, shift = self._scale_and_shift(kept, cond)
        return self._join(kept, (transformed - shift) * torch.exp(-log_scale))
