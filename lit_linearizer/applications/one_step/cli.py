"""`linearizer sample` for one-step generation: a grid of samples from noise, or single images in batches."""

from __future__ import annotations

import logging
import math
from typing import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_linearizer.applications.one_step.model import OneStepModel
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import refuse_nonfinite, tile, to_uint8, to_unit_range
from lit_linearizer.randomness import noise_batches

__all__ = ["LARGE_GRID", "sample", "sample_batches"]

log = logging.getLogger(__name__)

LARGE_GRID = 4096  # more samples than this in one grid: a notice that format=png exists


def _check(n: int, source: str) -> int:
    if source != "noise":
        raise ConfigError(f"source={source!r}: one-step generation samples from noise only (source=noise)")
    n = int(n)
    if n < 1:
        raise ConfigError(f"n={n}: ask for at least one sample")
    return n


def _name(model: OneStepModel, steps: int, method: str | None) -> str:
    return "samples_one_step" if steps == 1 else f"samples_{steps}_step_{method or model.sampler_settings['method']}"


def sample(
    model: OneStepModel, inputs=None, n: int = 64, steps: int = 1, method: str | None = None, seed: int = 0,
    source: str = "noise", batch_size: int = 256, **_,
) -> dict[str, Tensor]:
    """A grid of ``n`` samples from per-sample-seeded noise in ``steps`` steps (``samples_one_step`` or
    ``samples_<T>_step_<method>``), as uint8 pixels in the model's channels. Noise is the only source. With
    ``sampler.operator=fitted``, a checkpoint whose fitted operator is missing or older than its weights is refitted
    on the training images that ``inputs`` (the command's reader) reads from the checkpoint's data config. The
    samples are drawn ``batch_size`` at a time (``sample_batches``, a progress bar over the samples) and kept as
    uint8 on the CPU: the model's memory stays that of one batch for any ``n``, and the rest grows with the grid's
    pixels only (about 1.2 KB a grey 32x32 sample)."""
    name, batches = sample_batches(model, inputs, n=n, steps=steps, method=method, seed=seed, source=source,
                                   batch_size=batch_size, progress=int(n) <= int(batch_size))  # fmt: skip
    n = int(n)
    if n > LARGE_GRID:
        log.warning("a grid of %d samples is one very large PNG; format=png writes them as single images", n)
    pixels = None
    written = 0
    with tqdm(total=n, desc=name, unit="img", disable=n <= int(batch_size)) as bar:
        for batch in batches:
            if pixels is None:
                pixels = torch.empty((n, *batch.shape[1:]), dtype=torch.uint8)
            pixels[written : written + len(batch)] = to_uint8(batch)
            written += len(batch)
            bar.update(len(batch))
    return {name: tile(pixels, nrow=max(1, int(math.sqrt(n))))}


def sample_batches(
    model: OneStepModel, inputs=None, n: int = 64, steps: int = 1, method: str | None = None, seed: int = 0,
    source: str = "noise", batch_size: int = 256, progress: bool = False, **_,
) -> tuple[str, Iterator[Tensor]]:
    """``n`` samples as batches of at most ``batch_size`` images in [0, 1], drawn one batch at a time (any ``n``
    fits in memory), with the name of ``sample``'s grid. Sample i comes from the same noise as in that grid.
    ``progress``: the solver's progress bar over its steps (``steps > 1``)."""
    n, batch_size = _check(n, source), int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")
    if model.sampler_settings["operator"] == "fitted" and not model.transport_current and inputs is not None:
        images = inputs.training_images()
        if images is not None:
            log.warning("fitting the closed-form operator on %d training images (none current in the checkpoint)",
                        len(images))
            try:
                model.fit_transport(images.to(next(model.parameters()).device))
            except FloatingPointError as error:  # the samples will say it in one line (refuse_nonfinite)
                log.warning("%s; sampling with the learned A_t", error)
    name = _name(model, steps, method)

    def batches() -> Iterator[Tensor]:
        reference = next(model.parameters())
        for noise in noise_batches(n, batch_size, model.image_shape, seed, reference.dtype, reference.device):
            with torch.no_grad():
                images = model.sample(noise, steps=steps, method=method, progress=progress)
            refuse_nonfinite(images, name)  # before the pixels: a NaN would become a black pixel
            yield to_unit_range(images)

    return name, batches()
