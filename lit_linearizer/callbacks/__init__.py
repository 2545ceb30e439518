"""Callbacks: EMA of the weights; checkpoint, stop and requeue on SIGTERM and preemption signals."""

from lit_linearizer.callbacks.ema import ExponentialMovingAverage
from lit_linearizer.callbacks.preemption import INTERRUPTED_CHECKPOINT, PreemptionCheckpoint

__all__ = ["ExponentialMovingAverage", "INTERRUPTED_CHECKPOINT", "PreemptionCheckpoint"]
