"""Whole invertible networks g, assembled from the blocks in this package."""

from __future__ import annotations

from typing import Sequence

from lit_linearizer.flows.actnorm import ActNorm
from lit_linearizer.flows.base import ConditionedFlow, InvertibleModule, InvertibleSequential
from lit_linearizer.flows.coupling import AffineCoupling
from lit_linearizer.flows.invertible_conv import InvertibleConv1x1
from lit_linearizer.flows.residual import ResidualFlowBlock
from lit_linearizer.flows.squeeze import Squeeze

__all__ = ["GlowNetwork", "InvertibleNetwork", "ResidualFlowNetwork"]


class InvertibleNetwork(InvertibleSequential):
    """A sequence of blocks on inputs of shape ``(B, *in_shape)``, with ``bind`` for g_x / g_y views."""

    def __init__(self, blocks: Sequence[InvertibleModule], in_shape: Sequence[int], conditional: bool):
        super().__init__(blocks)
        self.in_shape = tuple(in_shape)
        self.conditional = conditional

    def bind(self, cond: float) -> InvertibleModule:
        """This network with its conditioning scalar fixed (g_x: 1.0, g_y: 0.0)."""
        if not self.conditional:
            return self
        return ConditionedFlow(self, cond)


def _squeezed_channels(in_shape: Sequence[int], squeeze: bool) -> int:
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {tuple(in_shape)}")
    return in_shape[0] * 4 if squeeze else in_shape[0]


class GlowNetwork(InvertibleNetwork):
    """[squeeze] -> num_steps x [ActNorm -> LU 1x1 conv -> coupling(a|b) -> coupling(b|a)] -> [unsqueeze].

    Every step transforms all channels (two couplings, as in the reference). With
    ``squeeze`` the output is unsqueezed again, so g keeps the image shape and a latent
    operator can be written on pixels' grid (the depthwise style operator relies on this).

    Args:
        in_shape: (C, H, W) of the images.
        num_steps: number of flow steps.
        conditioner: "conv" (small, CPU-friendly), "unet" (the reference's family) or "mlp".
        hidden_channels: conditioner width.
        conditional: one network for g_x and g_y, told apart by a conditioning scalar.
        squeeze: 2x2 space-to-depth first (needed for 1-channel images).
        log_scale_bound: bound on each coupling's log-scale.
        conditioner_kwargs: extra arguments for the conditioner (e.g. ``levels`` for the U-Net).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_steps: int = 4,
        conditioner: str = "conv",
        hidden_channels: int = 64,
        conditional: bool = True,
        squeeze: bool = True,
        log_scale_bound: float = 2.0,
        conditioner_kwargs: dict | None = None,
    ):
        channels = _squeezed_channels(in_shape, squeeze)
        kwargs = dict(hidden_channels=hidden_channels, conditional=conditional, **(conditioner_kwargs or {}))
        blocks: list[InvertibleModule] = [Squeeze()] if squeeze else []
        for _ in range(num_steps):
            blocks += [
                ActNorm(channels),
                InvertibleConv1x1(channels),
                AffineCoupling(channels, conditioner, swap=False, log_scale_bound=log_scale_bound, **kwargs),
                AffineCoupling(channels, conditioner, swap=True, log_scale_bound=log_scale_bound, **kwargs),
            ]
        if squeeze:
            blocks.append(_Unsqueeze())
        super().__init__(blocks, in_shape, conditional)


class ResidualFlowNetwork(InvertibleNetwork):
    """[squeeze] -> num_blocks x [ActNorm -> residual block (i-ResNet)] -> [unsqueeze]."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_blocks: int = 4,
        hidden_channels: int = 64,
        lipschitz_coeff: float = 0.7,
        conditional: bool = True,
        squeeze: bool = True,
        max_iterations: int = 300,
    ):
        channels = _squeezed_channels(in_shape, squeeze)
        blocks: list[InvertibleModule] = [Squeeze()] if squeeze else []
        for _ in range(num_blocks):
            blocks += [
                ActNorm(channels),
                ResidualFlowBlock(channels, hidden_channels, lipschitz_coeff, conditional, max_iterations),
            ]
        if squeeze:
            blocks.append(_Unsqueeze())
        super().__init__(blocks, in_shape, conditional)


class _Unsqueeze(InvertibleModule):
    """The inverse of Squeeze, as a block."""

    def __init__(self):
        super().__init__()
        self.squeeze = Squeeze()

    def forward_and_log_det(self, x, cond=None):
        return self.squeeze.inverse(x), x.new_zeros(x.shape[0])

    def inverse(self, y, cond=None):
        return self.squeeze.forward_and_log_det(y)[0]
