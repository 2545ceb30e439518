"""Callbacks: EMA of the weights, sample grids, checkpoint metadata, atomic checkpoints, metric notes, and stopping on
preemption."""

from lit_linearizer.callbacks.atomic_checkpoint import AtomicCheckpointIO, RunCheckpoint
from lit_linearizer.callbacks.checkpoint_metadata import CheckpointMetadata
from lit_linearizer.callbacks.ema import ExponentialMovingAverage
from lit_linearizer.callbacks.metric_notes import MetricNotes
from lit_linearizer.callbacks.preemption import INTERRUPTED_CHECKPOINT, PreemptionCheckpoint
from lit_linearizer.callbacks.sample_grids import SampleGridWriter

__all__ = [
    "INTERRUPTED_CHECKPOINT",
    "AtomicCheckpointIO",
    "CheckpointMetadata",
    "ExponentialMovingAverage",
    "MetricNotes",
    "PreemptionCheckpoint",
    "RunCheckpoint",
    "SampleGridWriter",
]
