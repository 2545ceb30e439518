"""`linearizer sample` for the idempotent Linearizer: noise, validation images or image files, projected; or
single samples from noise in batches."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from lit_linearizer.applications.idempotent.grids import input_grids, projection_grid, samples_grid
from lit_linearizer.applications.idempotent.model import IdempotentModel
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import to_unit_range
from lit_linearizer.randomness import noise_batches

__all__ = ["SOURCES", "sample", "sample_batches"]

SOURCES = ("noise", "data", "file")


def sample(
    model: IdempotentModel,
    inputs,
    n: int = 64,
    seed: int = 0,
    source: str = "noise",
    input: str | Sequence[str] | None = None,  # noqa: A002 (the CLI option's name)
    **_,
) -> dict[str, Tensor]:
    """Grids of inputs, f(inputs), f(f(inputs)) for ``source=noise|data|file``.

    ``noise``: n Gaussian inputs (grids ``noise`` and ``samples``, the latter f(noise) alone);
    ``data``: n validation images of the checkpoint's data (grids ``data`` and ``corrupted``);
    ``file``: the image file(s) ``input``, resized to the model's shape (grid ``file``).
    ``inputs`` is the command's reader (``tasks/inputs.py``): ``validation_images(n)``, ``image_file(path, shape)``.
    """
    n = int(n)
    if n < 1:
        raise ConfigError(f"n={n}: ask for at least one sample")
    reference = next(model.parameters())
    if source == "noise":
        noise, samples = model.generate(n, seed)
        return {"noise": projection_grid(model, noise), "samples": samples_grid(samples)}
    if source == "data":
        images = inputs.validation_images(n)
        if tuple(images.shape[1:]) != model.image_shape:
            shape = tuple(images.shape[1:])
            raise ConfigError(f"the data has images of shape {shape} but the model expects {model.image_shape}")
        return input_grids(model, images=images.to(reference.device, reference.dtype), seed=seed)
    if source == "file":
        if input is None or input == "":
            raise ConfigError("source=file needs input=<image file> (or input=[a.png,b.png])")
        paths = list(input) if isinstance(input, (list, tuple)) else [input]
        images = [inputs.image_file(path, model.image_shape) for path in paths]
        return {"file": projection_grid(model, torch.stack(images).to(reference.device, reference.dtype))}
    raise ConfigError(f"source={source!r} is not one of {', '.join(SOURCES)}")


def sample_batches(
    model: IdempotentModel, inputs=None, n: int = 64, seed: int = 0, source: str = "noise", batch_size: int = 256, **_
) -> tuple[str, Iterator[Tensor]]:
    """``n`` samples f(noise) as batches of at most ``batch_size`` images in [0, 1], drawn one batch at a time
    (any ``n`` fits in memory), named ``samples``. Sample i is f of the same noise as in ``sample``'s grids."""
    n, batch_size = int(n), int(batch_size)
    if source != "noise":
        raise ConfigError(f"source={source!r}: single-image export writes samples from noise (source=noise)")
    if n < 1 or batch_size < 1:
        raise ConfigError(f"n={n}, batch_size={batch_size}: both must be at least 1")

    def batches() -> Iterator[Tensor]:
        reference = next(model.parameters())
        for noise in noise_batches(n, batch_size, model.image_shape, seed, reference.dtype, reference.device):
            with torch.no_grad():
                images = to_unit_range(model.project(model.noise_std * noise))
            yield images

    return "samples", batches()
