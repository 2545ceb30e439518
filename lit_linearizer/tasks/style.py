"""`linearizer style`: a photo through a trained style-transfer checkpoint, with style algebra.

    linearizer style ckpt_path=.../last.ckpt input=photo.jpg styles=[sepia,sketch] steps=9

writes, under the run's output directory,

- ``interpolation_<a>_<b>.png``: ``[photo, f_A(alpha) ...]`` with ``A(alpha) = alpha A_a + (1 - alpha) A_b``,
  alpha from 1 (style a) to 0 (style b): the operators are interpolated, not the style labels;
- ``composition_<a>_<b>.png``: ``[photo, f_a, f_b, f_{A_b A_a}, f_b(f_a(photo))]``; the last two
  agree up to float rounding (printed), because the inner ``g g^-1`` cancels;
- ``styles.png``: the photo and the photo in every style of the checkpoint.

The grids are ``applications/style_transfer/grids.py``; this task reads the checkpoint and the photo.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lit_linearizer.applications.style_transfer import StyleTransferLitModule
from lit_linearizer.applications.style_transfer import cli as style_cli
from lit_linearizer.checkpoints import load_module
from lit_linearizer.errors import ConfigError
from lit_linearizer.tasks.inputs import read_photo
from lit_linearizer.tasks.reporting import write_grids
from lit_linearizer.tasks.sample import resolve_device

__all__ = ["style"]


def style(cfg: DictConfig) -> dict[str, Path]:
    module = load_module(cfg.ckpt_path, resolve_device(cfg.device))
    if not isinstance(module, StyleTransferLitModule):
        raise ConfigError(f"checkpoint {cfg.ckpt_path} is a {type(module).__name__}, not a style-transfer model")
    requested = cfg.get("styles")
    requested = OmegaConf.to_container(requested) if OmegaConf.is_config(requested) else requested
    styles, steps = style_cli.check_style_options(requested, module.styles, cfg.steps)
    size = cfg.get("size")
    image = read_photo(cfg.input, module.image_shape, None if size is None else int(size)).to(module.device)
    grids, error = style_cli.style(module.model, image, styles, steps)
    written = write_grids(grids, Path(cfg.paths.output_dir))
    a, b = styles
    print(f"composition: max |f_(A_{b} A_{a})(x) - f_{b}(f_{a}(x))| = {error:.2e} (pixel range [-1, 1])")
    return written
