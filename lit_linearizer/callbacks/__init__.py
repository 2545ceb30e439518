"""Callbacks: checkpoint, stop and requeue on SIGTERM and preemption signals."""

from lit_linearizer.callbacks.preemption import INTERRUPTED_CHECKPOINT, PreemptionCheckpoint

__all__ = ["INTERRUPTED_CHECKPOINT", "PreemptionCheckpoint"]
