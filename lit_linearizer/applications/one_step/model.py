"""One-step generation without Lightning: noise -> image through the collapsed matrix B, inversion, interpolation.

The latent ODE of flow matching is linear, so T solver steps collapse into one matrix B and
``x1 = g_x^-1(B g_y(x0))`` is the Linearizer ``(g_y, B, g_x)``; its pseudo-inverse maps real images
back to noise (LINEARIZER.md, section 3).

Example:
    >>> import torch
    >>> from lit_linearizer.flows import GlowNetwork
    >>> from lit_linearizer.operators import TimeLowRankOperator
    >>> _ = torch.manual_seed(0)
    >>> g = GlowNetwork(in_shape=(1, 4, 4), num_steps=1, hidden_channels=4)  # conditional: g_x and g_y in one
    >>> A = TimeLowRankOperator(16, rank=2, basis_size=4, hidden=8, embedding_dim=8)
    >>> model = OneStepModel(g.bind(1.0), g.bind(0.0), A, (1, 4, 4), {"steps": 8}).double().eval()
    >>> noise = model.noise(3, seed=0)
    >>> one, eight = model.sample(noise), model.sample(noise, steps=8)
    >>> bool(((one - eight).norm() / eight.norm()) < 1e-10)  # one step through B = eight RK4 steps
    True
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.randomness import per_sample_normal
from lit_linearizer.sampling import collapse, integrate

__all__ = ["OneStepModel", "slerp"]


def slerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation between Gaussian noise tensors (keeps their typical norm)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    omega = torch.arccos((a_flat @ b_flat / (a_flat.norm() * b_flat.norm())).clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return torch.stack([(1 - w) * a + w * b for w in weights])
    return torch.stack(
        [(torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega) for w in weights]
    )


class OneStepModel(nn.Module):
    """Sampling in one step (or T), inversion and interpolation with g_x, g_y and the time-conditioned A_t.

    Args:
        g_x, g_y: the data and noise networks (views of one conditional network are fine).
        operator: the time-conditioned ``A_t``.
        image_shape: (C, H, W).
        sampler: ``method`` (``euler``/``rk4``), ``steps`` (T, the steps B is collapsed from and the
            multi-step sampler's default), ``factored`` (keep B as ``b I + P C Q^T``).
    """

    def __init__(
        self,
        g_x: InvertibleModule,
        g_y: InvertibleModule,
        operator: LatentOperator,
        image_shape: Sequence[int],
        sampler: Mapping | None = None,
    ):
        super().__init__()
        self.g_x, self.g_y, self.operator = g_x, g_y, operator
        self.image_shape = tuple(int(s) for s in image_shape)
        self.sampler_settings = {"method": "rk4", "steps": 100, "factored": True, **dict(sampler or {})}
        self._one_step_cache: LatentOperator | None = None

    @torch.no_grad()
    def one_step_operator(self, steps: int | None = None, method: str | None = None) -> LatentOperator:
        """B, collapsed from ``steps`` solver steps (cached for the sampler's defaults; see ``clear_cache``)."""
        s = self.sampler_settings
        steps, method = steps or s["steps"], method or s["method"]
        default = steps == s["steps"] and method == s["method"]
        if default and self._one_step_cache is not None:
            return self._one_step_cache
        B = collapse(self.operator, steps, method, factored=s["factored"])
        if default:
            self._one_step_cache = B
        return B

    def clear_cache(self) -> None:
        """Forget the cached B (after the weights change, e.g. when EMA weights are swapped in)."""
        self._one_step_cache = None

    def generator(self, B: LatentOperator | None = None) -> Linearizer:
        """The one-step generator as a Linearizer: noise -> image, ``g_x^-1(B g_y(.))``."""
        return Linearizer(self.g_y, self.one_step_operator() if B is None else B, self.g_x, self.image_shape)

    def noise(self, n: int, seed: int) -> Tensor:
        """``n`` standard normal inputs, sample i drawn from (seed, i): the same noise for any n >= i."""
        reference = next(self.parameters())
        return per_sample_normal(torch.arange(n), self.image_shape, seed, reference.dtype, reference.device)

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int = 1, method: str | None = None, progress: bool = False) -> Tensor:
        """Images from noise: ``steps=1`` applies B; ``steps=T > 1`` runs T solver steps."""
        if steps == 1:
            return self.generator()(noise)
        method = method or self.sampler_settings["method"]
        z = integrate(self.operator, self.g_y(noise).flatten(1), steps, method, progress)
        return self.g_x.inverse(z.view(-1, *self.image_shape))

    @torch.no_grad()
    def invert(self, images: Tensor) -> Tensor:
        """The noise that generates ``images``: ``g_y^-1(B^+ g_x(images))``."""
        return self.generator().pinv(images)

    @torch.no_grad()
    def interpolate(self, first: Tensor, second: Tensor, num: int = 8) -> Tensor:
        """Images along a slerp between the inverted noises of two real images (``(num, C, H, W)``)."""
        noise = self.invert(torch.stack([first, second]))
        weights = torch.linspace(0.0, 1.0, num, dtype=noise.dtype, device=noise.device)
        return self.sample(slerp(noise[0], noise[1], weights))
