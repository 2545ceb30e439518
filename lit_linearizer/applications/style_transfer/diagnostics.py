"""Style transfer's reference values and reports: what simple baselines score, and how exact the style algebra is."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from lit_linearizer.applications.style_transfer.model import StyleTransferModel
from lit_linearizer.images import to_unit_range

__all__ = ["algebra_errors", "colour_baselines", "psnr"]


def psnr(prediction: Tensor, target: Tensor) -> float:
    """PSNR (data range 1) of the pooled squared error, as torchmetrics computes it."""
    mse = (prediction - target).pow(2).mean()
    return float(10.0 * torch.log10(1.0 / mse))


@torch.no_grad()
def colour_baselines(
    train_stacks: Sequence[Tensor], val_images: Tensor, val_targets: Tensor, styles: Sequence[str]
) -> dict[str, float]:
    """Validation PSNR of two references, per style, to read the model's PSNR against:

    ``psnr_identity/<s>``: the content itself as the prediction;
    ``psnr_colour_affine/<s>``: the best per-pixel affine colour map (3x3 matrix + offset,
    least squares on the training photos), i.e. what a linear map in pixel space can do.

    ``train_stacks``: uint8 ``(1 + S, 3, H, W)`` per training photo (content, then a target per style);
    ``val_images`` ``(V, 3, h, w)`` and ``val_targets`` ``(V, S, 3, h, w)`` in [-1, 1].
    """
    pixels = torch.cat([stack.flatten(2).double() / 255.0 for stack in train_stacks], dim=2)  # (1+S, 3, P)
    content = torch.cat([pixels[0], torch.ones_like(pixels[0, :1])]).T  # (P, 4)
    val_content = to_unit_range(val_images).double()
    features = torch.cat([val_content, torch.ones_like(val_content[:, :1])], dim=1)  # (V, 4, H, W)
    values = {}
    for i, style in enumerate(styles):
        target = to_unit_range(val_targets[:, i]).double()
        values[f"psnr_identity/{style}"] = psnr(val_content, target)
        solution = torch.linalg.lstsq(content, pixels[1 + i].T).solution  # (4, 3)
        prediction = torch.einsum("vkhw,kc->vchw", features, solution).clamp(0.0, 1.0)
        values[f"psnr_colour_affine/{style}"] = psnr(prediction, target)
    return values


@torch.no_grad()
def algebra_errors(model: StyleTransferModel, images: Tensor) -> dict[str, float]:
    """How exact the style algebra is with the model's weights, on ``images`` (the first two styles):
    composing in one pass against two, and the interpolation's ends against the two styles."""
    first, second = model.styles[:2]
    composed = model.compose_styles(images, [first, second])
    sequential = model.stylize(model.stylize(images, first), second)
    frames = model.interpolate_styles(images, first, second, 2)
    ends = torch.maximum(
        (frames[0] - model.stylize(images, first)).abs().max(), (frames[-1] - model.stylize(images, second)).abs().max()
    )
    return {
        "algebra/composition_max_abs_error": float((composed - sequential).abs().max()),
        "algebra/interpolation_endpoint_max_abs_error": float(ends),
    }
