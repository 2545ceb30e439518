"""Activation normalisation (Glow): a per-channel affine map with data-dependent init."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule

__all__ = ["ActNorm"]


class ActNorm(InvertibleModule):
    """``y = (x + bias) * exp(log_scale)`` per channel (dim 1).

    On its first forward pass in training mode the parameters are set so that the batch has
    zero mean and unit variance per channel. Two choices make this safe to use:

    - ``initialized`` is a registered buffer, so a module rebuilt from a state_dict keeps the
      trained parameters instead of initialising again (the reference's plain attribute did).
    - Under torch.distributed the per-channel sums are all-reduced before use, so every rank
      computes the same statistics from the *global* batch and the replicas never diverge.

    Under ``torch.compile`` the check is left out (reading the flag would break the graph): compiled
    code assumes an initialised ActNorm. ``model.compile=true`` runs the first training step eagerly,
    which initialises it (modules/compiled_step.py).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and scale from ``x``'s per-channel statistics (all ranks agree)."""
        if x.shape[1] != self.num_channels:
            raise ValueError(f"ActNorm expects {self.num_channels} channels, got input of shape {tuple(x.shape)}")
        reduce_dims = [d for d in range(x.dim()) if d != 1]
        xd = x.detach().to(torch.float64)
        stats = torch.cat(
            [xd.sum(reduce_dims), (xd * xd).sum(reduce_dims), xd.new_tensor([x.numel() / self.num_channels])]
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        c = self.num_channels
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c : 2 * c] / count - mean * mean).clamp_min(0.0)
        self.bias.copy_(-mean.to(self.bias.dtype))
        self.log_scale.copy_(-torch.log(var.sqrt() + self.eps).to(self.log_scale.dtype))
        self.initialized.fill_(True)

    def forward_and_log_det(self, x, cond=None):
        if self.training and not torch.compiler.is_compiling() and not bool(self.initialized):
            self.initialize(x)
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        spatial = x[0, 0].numel()
        log_det = (self.log_scale.sum() * spatial).expand(x.shape[0])
        return y, log_det

    def inverse(self, y, cond=None):
        return y * torch.exp(-self._view(self.log_scale, y)) - self._view(self.bias, y)
