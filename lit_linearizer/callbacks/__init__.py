"""Callbacks: stop-checkpoint-requeue on preemption signals."""

from lit_linearizer.callbacks.preemption import RequeueOnSignal

__all__ = ["RequeueOnSignal"]
