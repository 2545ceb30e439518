"""The idempotent Linearizer without Lightning: ``f = g^-1 P g``, a projector onto ``g^-1(range P)`` for every input.

Example:
    >>> import torch
    >>> from lit_linearizer.flows import GlowNetwork
    >>> from lit_linearizer.operators import ObliqueProjection
    >>> _ = torch.manual_seed(0)
    >>> g = GlowNetwork(in_shape=(1, 4, 4), num_steps=1, hidden_channels=4, conditional=False)
    >>> model = IdempotentModel(g, ObliqueProjection(16, rank=3, init_shear=1.0), (1, 4, 4)).double().eval()
    >>> noise, fz = model.generate(4, seed=0)  # f(noise): projected onto the manifold in one pass
    >>> bool((model.project(fz) - fz).abs().max() < 1e-10)  # f(f(z)) = f(z)
    True
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.operators.diagonal import DiagonalProjection
from lit_linearizer.randomness import per_sample_normal

__all__ = ["IdempotentModel", "occlude"]


def occlude(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image with a random square (half the side) replaced by uniform noise in [-1, 1]."""
    out = images.clone()
    _, _, h, w = images.shape
    side_h, side_w = max(1, h // 2), max(1, w // 2)
    for i in range(len(images)):
        top = int(torch.randint(0, h - side_h + 1, (), generator=generator))
        left = int(torch.randint(0, w - side_w + 1, (), generator=generator))
        patch = torch.rand(images.shape[1], side_h, side_w, generator=generator, dtype=images.dtype) * 2 - 1
        out[i, :, top : top + side_h, left : left + side_w] = patch.to(images.device)
    return out


class IdempotentModel(nn.Module):
    """``f(x) = g^-1(P g(x))`` with one invertible g and a latent projection ``P^2 = P``; generation is ``f(noise)``.

    Args:
        network: g (unconditional: the same network on both sides).
        operator: P, a projection (DiagonalProjection, OrthogonalProjection or ObliqueProjection).
        image_shape: (C, H, W).
        noise_std: std of the Gaussian source noise of ``generate``.
        corruption_std: std of the Gaussian corruption of ``corrupted``.
    """

    def __init__(
        self,
        network: InvertibleModule,
        operator: LatentOperator,
        image_shape: Sequence[int],
        noise_std: float = 1.0,
        corruption_std: float = 0.5,
    ):
        super().__init__()
        self.network, self.operator = network, operator
        self.image_shape = tuple(int(s) for s in image_shape)
        self.noise_std, self.corruption_std = float(noise_std), float(corruption_std)

    @property
    def rank(self) -> int:
        """The rank of P: the dimension of the manifold ``g^-1(range P)``."""
        return int(self.operator.rank)

    def expected_rank_fraction(self) -> Tensor:
        """``E[rank P] / N``: the mean keep-probability for the STE mask, else the fixed ``rank / N``."""
        if isinstance(self.operator, DiagonalProjection):
            return self.operator.keep_probability().mean()
        ref = next(self.operator.parameters())
        return ref.new_tensor(self.operator.rank / self.operator.in_features)

    def linearizer(self) -> Linearizer:
        return Linearizer(self.network, self.operator, self.network, self.image_shape)

    def project(self, x: Tensor) -> Tensor:
        """``f(x) = g^-1(P g(x))``."""
        return self.linearizer()(x)

    @torch.no_grad()
    def projection_error(self) -> float:
        """``max |P(Pz) - Pz| / |Pz|`` over fixed random latents: P's own roundoff."""
        ref = next(self.operator.parameters())
        z = torch.randn(16, self.operator.in_features, generator=torch.Generator().manual_seed(0), dtype=ref.dtype)
        pz = self.operator(z.to(ref.device))
        return float(((self.operator(pz) - pz).norm(dim=1) / pz.norm(dim=1).clamp_min(1e-30)).max())

    @torch.no_grad()
    def generate(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``(noise, f(noise))`` for n per-sample-seeded Gaussian inputs (std ``noise_std``)."""
        ref = next(self.parameters())
        noise = self.noise_std * per_sample_normal(torch.arange(n), self.image_shape, seed, ref.dtype, ref.device)
        return noise, torch.cat([self.project(chunk) for chunk in noise.split(256)])

    def corrupted(self, images: Tensor, seed: int) -> Tensor:
        """The first half with Gaussian noise (``corruption_std``), the second half occluded."""
        generator = torch.Generator().manual_seed(seed)
        half = (len(images) + 1) // 2
        noise = torch.randn(images[:half].shape, generator=generator, dtype=images.dtype).to(images.device)
        return torch.cat([images[:half] + self.corruption_std * noise, occlude(images[half:], generator)])
