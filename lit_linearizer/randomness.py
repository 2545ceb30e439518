"""Reproducible randomness for training and evaluation.

- Evaluation noise is a function of the *sample*: each validation image's noise comes from a
  generator seeded by (seed, sample index). The metrics of a checkpoint are then the same
  whether one process or eight evaluate it, and whichever batch a sample lands in.
- Training noise comes from the module's own generator, seeded with (seed, rank) so that DDP
  ranks draw different noise, and saved in checkpoints so that a resumed run continues the
  same stream.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

_STRIDE = 1_000_003  # a prime: (seed, index) pairs map to distinct generator seeds


def _per_sample(indices: Tensor, seed: int, draw) -> Tensor:
    return torch.stack([draw(torch.Generator().manual_seed(seed * _STRIDE + int(i))) for i in indices.tolist()])


def per_sample_normal(
    indices: Tensor, shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """``(len(indices), *shape)`` standard normal noise; row i depends only on (seed, indices[i])."""
    return _per_sample(indices, seed, lambda g: torch.randn(tuple(shape), generator=g, dtype=dtype)).to(device)


def per_sample_uniform(
    indices: Tensor, shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """``(len(indices), *shape)`` U(0, 1) values; row i depends only on (seed, indices[i])."""
    return _per_sample(indices, seed, lambda g: torch.rand(tuple(shape), generator=g, dtype=dtype)).to(device)
