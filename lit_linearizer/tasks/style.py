"""`linearizer style`: a photo through a trained style-transfer checkpoint, with style algebra.

    linearizer style ckpt_path=.../last.ckpt input=photo.jpg styles=[sepia,sketch] steps=9

writes, under the run's output directory,

- ``interpolation_<a>_<b>.png``: ``[photo, f_A(alpha) ...]`` with ``A(alpha) = alpha A_a + (1 - alpha) A_b``,
  alpha from 1 (style a) to 0 (style b): the operators are interpolated, not the style labels;
- ``composition_<a>_<b>.png``: ``[photo, f_a, f_b, f_{A_b A_a}, f_b(f_a(photo))]``; the last two
  agree up to float rounding (printed), because the inner ``g g^-1`` cancels;
- ``styles.png``: the photo and the photo in every style of the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torch import Tensor
from torchvision.utils import make_grid

from lit_linearizer.checkpoints import load_module
from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.modules.base import to_unit_range
from lit_linearizer.tasks.reporting import write_grids
from lit_linearizer.tasks.sample import resolve_device


def load_input(path: str | Path, image_shape: Sequence[int], size: int | None, device) -> Tensor:
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
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)
    return tensor.unsqueeze(0).to(device)


def _styles(cfg_styles, known: list[str]) -> list[str]:
    if cfg_styles is None:
        if len(known) < 2:
            raise ConfigError(f"the checkpoint has only the style {known}; interpolation and composition need two")
        return known[:2]
    styles = list(cfg_styles) if isinstance(cfg_styles, (list, tuple, ListConfig)) else [cfg_styles]
    styles = [str(s) for s in styles]
    if len(styles) != 2:
        raise ConfigError(f"styles={styles}: give exactly two styles, e.g. styles=[{','.join(known[:2])}]")
    for style in styles:
        if style not in known:
            raise ConfigError(f"unknown style {style!r}; the checkpoint's styles are {known}")
    return styles


def style(cfg: DictConfig) -> dict[str, Path]:
    module = load_module(cfg.ckpt_path, resolve_device(cfg.device))
    if not hasattr(module, "interpolate_styles"):
        raise ConfigError(f"checkpoint {cfg.ckpt_path} is a {type(module).__name__}, not a style-transfer model")
    first, second = _styles(cfg.get("styles"), module.styles)
    steps = int(cfg.steps)
    if steps < 2:
        raise ConfigError(f"steps={steps}: the interpolation strip needs at least 2 frames")
    size = cfg.get("size")
    image = load_input(cfg.input, module.image_shape, None if size is None else int(size), module.device)

    with torch.no_grad():
        frames = module.interpolate_styles(image, first, second, steps)[:, 0]
        styled_first = module.stylize(image, first)
        composed = module.compose_styles(image, [first, second])
        sequential = module.stylize(styled_first, second)
        every_style = torch.cat([module.stylize(image, s) for s in module.styles])
        composition = torch.cat([image, styled_first, module.stylize(image, second), composed, sequential])

    output_dir = Path(cfg.paths.output_dir)
    grids = {
        f"interpolation_{first}_{second}": make_grid(to_unit_range(torch.cat([image, frames])), nrow=steps + 1),
        f"composition_{first}_{second}": make_grid(to_unit_range(composition), nrow=5),
        "styles": make_grid(to_unit_range(torch.cat([image, every_style])), nrow=len(module.styles) + 1),
    }
    written = write_grids(grids, output_dir)
    error = float((composed - sequential).abs().max())
    print(f"composition: max |f_(A_{second} A_{first})(x) - f_{second}(f_{first}(x))| = {error:.2e} (pixel range [-1, 1])")
    return written
