"""`linearizer sample` for one-step generation: a grid of samples from noise, or single images in batches."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from lit_linearizer.applications.one_step.grids import samples_grid
from lit_linearizer.applications.one_step.model import OneStepModel
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import to_unit_range
from lit_linearizer.randomness import per_sample_normal

__all__ = ["sample", "sample_batches"]


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
    source: str = "noise", **_,
) -> dict[str, Tensor]:
    """A grid of ``n`` samples from per-sample-seeded noise in ``steps`` steps (``samples_one_step`` or
    ``samples_<T>_step_<method>``). Noise is the only source; ``inputs`` (the command's reader) is unused."""
    n = _check(n, source)
    images = model.sample(model.noise(n, seed), steps=steps, method=method, progress=True)
    return {_name(model, steps, method): samples_grid(images)}


def sample_batches(
    model: OneStepModel, inputs=None, n: int = 64, steps: int = 1, method: str | None = None, seed: int = 0,
    source: str = "noise", batch_size: int = 256, **_,
) -> tuple[str, Iterator[Tensor]]:
    """``n`` samples as batches of at most ``batch_size`` images in [0, 1], drawn one batch at a time (any ``n``
    fits in memory), with the name of ``sample``'s grid. Sample i comes from the same noise as in that grid."""
    n, batch_size = _check(n, source), int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")

    def batches() -> Iterator[Tensor]:
        reference = next(model.parameters())
        for start in range(0, n, batch_size):
            indices = torch.arange(start, min(n, start + batch_size))
            noise = per_sample_normal(indices, model.image_shape, seed, reference.dtype, reference.device)
            with torch.no_grad():
                images = to_unit_range(model.sample(noise, steps=steps, method=method))
            yield images

    return _name(model, steps, method), batches()
