"""The contract every invertible block and network in this package follows.

A block is a bijection ``R^N -> R^N`` on tensors of shape ``(B, *shape)``. It may take an
optional conditioning scalar ``cond`` (one value per batch element, or one for the batch);
blocks that ignore it still accept it, so a network can pass it to every block.

``forward`` and ``inverse`` sit side by side, and ``forward_and_log_det`` returns the
per-sample log-absolute-determinant of the Jacobian. The Linearizer itself never needs the
log-determinant (it trains by regression, not likelihood), so ``forward`` is free to skip it
where it is expensive.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

__all__ = ["ConditionedFlow", "IdentityFlow", "InvertibleModule", "InvertibleSequential", "as_condition"]


def as_condition(cond: Tensor | float | None, x: Tensor) -> Tensor | None:
    """Return ``cond`` as a ``(B,)`` tensor on ``x``'s device and dtype, or None."""
    if cond is None:
        return None
    cond = torch.as_tensor(cond, dtype=x.dtype, device=x.device)
    if cond.dim() == 0:
        return cond.expand(x.shape[0])
    if cond.shape != (x.shape[0],):
        raise ValueError(f"cond must be a scalar or have shape ({x.shape[0]},), got {tuple(cond.shape)}")
    return cond


class InvertibleModule(nn.Module):
    """Base class: subclasses implement ``forward_and_log_det`` and ``inverse``."""

    def forward_and_log_det(self, x: Tensor, cond: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, cond: Tensor | float | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor | float | None = None) -> Tensor:
        return self.forward_and_log_det(x, cond)[0]

    def log_abs_det_jacobian(self, x: Tensor, cond: Tensor | float | None = None) -> Tensor:
        """Per-sample ``log |det d forward(x) / dx|``, shape ``(B,)``."""
        return self.forward_and_log_det(x, cond)[1]

    def same_as(self, other: "InvertibleModule") -> bool:
        """Whether ``other`` computes the same map (used to check Linearizer composition)."""
        return other is self


class InvertibleSequential(InvertibleModule):
    """Composition of blocks: forward runs them in order, inverse in reverse order."""

    def __init__(self, blocks: Iterable[InvertibleModule]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward_and_log_det(self, x, cond=None):
        log_det = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_log_det = block.forward_and_log_det(x, cond)
            log_det = log_det + block_log_det
        return x, log_det

    def forward(self, x, cond=None):
        # Skips the log-determinants; residual blocks would otherwise compute a Jacobian.
        for block in self.blocks:
            x = block(x, cond)
        return x

    def inverse(self, y, cond=None):
        for block in reversed(self.blocks):
            y = block.inverse(y, cond)
        return y


class IdentityFlow(InvertibleModule):
    """g(x) = x. Makes a Linearizer an ordinary linear map; handy in tests and ablations."""

    def forward_and_log_det(self, x, cond=None):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y, cond=None):
        return y

    def same_as(self, other):
        return isinstance(other, IdentityFlow)


class ConditionedFlow(InvertibleModule):
    """A view of a conditional network with its conditioning scalar fixed.

    One network serves as both g_x (``cond=1``) and g_y (``cond=0``); the two views share
    the network's parameters (``Module.parameters()`` yields shared parameters once).
    """

    def __init__(self, flow: InvertibleModule, cond: float):
        super().__init__()
        self.flow = flow
        self.cond = float(cond)

    def forward_and_log_det(self, x, cond=None):
        return self.flow.forward_and_log_det(x, self.cond)

    def forward(self, x, cond=None):
        return self.flow(x, self.cond)

    def inverse(self, y, cond=None):
        return self.flow.inverse(y, self.cond)

    def same_as(self, other):
        return isinstance(other, ConditionedFlow) and other.flow is self.flow and other.cond == self.cond

    def extra_repr(self) -> str:
        return f"cond={self.cond}, flow={type(self.flow).__name__}"


class ShiftedFlow(InvertibleModule):
    """``g(x) - shift``: a network whose latent origin is moved to ``shift`` (e.g. the data latents' mean).

    A Linearizer between shifted networks is still exactly linear, in the induced spaces whose origins
    are ``g^-1(shift)``; the closed-form flow-matching operator (operators/gaussian_transport.py) acts on
    latents centred this way. ``shift`` is a fixed tensor of the latent's shape or its flattened size.
    """

    def __init__(self, flow: InvertibleModule, shift: Tensor):
        super().__init__()
        self.flow = flow
        self.register_buffer("shift", shift.detach().clone(), persistent=False)

    def _shift_like(self, z: Tensor) -> Tensor:
        return self.shift.to(z.dtype).view(1, *z.shape[1:])

    def forward_and_log_det(self, x, cond=None):
        z, log_det = self.flow.forward_and_log_det(x, cond)
        return z - self._shift_like(z), log_det

    def forward(self, x, cond=None):
        z = self.flow(x, cond)
        return z - self._shift_like(z)

    def inverse(self, y, cond=None):
        return self.flow.inverse(y + self._shift_like(y), cond)

    def same_as(self, other):
        same_flow = isinstance(other, ShiftedFlow) and (
            other.flow.same_as(self.flow) if hasattr(self.flow, "same_as") else other.flow is self.flow
        )
        return same_flow and other.shift.shape == self.shift.shape and bool(torch.equal(other.shift, self.shift))
