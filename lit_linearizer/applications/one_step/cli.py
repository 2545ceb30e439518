"""`linearizer sample` for one-step generation: a grid of samples from noise, in one step or T."""

from __future__ import annotations

import logging

from torch import Tensor

from lit_linearizer.applications.one_step.grids import samples_grid
from lit_linearizer.applications.one_step.model import OneStepModel
from lit_linearizer.errors import ConfigError

__all__ = ["sample"]

log = logging.getLogger(__name__)


def sample(
    model: OneStepModel, inputs=None, n: int = 64, steps: int = 1, method: str | None = None, seed: int = 0,
    source: str = "noise", **_,
) -> dict[str, Tensor]:
    """A grid of ``n`` samples from per-sample-seeded noise in ``steps`` steps (``samples_one_step`` or
    ``samples_<T>_step_<method>``). Noise is the only source. With ``sampler.operator=fitted``, a checkpoint
    whose fitted operator is missing or older than its weights is refitted on the training images that
    ``inputs`` (the command's reader) reads from the checkpoint's data config."""
    if source != "noise":
        raise ConfigError(f"source={source!r}: one-step generation samples from noise only (source=noise)")
    if model.sampler_settings["operator"] == "fitted" and not model.transport_current and inputs is not None:
        images = inputs.training_images()
        if images is not None:
            log.warning("fitting the closed-form operator on %d training images (none current in the checkpoint)",
                        len(images))
            model.fit_transport(images.to(next(model.parameters()).device))
    images = model.sample(model.noise(n, seed), steps=steps, method=method, progress=True)
    name = "samples_one_step" if steps == 1 else f"samples_{steps}_step_{method or model.sampler_settings['method']}"
    return {name: samples_grid(images)}
