"""One-step generation's image grids: samples in one step and in T, inversions of real images, interpolations."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.utils import make_grid

from lit_linearizer.applications.one_step.model import OneStepModel
from lit_linearizer.images import to_unit_range

__all__ = ["sample_grids", "samples_grid"]


def samples_grid(images: Tensor) -> Tensor:
    """Images in [-1, 1] as one square-ish grid in [0, 1]."""
    return make_grid(to_unit_range(images), nrow=max(1, int(math.sqrt(len(images)))))


@torch.no_grad()
def sample_grids(model: OneStepModel, noise: Tensor, images: Tensor | None = None) -> dict[str, Tensor]:
    """``one_step`` and ``<T>_step`` samples from the same ``noise``; with two or more real ``images``,
    ``inversion`` (the images above their reconstructions ``f(f^+(x))``) and ``interpolation`` (slerps
    between the inverted noises of pairs of images, up to four rows)."""
    nrow = max(1, int(math.sqrt(len(noise))))
    steps = model.sampler_settings["steps"]
    grids = {
        "one_step": make_grid(to_unit_range(model.sample(noise)), nrow=nrow),
        f"{steps}_step": make_grid(to_unit_range(model.sample(noise, steps=steps)), nrow=nrow),
    }
    if images is not None and len(images) >= 2:
        pairs = images[: 2 * (len(images) // 2)]
        reconstruction = model.generator()(model.invert(pairs))
        grids["inversion"] = make_grid(to_unit_range(torch.cat([pairs, reconstruction])), nrow=len(pairs))
        rows = [model.interpolate(pairs[2 * i], pairs[2 * i + 1], nrow) for i in range(min(4, len(pairs) // 2))]
        grids["interpolation"] = make_grid(to_unit_range(torch.cat(rows)), nrow=nrow)
    return grids
