"""The commands of style transfer: `linearizer style` (interpolation strip, composition) and `linearizer sample`."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from lit_linearizer.applications.style_transfer.grids import command_grids, styles_row
from lit_linearizer.applications.style_transfer.model import StyleTransferModel
from lit_linearizer.errors import ConfigError

__all__ = ["check_style_options", "sample", "style"]


def check_style_options(
    requested: str | Sequence[str] | None, known: Sequence[str], steps: int
) -> tuple[list[str], int]:
    """The two styles of `linearizer style` (``requested``: exactly two known ones; None: the first two known)
    and the frames of its interpolation strip (at least 2); one-line ConfigErrors otherwise."""
    known = list(known)
    if requested is None:
        if len(known) < 2:
            raise ConfigError(f"the checkpoint has only the style {known}; interpolation and composition need two")
        styles = known[:2]
    else:
        styles = [str(s) for s in (list(requested) if isinstance(requested, (list, tuple)) else [requested])]
    if len(styles) != 2:
        raise ConfigError(f"styles={styles}: give exactly two styles, e.g. styles=[{','.join(known[:2])}]")
    for style_name in styles:
        if style_name not in known:
            raise ConfigError(f"unknown style {style_name!r}; the checkpoint's styles are {known}")
    steps = int(steps)
    if steps < 2:
        raise ConfigError(f"steps={steps}: the interpolation strip needs at least 2 frames")
    return styles, steps


def style(
    model: StyleTransferModel, image: Tensor, styles: Sequence[str], steps: int
) -> tuple[dict[str, Tensor], float]:
    """`linearizer style` on one photo ``(1, 3, H, W)`` (options checked by ``check_style_options``): the grids
    (``grids.command_grids``) and the largest difference between composing the two styles in one pass and in two."""
    first, second = styles
    return command_grids(model, image, first, second, steps)


def sample(
    model: StyleTransferModel,
    inputs,
    source: str = "file",
    input: str | None = None,  # noqa: A002 (the CLI option's name)
    **_,
) -> dict[str, Tensor]:
    """`linearizer sample source=file input=photo.jpg`: the photo in every style, one row (``styles``).

    ``inputs`` is the command's reader (``tasks/inputs.py``): ``photo(path, shape)``.
    """
    if source != "file" or not input:
        raise ConfigError("style transfer needs an input image: source=file input=<photo> (or `linearizer style`)")
    reference = next(model.parameters())
    image = inputs.photo(input, model.image_shape).to(reference.device)
    return {"styles": styles_row(model, image)}
