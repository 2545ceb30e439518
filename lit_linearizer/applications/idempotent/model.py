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

from lit_linearizer.applications.idempotent.transport import fit_collapse_direction
from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.operators.diagonal import DiagonalProjection
from lit_linearizer.operators.gaussian_transport import LatentMoments
from lit_linearizer.operators.oblique import ObliqueProjection
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
        # P with its collapse direction refitted on moments (transport.py); not a submodule: not trained, not EMA'd.
        self.fitted_projection: ObliqueProjection | None = None

    @property
    def projection(self) -> LatentOperator:
        """The P that ``project`` applies: the moment-fitted one when there is one, else the trained one."""
        fitted = self.fitted_projection
        if fitted is None:
            return self.operator
        reference = next(self.operator.parameters())
        if fitted.weight.device != reference.device or fitted.weight.dtype != reference.dtype:
            self.fitted_projection = fitted = fitted.to(reference.device, reference.dtype)
        return fitted

    @torch.no_grad()
    def fit_projection(
        self, images: Tensor, noise_seed: int, stay: float = 10.0, batch_size: int = 500,
        process: tuple[int, int] = (0, 1), all_reduce=None,
    ) -> tuple[LatentMoments, LatentMoments] | None:
        """Refit P's collapse direction so that ``f(noise)`` gets the data's latent moments (transport.py); returns
        the data and noise latent moments, or None for projections without that freedom (not ObliqueProjection)."""
        if not isinstance(self.operator, ObliqueProjection):
            return None
        reference = next(self.parameters())
        index = torch.arange(process[0], len(images), process[1])
        moments = [LatentMoments(self.operator.in_features, device=reference.device) for _ in range(2)]
        for chunk in index.split(batch_size):
            noise = self.noise_std * per_sample_normal(chunk, self.image_shape, noise_seed, reference.dtype,
                                                       reference.device)
            moments[0].update(self.network(images[chunk].to(reference.device, reference.dtype)).flatten(1))
            moments[1].update(self.network(noise).flatten(1))
        for m in moments:
            if all_reduce is not None:
                m.reduce(all_reduce)
        self.fitted_projection = fit_collapse_direction(self.operator, *moments, stay=stay)
        return moments[0], moments[1]
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

    def fitted_state(self) -> dict[str, Tensor]:
        """The moment-fitted projection's tensors, for a checkpoint."""
        return {name: t.detach().cpu() for name, t in self.fitted_projection.state_dict().items()}

    def load_fitted_state(self, state: dict[str, Tensor]) -> None:
        fitted = ObliqueProjection(self.operator.in_features, self.operator.rank).requires_grad_(False)
        fitted.load_state_dict(state)
        self.fitted_projection = fitted

    @torch.no_grad()
    def range_gaussian(self, data: LatentMoments, noise: Tensor) -> Tensor:
        """Images of the Gaussian of the data's coordinates in P's range (the best a linear generator on this g and
        range can do): ``g^-1(U c)``, ``c ~ N(V^T m, V^T S V)`` from standard normal ``noise (B, rank)``."""
        u, v = (factor.double() for factor in self.projection.factors())
        mean, cov = v.T @ data.mean, v.T @ data.covariance() @ v
        eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        coordinates = mean + noise.double() @ torch.linalg.cholesky(cov + 1e-9 * cov.diagonal().mean() * eye).T
        return self.network.inverse((coordinates @ u.T).to(noise.dtype).view(-1, *self.image_shape))

    def linearizer(self, fitted: bool = True) -> Linearizer:
        """``g^-1 P g``; ``fitted=False``: with the trained P even when a moment-fitted one exists (training)."""
        return Linearizer(self.network, self.projection if fitted else self.operator, self.network, self.image_shape)

    def project(self, x: Tensor, fitted: bool = True) -> Tensor:
        """``f(x) = g^-1(P g(x))``."""
        return self.linearizer(fitted)(x)

    @torch.no_grad()
    def projection_error(self) -> float:
        """``max |P(Pz) - Pz| / |Pz|`` over fixed random latents: P's own roundoff."""
        ref, projection = next(self.operator.parameters()), self.projection
        z = torch.randn(16, self.operator.in_features, generator=torch.Generator().manual_seed(0), dtype=ref.dtype)
        pz = projection(z.to(ref.device))
        return float(((projection(pz) - pz).norm(dim=1) / pz.norm(dim=1).clamp_min(1e-30)).max())

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
