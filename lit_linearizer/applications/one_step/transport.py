"""The closed-form operator of a trained g: stream data and noise latents, fit ``A_t = E[z1 | z_t]``, keep the moments.

For a fixed g, the flow-matching minimiser over linear ``A_t`` depends only on the latents' first two
moments (operators/gaussian_transport.py, LINEARIZER.md section 7). ``fit_latent_transport`` streams
``g_x`` over training images and ``g_y`` over as many noise draws, in float64, sharded over processes
and summed, and returns the operator with what the diagnostics need: the data latents' principal
directions and variances, to sample the Gaussian of the data latents (the best any linear generator on
this g can do) and to compare generated latents with data latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from lit_linearizer.applications.checks import merged_settings
from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.operators.gaussian_transport import GaussianTransportOperator, LatentMoments, fit_gaussian_transport
from lit_linearizer.randomness import per_sample_normal

__all__ = [
    "DEFAULT_TRANSPORT", "DENSE_LIMIT", "LatentFit", "fit_latent_transport", "fit_options", "load_transport",
    "restored_transport", "saved_transport", "transport_settings",
]

DENSE_LIMIT = 4096  # latents up to this size keep full N x N moments (128 MiB in float64 at the limit)
DEFAULT_TRANSPORT = {"rank": 512, "max_samples": 20000, "batch_size": 500}


def transport_settings(config: Mapping | None) -> dict:
    """``model.transport`` with its defaults (``rank``, ``max_samples``, ``batch_size``); unknown keys are an error."""
    return merged_settings("transport", config, DEFAULT_TRANSPORT)


def fit_options(settings: Mapping, image_shape: Sequence[int], noise_seed: int) -> dict:
    """``fit_latent_transport``'s options from ``transport_settings``: full moments for latents up to DENSE_LIMIT
    values, else the principal subspace of ``settings["rank"]``."""
    dense = math.prod(image_shape) <= DENSE_LIMIT
    rank = None if dense else int(settings["rank"])
    return {"noise_seed": int(noise_seed), "rank": rank, "batch_size": int(settings["batch_size"])}


def saved_transport(fit: LatentFit, step: int | None) -> dict:
    """What a checkpoint keeps of a fit: the operator's tensors and the step whose weights it was fitted on."""
    return {"step": step, "tensors": {name: t.detach().cpu() for name, t in fit.operator.state_dict().items()}}


def restored_transport(entry: Mapping) -> GaussianTransportOperator:
    """The operator of a checkpoint's ``saved_transport`` entry."""
    return GaussianTransportOperator(**entry["tensors"])


def load_transport(model, checkpoint: Mapping) -> int | None:
    """Give ``model`` (a OneStepModel) the checkpoint's fitted operator, marked current when it was fitted on the
    checkpoint's own weights; returns the step it was fitted at (None: no fit saved, the model keeps A_t)."""
    saved = checkpoint.get("latent_transport")
    if saved is None:
        return None
    current = saved["step"] == checkpoint.get("global_step", saved["step"])
    model.set_transport(restored_transport(saved), current=current)
    return saved["step"]


@dataclass
class LatentFit:
    """The fitted operator and the data latents' Gaussian, sampled as
    ``mean + Q diag(sqrt(variances)) Q^T e + sqrt(residual) (I - Q Q^T) e`` from standard normal e."""

    operator: GaussianTransportOperator
    mean: Tensor  # (N,)
    basis: Tensor  # (N, K), principal directions, largest variance first
    variances: Tensor  # (K,)
    residual: float  # mean variance outside the basis (0 when K = N)
    total_variance: float

    def gaussian(self, noise: Tensor) -> Tensor:
        """Latents of ``N(mean, covariance)`` from standard normal ``noise (B, N)``."""
        noise = noise.flatten(1).to(self.basis.dtype)
        coordinates = noise @ self.basis
        sample = self.mean + (coordinates * self.variances.sqrt()) @ self.basis.T
        if self.residual > 0:
            sample = sample + self.residual**0.5 * (noise - coordinates @ self.basis.T)
        return sample


def _shard(count: int, rank: int, world_size: int) -> Tensor:
    return torch.arange(rank, count, world_size)


@torch.no_grad()
def fit_latent_transport(
    g_x: InvertibleModule,
    g_y: InvertibleModule,
    images: Tensor,
    image_shape: Sequence[int],
    noise_seed: int = 0,
    rank: int | None = None,
    batch_size: int = 500,
    process: tuple[int, int] = (0, 1),
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> LatentFit:
    """Fit the closed-form operator from ``g_x(images)`` and ``g_y(noise)`` (as many noise draws as images).

    Args:
        images: training images ``(n, C, H, W)`` in [-1, 1] (any device; moved in batches).
        noise_seed: seed of the noise draws (sample i depends on (seed, i) only: the same fit on any world size).
        rank: None for full moments (latents up to DENSE_LIMIT values), else the principal-subspace rank.
        process: ``(rank, world_size)``; each process streams its share, ``all_reduce`` sums the moments.
        dtype: the operator's dtype (the fit itself runs in float64).

    Raises FloatingPointError when g maps the images or the noise to NaN/inf.
    """
    reference = next(g_x.parameters())
    device = reference.device
    features = int(torch.tensor(list(image_shape)).prod())
    if rank is None and features > DENSE_LIMIT:
        raise ValueError(
            f"latents of {features} values are too large for full moments (limit {DENSE_LIMIT}); "
            "set model.transport.rank (e.g. 512) for a principal-subspace fit"
        )
    index = _shard(len(images), *process)

    def data_latents():
        for chunk in index.split(batch_size):
            yield g_x(images[chunk].to(device, reference.dtype)).flatten(1)

    def noise_latents():
        for chunk in index.split(batch_size):
            noise = per_sample_normal(chunk, image_shape, noise_seed, reference.dtype, device)
            yield g_y(noise).flatten(1)

    def streamed(moments: LatentMoments, latents) -> LatentMoments:
        for z in latents:
            moments.update(z)
        if all_reduce is not None:
            moments.reduce(all_reduce)
        if not (torch.isfinite(moments.sum).all() and torch.isfinite(moments.second).all()):
            raise FloatingPointError("the latents hold NaN/inf (g's weights are broken): no closed-form fit")
        return moments

    data = streamed(LatentMoments(features, rank=rank, device=device), data_latents())
    if rank is None:
        noise = streamed(LatentMoments(features, device=device), noise_latents())
        variances, basis = torch.linalg.eigh(data.covariance())
        basis, variances, residual = basis.flip(1), variances.flip(0).clamp_min(0.0), 0.0
    else:
        basis, sigma, residual = data.principal()
        variances, residual = sigma.diagonal(), float(residual)
        noise = streamed(LatentMoments(features, basis=basis, device=device), noise_latents())
    operator = fit_gaussian_transport(noise, data, dtype=dtype)
    return LatentFit(operator, data.mean.to(dtype), basis.to(dtype), variances.to(dtype), residual,
                     float(data.total_variance))
