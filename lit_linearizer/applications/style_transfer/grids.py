"""Style transfer's image grids: every style of some images, interpolation strips and compositions of styles."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from lit_linearizer.applications.style_transfer.model import StyleTransferModel
from lit_linearizer.images import to_unit_range

__all__ = ["command_grids", "composition_grid", "interpolation_grid", "sample_grids", "style_pairs", "styles_row"]


def style_pairs(styles: list[str]) -> list[tuple[str, str]]:
    """Neighbouring pairs of styles (each with the next, cyclically; one pair for two styles)."""
    return [(styles[i], styles[(i + 1) % len(styles)]) for i in range(len(styles) if len(styles) > 2 else 1)]


@torch.no_grad()
def sample_grids(
    model: StyleTransferModel, images: Tensor, targets: Tensor | None = None, interpolation_steps: int = 7
) -> dict[str, Tensor]:
    """Validation grids: ``style_<s>`` (contents, targets, outputs), ``styles`` (per image a row [content,
    f_s1, f_s2, ...], and [content, targets...] below), and with two or more styles ``interpolation``
    and ``composition`` of the first two images."""
    n, styles = images.shape[0], model.styles
    outputs = model.stylize_all(images)
    grids = {}
    for i, style in enumerate(styles):
        rows = [images] + ([targets[:, i]] if targets is not None else []) + [outputs[:, i]]
        grids[f"style_{style}"] = make_grid(to_unit_range(torch.cat(rows)), nrow=n)
    rows = []
    for b in range(n):
        rows.append(torch.cat([images[b : b + 1], outputs[b]]))
        if targets is not None:
            rows.append(torch.cat([images[b : b + 1], targets[b]]))
    grids["styles"] = make_grid(to_unit_range(torch.cat(rows)), nrow=len(styles) + 1)
    if len(styles) >= 2:
        grids["interpolation"] = interpolation_grid(model, images[:2], interpolation_steps)
        grids["composition"] = composition_grid(model, images[:2])
    return grids


@torch.no_grad()
def interpolation_grid(model: StyleTransferModel, images: Tensor, steps: int) -> Tensor:
    """Rows: ``[content, alpha = 1 (first style), ..., alpha = 0 (second style)]`` per style pair and image."""
    rows = []
    for first, second in style_pairs(model.styles):
        frames = model.interpolate_styles(images, first, second, steps)  # (steps, B, C, H, W)
        for b in range(images.shape[0]):
            rows.append(torch.cat([images[b : b + 1], frames[:, b]]))
    return make_grid(to_unit_range(torch.cat(rows)), nrow=steps + 1)


@torch.no_grad()
def composition_grid(model: StyleTransferModel, images: Tensor) -> Tensor:
    """Rows: ``[content, f_a, f_b, f_{A_b A_a} (one pass), f_b(f_a(x)) (two passes)]``."""
    rows = []
    for first, second in style_pairs(model.styles):
        styled_first = model.stylize(images, first)
        for b in range(images.shape[0]):
            x = images[b : b + 1]
            rows.append(
                torch.cat(
                    [x, styled_first[b : b + 1], model.stylize(x, second), model.compose_styles(x, [first, second]),
                     model.stylize(styled_first[b : b + 1], second)]  # fmt: skip
                )
            )
    return make_grid(to_unit_range(torch.cat(rows)), nrow=5)


@torch.no_grad()
def styles_row(model: StyleTransferModel, image: Tensor) -> Tensor:
    """One image ``(1, C, H, W)`` of the training size and the image in every style, in one row."""
    return make_grid(to_unit_range(torch.cat([image, model.stylize_all(image)[0]])), nrow=len(model.styles) + 1)


@torch.no_grad()
def command_grids(
    model: StyleTransferModel, image: Tensor, first: str, second: str, steps: int
) -> tuple[dict[str, Tensor], float]:
    """`linearizer style`: ``interpolation_<a>_<b>``, ``composition_<a>_<b>`` and ``styles`` of one image
    (any even size), and the largest difference between composing in one pass and in two."""
    frames = model.interpolate_styles(image, first, second, steps)[:, 0]
    styled_first = model.stylize(image, first)
    composed = model.compose_styles(image, [first, second])
    sequential = model.stylize(styled_first, second)
    every_style = torch.cat([model.stylize(image, s) for s in model.styles])
    composition = torch.cat([image, styled_first, model.stylize(image, second), composed, sequential])
    grids = {
        f"interpolation_{first}_{second}": make_grid(to_unit_range(torch.cat([image, frames])), nrow=steps + 1),
        f"composition_{first}_{second}": make_grid(to_unit_range(composition), nrow=5),
        "styles": make_grid(to_unit_range(torch.cat([image, every_style])), nrow=len(model.styles) + 1),
    }
    return grids, float((composed - sequential).abs().max())
