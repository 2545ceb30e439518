"""Conditioner networks: they compute a coupling's log-scale and shift from the other half.

A conditioner need not be invertible, but it must be deterministic for a given input:
no dropout and no batch statistics (GroupNorm, not BatchNorm), or the coupling's inverse
stops being exact in training mode. The conditioning scalar enters as a constant extra
channel. The output layer starts at zero, so every coupling starts as the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["CONDITIONERS", "ConvConditioner", "MLPConditioner", "UNetConditioner", "make_conditioner"]


def _append_condition(x: Tensor, cond: Tensor | None, conditional: bool) -> Tensor:
    if not conditional:
        return x
    if cond is None:
        raise ValueError("this network is conditional: pass cond (1.0 for g_x, 0.0 for g_y)")
    shape = (x.shape[0], 1, *x.shape[2:])
    return torch.cat([x, cond.view(-1, *([1] * (x.dim() - 1))).expand(shape)], dim=1)


def _zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _group_norm(channels: int) -> nn.GroupNorm:
    # At least 4 channels per group: on tiny latents (a 1x1 grid) a 1-channel group would
    # normalise a single value to a constant and cut the conditioner off from its input.
    return nn.GroupNorm(max(1, min(8, channels // 4)), channels)


class ConvConditioner(nn.Module):
    """3x3 conv -> 1x1 conv -> 3x3 conv, SiLU activations: small and fast on CPU."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64, conditional: bool = True):
        super().__init__()
        self.conditional = conditional
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + int(conditional), hidden_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            _group_norm(hidden_channels),
            nn.SiLU(),
            _zero_init(nn.Conv2d(hidden_channels, out_channels, 3, padding=1)),
        )

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        return self.net(_append_condition(x, cond, self.conditional))


class _ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            _group_norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _group_norm(out_channels),
            nn.SiLU(),
        )


class UNetConditioner(nn.Module):
    """A small U-Net (the reference's conditioner family): ``levels`` stride-2 stages."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        conditional: bool = True,
        levels: int = 2,
    ):
        super().__init__()
        self.conditional = conditional
        self.levels = levels
        widths = [hidden_channels * 2**i for i in range(levels + 1)]
        self.stem = _ConvBlock(in_channels + int(conditional), widths[0])
        self.down = nn.ModuleList(_ConvBlock(widths[i], widths[i + 1], stride=2) for i in range(levels))
        self.up = nn.ModuleList(_ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels)))
        self.head = _zero_init(nn.Conv2d(widths[0], out_channels, 3, padding=1))

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if x.shape[-1] % 2**self.levels or x.shape[-2] % 2**self.levels:
            raise ValueError(
                f"UNetConditioner with {self.levels} levels needs spatial size divisible by {2**self.levels}, "
                f"got {tuple(x.shape[-2:])}"
            )
        h = self.stem(_append_condition(x, cond, self.conditional))
        skips = [h]
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        skips.pop()
        for stage in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = stage(torch.cat([h, skips.pop()], dim=1))
        return self.head(h)


class MLPConditioner(nn.Module):
    """For flat ``(B, D)`` data (toy problems and tests)."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64, conditional: bool = True):
        super().__init__()
        self.conditional = conditional
        self.net = nn.Sequential(
            nn.Linear(in_channels + int(conditional), hidden_channels),
            nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels),
            nn.SiLU(),
            _zero_init(nn.Linear(hidden_channels, out_channels)),
        )

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        return self.net(_append_condition(x, cond, self.conditional))


CONDITIONERS = {"conv": ConvConditioner, "unet": UNetConditioner, "mlp": MLPConditioner}


def make_conditioner(kind: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    if kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner {kind!r}; choose one of {sorted(CONDITIONERS)}")
    return CONDITIONERS[kind](in_channels, out_channels, **kwargs)
