"""What the commands read for a model: image files, photos and validation images, as tensors in [-1, 1].

The applications' command adapters (``applications/<name>/cli.py``) never read files or build data:
they get a ``CommandInputs`` and ask it for what their options name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from hydra.utils import instantiate
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.images import evenly_spaced, uint8_to_model_range

__all__ = ["CommandInputs", "read_image_file", "read_photo"]


def read_image_file(path: str | Path, shape: Sequence[int]) -> Tensor:
    """An image file as a ``(C, H, W)`` tensor in [-1, 1], in the model's channels, resized to its shape."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"input={path} does not exist (source=file reads image files)")
    channels, height, width = shape
    if channels not in (1, 3):
        raise ConfigError(f"source=file needs a model on 1- or 3-channel images, this one has {channels}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError) as error:
        reason = " ".join(str(error).split())[:120]
        raise DataNotFoundError(f"input={path} is not a readable image file: {reason}") from None
    return uint8_to_model_range(data.view(height, width, channels).permute(2, 0, 1))


def read_photo(path: str | Path, image_shape: Sequence[int], size: int | None = None) -> Tensor:
    """The photo at ``path`` as a ``(1, 3, H, W)`` tensor in [-1, 1].

    ``size=None``: shorter side resized to the model's size, then a centred square crop of the
    model's shape. ``size=N``: shorter side resized to N, sides cropped to even numbers.
    """
    from datamodules.style import read_rgb, resize_short_side

    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"input image {path} does not exist")
    image = read_rgb(path)
    if size is None:
        height, width = int(image_shape[1]), int(image_shape[2])
        image = resize_short_side(image, max(height, width))
    else:
        if int(size) < 2:
            raise ConfigError(f"size={size} is too small")
        image = resize_short_side(image, int(size))
        height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    image = image[top : top + height, left : left + width].copy()  # a writable, contiguous copy
    return uint8_to_model_range(torch.from_numpy(image).permute(2, 0, 1)).unsqueeze(0)


class CommandInputs:
    """The reader a command hands an application's adapter.

    Args:
        data_config: the data config of ``source=data`` (``+data=<name>``, else the checkpoint's; None if neither).
    """

    def __init__(self, data_config: Mapping[str, Any] | None = None):
        self.data_config = data_config

    def validation_images(self, n: int) -> Tensor:
        """``n`` images evenly spaced through the validation split of the data config."""
        if not self.data_config:
            raise ConfigError(
                "source=data: the checkpoint stores no data config; pass one with +data=<name> (e.g. +data=mnist)"
            )
        datamodule = instantiate(dict(self.data_config))
        datamodule.prepare_data()
        datamodule.setup("validate")
        return evenly_spaced(datamodule.val_dataset, n)

    def training_images(self, max_images: int = 20000) -> Tensor | None:
        """Up to ``max_images`` images evenly spaced through the training split (None without a data config)."""
        if not self.data_config:
            return None
        datamodule = instantiate(dict(self.data_config))
        datamodule.prepare_data()
        datamodule.setup("fit")
        return evenly_spaced(datamodule.train_dataset, max_images)

    def image_file(self, path: str | Path, shape: Sequence[int]) -> Tensor:
        return read_image_file(path, shape)

    def photo(self, path: str | Path, image_shape: Sequence[int], size: int | None = None) -> Tensor:
        return read_photo(path, image_shape, size)
