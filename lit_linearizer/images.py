"""Image tensors between their ranges: the model's [-1, 1], metrics' and PNGs' [0, 1], and uint8 pixels.

Models see images in [-1, 1]; torchmetrics (``normalize=True``) and ``save_image`` expect [0, 1]. These
are the only conversions the project uses, so every path (data, files, metrics, grids) agrees bit for bit.

Example:
    >>> import torch
    >>> pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    >>> uint8_to_model_range(pixels)
    tensor([-1.0000, -0.6000,  1.0000])
    >>> to_unit_range(torch.tensor([-1.5, 0.0, 1.0]))  # clamped
    tensor([0.0000, 0.5000, 1.0000])
    >>> from_unit_range(torch.tensor([0.0, 0.5, 1.0]))
    tensor([-1.,  0.,  1.])
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lit_linearizer.errors import CheckpointError

__all__ = [
    "evenly_spaced",
    "from_unit_range",
    "refuse_nonfinite",
    "save_pngs",
    "tile",
    "to_three_channels",
    "to_uint8",
    "to_unit_range",
    "uint8_to_model_range",
    "uint8_to_unit_range",
]


def to_unit_range(images: Tensor) -> Tensor:
    """Model images in [-1, 1] -> [0, 1], clamped (metrics and PNGs expect it)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def from_unit_range(images: Tensor) -> Tensor:
    """Images in [0, 1] -> the model's [-1, 1] (no clamp)."""
    return images * 2.0 - 1.0


def uint8_to_unit_range(pixels: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return pixels.float().div(255.0)


def uint8_to_model_range(pixels: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [-1, 1]."""
    return from_unit_range(uint8_to_unit_range(pixels))


def to_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] -> uint8 pixels, rounded as ``torchvision.utils.save_image`` rounds (clamped).

    Example:
        >>> import torch
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0, 1.2]))
        tensor([  0, 128, 255, 255], dtype=torch.uint8)
    """
    return images.detach().mul(255).add_(0.5).clamp_(0, 255).to("cpu", torch.uint8)


def save_pngs(images: Tensor, directory: str | Path, first_index: int = 0, prefix: str = "", digits: int = 6) -> int:
    """Write ``(B, C, H, W)`` images in [0, 1] as single PNG files ``<prefix><index>.png`` (grey for one
    channel, RGB for three), numbered from ``first_index``; the folder torch-fidelity, clean-fid and
    pytorch-fid read as is. Returns the number written."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for offset, image in enumerate(pixels):
        image = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(image).save(directory / f"{prefix}{first_index + offset:0{digits}d}.png")
    return len(pixels)


def tile(images: Tensor, nrow: int, padding: int = 2) -> Tensor:
    """``(B, C, H, W)`` images -> one ``(C, H', W')`` grid, ``nrow`` per row, laid out as
    ``torchvision.utils.make_grid`` lays them out (pad value 0) but in the images' own dtype and channels
    (``make_grid`` makes one channel three): a uint8 grid of 100,000 grey 32x32 images is 115 MB, not 347 MB.

    Example:
        >>> import torch
        >>> from torchvision.utils import make_grid
        >>> images = torch.randint(0, 256, (5, 1, 4, 3), dtype=torch.uint8)
        >>> torch.equal(tile(images, nrow=2), make_grid(images, nrow=2)[:1])
        True
    """
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    step_y, step_x = height + padding, width + padding
    grid = images.new_zeros((channels, rows * step_y + padding, columns * step_x + padding))
    for index in range(count):
        y, x = divmod(index, columns)
        top, left = y * step_y + padding, x * step_x + padding
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def to_three_channels(images: Tensor) -> Tensor:
    """``(B, 1, H, W)`` -> ``(B, 3, H, W)`` (a view); other channel counts pass through.

    Example:
        >>> import torch
        >>> to_three_channels(torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def evenly_spaced(dataset, n: int) -> Tensor:
    """``n`` images evenly spaced through a split (splits are often sorted by class): grid and command inputs.

    Reads the in-memory ``images`` tensor when the dataset has one, else decodes ``n`` items (``item["image"]``).
    """
    indices = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long()
    images = getattr(dataset, "images", None)
    if images is not None:
        return images[indices]
    return torch.stack([dataset[int(i)]["image"] for i in indices])


def refuse_nonfinite(images: Tensor, name: str) -> None:
    """A one-line CheckpointError if generated ``images`` hold NaN/inf: check float images before they become
    pixels (a NaN turns into a black uint8 pixel, and a black PNG looks like a result)."""
    bad = int((~torch.isfinite(images)).sum()) if images.is_floating_point() else 0
    if bad:
        raise CheckpointError(
            f"the model generated NaN/inf values ({bad} of {images.numel()} in {name}); nothing was written: its "
            "weights are broken (a run that diverged); sample from a checkpoint written before the divergence"
        )
