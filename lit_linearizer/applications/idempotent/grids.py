"""The idempotent Linearizer's image grids: inputs of any kind, their projections f(x), and f(f(x)) below them."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.utils import make_grid

from lit_linearizer.applications.idempotent.model import IdempotentModel
from lit_linearizer.images import to_unit_range

__all__ = ["GRID_ROW", "input_grids", "projection_grid", "samples_grid"]

GRID_ROW = 16  # images per row in the input / f / f(f) grids


@torch.no_grad()
def projection_grid(model: IdempotentModel, inputs: Tensor, row: int = GRID_ROW) -> Tensor:
    """Rows of ``row`` images in triplets: inputs, f(inputs), f(f(inputs)) (in [0, 1])."""
    outputs = torch.cat([model.project(chunk) for chunk in inputs.split(256)])
    twice = torch.cat([model.project(chunk) for chunk in outputs.split(256)])
    row = max(1, min(row, len(inputs)))
    pad = (-len(inputs)) % row
    if pad:
        blank = inputs.new_full((pad, *inputs.shape[1:]), -1.0)
        inputs, outputs, twice = (torch.cat([t, blank]) for t in (inputs, outputs, twice))
    rows = []
    for start in range(0, len(inputs), row):
        rows += [t[start : start + row] for t in (inputs, outputs, twice)]
    return make_grid(to_unit_range(torch.cat(rows)), nrow=row)


@torch.no_grad()
def input_grids(
    model: IdempotentModel, noise: Tensor | None = None, images: Tensor | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """Projection grids of ``noise`` (``noise``), of real ``images`` (``data``) and of the images corrupted
    (``corrupted``: Gaussian noise on the first half, occlusions on the second, seeded by ``seed``)."""
    grids = {}
    if noise is not None:
        grids["noise"] = projection_grid(model, noise)
    if images is not None and len(images):
        grids["data"] = projection_grid(model, images)
        grids["corrupted"] = projection_grid(model, model.corrupted(images, seed))
    return grids


def samples_grid(samples: Tensor, nrow: int | None = None) -> Tensor:
    """Generated images alone (``f(noise)``), ``nrow`` per row (default: a square-ish grid)."""
    return make_grid(to_unit_range(samples), nrow=nrow or max(1, int(math.sqrt(len(samples)))))
