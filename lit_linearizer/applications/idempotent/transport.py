"""The idempotent generator's moment fit: choose P's collapse direction so that f(noise) gets the data's moments.

``f(x) = g^-1(P g(x))`` with ``P = U V^T``, ``V^T U = I`` (an oblique projection). ``U`` (the range, where
outputs live) is learned; ``V`` (how an input is read into the range's coordinates) has a free part
``(I - U U^T) W`` that leaves ``P^2 = P`` exact for any ``W``. After training, ``W`` is refitted on the
latents' first two moments so that the coordinates of noise latents, ``V^T g(z)``, have the mean and
covariance of the data's coordinates ``V^T g(x)``, while the data's own coordinates move as little as
possible (a weighted term: reconstruction stays close to the trained one). It is a small smooth
problem in the moments only (N x N matrices, no images), solved by L-BFGS in a second; the fitted P is
still exactly idempotent. The same means as one-step generation's closed-form operator: transport
the noise latents onto the data latents' first two moments with the linear freedom the model has.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_linearizer.operators.gaussian_transport import LatentMoments
from lit_linearizer.operators.oblique import ObliqueProjection

__all__ = ["coordinate_gaps", "fit_collapse_direction"]


def coordinate_gaps(v: Tensor, data: LatentMoments, noise: LatentMoments) -> dict[str, Tensor]:
    """The noise coordinates' gaps to the data coordinates under ``V``: relative covariance and mean gaps."""
    sx, sz = data.covariance(), noise.covariance()
    cx, cz = v.T @ sx @ v, v.T @ sz @ v
    mean = v.T @ (noise.mean - data.mean)
    return {"cov": (cz - cx).norm() / cx.norm(), "mean": mean.norm() / cx.trace().sqrt()}


def fit_collapse_direction(
    projection: ObliqueProjection, data: LatentMoments, noise: LatentMoments, stay: float = 10.0,
    iterations: int = 500,
) -> ObliqueProjection:
    """An ObliqueProjection with the trained range ``U`` and a collapse direction ``V`` refitted on moments.

    Minimises ``|V^T (S_z - S_x) V|_F^2 / |V^T S_x V|_F^2 + |V^T (m_z - m_x)|^2 / tr(V^T S_x V)`` plus
    ``stay`` times how far the data coordinates move (``tr(D^T S_x D) / tr(V0^T S_x V0)``, ``D = V - V0``),
    over ``V = U + (I - U U^T) W`` (float64, L-BFGS from the trained ``W``). Returns a new, frozen projection.
    """
    with torch.no_grad():
        u, v0 = (factor.detach().double().cpu() for factor in projection.factors())
    sx, sz = data.covariance().cpu(), noise.covariance().cpu()
    delta = (noise.mean - data.mean).cpu()
    complement = torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T
    spread = (v0.T @ sx @ v0).trace()
    shear = (v0 - u).contiguous().requires_grad_(True)

    def objective() -> Tensor:
        v = u + complement @ shear
        cx, cz = v.T @ sx @ v, v.T @ sz @ v
        moved = v - v0
        return (
            ((cz - cx) ** 2).sum() / (cx**2).sum()
            + (v.T @ delta).pow(2).sum() / cx.trace()
            + stay * (moved.T @ sx @ moved).trace() / spread
        )

    optimizer = torch.optim.LBFGS([shear], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    fitted = ObliqueProjection(projection.in_features, projection.rank)
    reference = next(projection.parameters())
    with torch.no_grad():  # the same weight, hence the same U; the new shear is W projected off U
        fitted.weight.copy_(projection.weight.detach())
        fitted.shear.copy_((complement @ shear.detach()).to(reference))
    return fitted.requires_grad_(False).to(reference.device)
