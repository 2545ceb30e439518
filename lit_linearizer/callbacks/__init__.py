"""Callbacks: EMA of the weights, sample grids, checkpoint metadata, and stopping cleanly on preemption signals."""

from lit_linearizer.callbacks.checkpoint_metadata import CheckpointMetadata
from lit_linearizer.callbacks.ema import ExponentialMovingAverage
from lit_linearizer.callbacks.preemption import INTERRUPTED_CHECKPOINT, PreemptionCheckpoint
from lit_linearizer.callbacks.sample_grids import SampleGridWriter

__all__ = [
    "INTERRUPTED_CHECKPOINT",
    "CheckpointMetadata",
    "ExponentialMovingAverage",
    "PreemptionCheckpoint",
    "SampleGridWriter",
]
