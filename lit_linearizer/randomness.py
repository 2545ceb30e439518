"""Reproducible randomness for training and evaluation.

- Evaluation noise is a function of the *sample*: each validation image's noise comes from a
  generator seeded by (seed, sample index). The metrics of a checkpoint are then the same
  whether one process or eight evaluate it, and whichever batch a sample lands in.
- Training noise comes from the module's own generator, seeded with (seed, rank) so that DDP
  ranks draw different noise, and saved in checkpoints (every rank's) so that each rank of a
  resumed run continues its own stream.
- A compiled training step cannot draw from a generator (``torch.compile`` breaks the graph there):
  ``recording`` notes the draws of one eager step and ``draw_ahead`` makes the same draws, in the same
  order from the same generator, before the compiled step runs (the values do not change).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["AHEAD_KEY", "NoiseStreams", "noise_batches", "per_sample_normal", "per_sample_uniform"]

AHEAD_KEY = "_training_noise"  # the batch key of noise drawn ahead (stream -> tensor)

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


class NoiseStreams:
    """A module's noise: training draws from one generator, evaluation per sample (see the module docstring).

    Args:
        seed: the run's seed; the training generator is seeded with ``(seed, rank)`` and evaluation
            stream ``k`` with ``(seed, k)``.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.generator: torch.Generator | None = None
        self._restored: dict | None = None
        self.plan: list[tuple[int, object, tuple[int, ...]]] | None = None  # draws of a recorded step
        self._recording: list | None = None

    def start(self, device: torch.device, rank: int) -> None:
        """Create the training generator on ``device`` (when fit starts): the restored state, else seeded."""
        generator = torch.Generator(device=device)
        restored = self._restored
        if isinstance(restored, (list, tuple)):  # one state per rank (in rank order): this rank's own
            restored = restored[rank] if rank < len(restored) else None
        elif rank != 0:  # a single state is rank zero's: the other ranks must not repeat its stream
            restored = None
        if restored is not None and restored["device_type"] == device.type:
            generator.set_state(restored["state"].clone())  # a fresh tensor: set_state ignores view offsets
        else:
            generator.manual_seed(self.seed * 7919 + rank)
        self.generator = generator

    def state(self) -> dict | None:
        """The training generator's state, for checkpoints (None before fit starts)."""
        generator = self.generator
        return None if generator is None else {"device_type": generator.device.type, "state": generator.get_state()}

    def restore(self, state: dict | list | None) -> None:
        """Continue from a checkpoint's ``state()`` when ``start`` runs: one state (rank zero's) or a list with
        one per rank, in rank order. A state of another device type, or none for this rank, starts afresh."""
        self._restored = state

    def stream_seed(self, stream: int) -> int:
        return (self.seed + 1) * 1009 + stream

    def normal(self, batch: Mapping[str, Tensor], shape: Sequence[int], stream: int, training: bool) -> Tensor:
        """Standard normal ``(B, *shape)``: from the generator when ``training`` (and started), else per sample."""
        return self._draw(batch, shape, stream, training, torch.randn, per_sample_normal)

    def uniform(self, batch: Mapping[str, Tensor], shape: Sequence[int], stream: int, training: bool) -> Tensor:
        """U(0, 1) values ``(B, *shape)``, drawn like ``normal``."""
        return self._draw(batch, shape, stream, training, torch.rand, per_sample_uniform)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Note the training draws made inside (one eager step) as ``plan``, for ``draw_ahead``."""
        self._recording = []
        try:
            yield
        finally:
            plan, self._recording = self._recording, None
        streams = [stream for stream, _, _ in plan]
        if len(set(streams)) != len(streams):
            raise RuntimeError(f"a training step drew a noise stream twice ({streams}): it cannot be drawn ahead")
        self.plan = plan

    def draw_ahead(self, batch: Mapping[str, Tensor]) -> dict:
        """``batch`` with this step's training noise (the recorded ``plan``) drawn now, under ``AHEAD_KEY``.

        ``normal``/``uniform`` then return these tensors instead of drawing: the same values, in the same
        order from the same generator, as the eager step would draw, so a compiled step draws nothing."""
        if self.plan is None or self.generator is None:
            raise RuntimeError("draw_ahead needs a started generator and a recorded step (NoiseStreams.recording)")
        like = batch["image"]
        ahead = {stream: self._sample(sample, like, shape) for stream, sample, shape in self.plan}
        return {**batch, AHEAD_KEY: ahead}

    def _sample(self, sample, like: Tensor, shape: Sequence[int]) -> Tensor:
        generator = self.generator
        values = sample((like.shape[0], *shape), generator=generator, dtype=like.dtype, device=generator.device)
        return values.to(like.device)

    def _draw(self, batch, shape, stream, training, sample, per_sample) -> Tensor:
        like = batch["image"]
        if training and self.generator is not None:
            ahead = batch.get(AHEAD_KEY)
            if ahead is not None:
                return ahead[stream]
            if self._recording is not None:
                self._recording.append((stream, sample, tuple(shape)))
            return self._sample(sample, like, shape)
        return per_sample(batch["index"], shape, self.stream_seed(stream), like.dtype, like.device)


def noise_batches(
    n: int, batch_size: int, shape: Sequence[int], seed: int, dtype: torch.dtype, device: torch.device | str
) -> Iterator[Tensor]:
    """The per-sample-seeded noise of samples 0..n-1 (``per_sample_normal``), ``batch_size`` samples at a time:
    sample i gets the same noise whatever the batch size."""
    for start in range(0, n, batch_size):
        yield per_sample_normal(torch.arange(start, min(n, start + batch_size)), shape, seed, dtype, device)
