"""Schedules: the learning rate (a ``_partial_`` factory completed with ``total_steps``) and EMA decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_ema(decay: float):
    """EMA update with the decay warmed up as ``min(decay, (1 + n) / (10 + n))`` after n updates.

    A fixed decay of 0.999 keeps 83 % of the *initial* weights after 186 steps, which makes
    short runs sample from an untrained model; the warm-up lets the average follow the early,
    fast-moving weights and reach ``decay`` after about 10 / (1 - decay) updates.
    Signature as torch.optim.swa_utils expects of ``avg_fn``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")

    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        return effective * averaged + (1.0 - effective) * current

    return update
