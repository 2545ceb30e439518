"""Exact algebra under any ambient ``torch.autocast``.

``torch.autocast`` silently runs matrix products (and ``linalg.pinv``) in bfloat16/float16. That
is what a training step wants for its forward pass, but not what the linear algebra wants: a
pseudo-inverse, a collapsed sampling matrix B or an SVD computed in bf16 is off by 1e-2 and
comes back in the wrong dtype. Everything decorated with ``autocast_off`` (operators' ``matrix``,
``pseudo_inverse``, ``at_time``, ``grid_factors``; ``integrate`` and ``collapse``; the
Linearizer's ``transpose``, ``pinv``, ``svd``, ``power``, ``compose``, ``at_time``; the induced
spaces' vector-space operations) therefore runs with autocast disabled, in the dtype of the
tensors it is given (the operator's own dtype), and returns in that dtype.

Forward passes (``A(z, t)``, ``f(x)``, ``g(x)``) are the training path and keep following the
ambient autocast.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def _autocast_device_types() -> tuple[str, ...]:
    types = []
    for device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "privateuseone"):
        try:
            if torch.amp.is_autocast_available(device_type):
                torch.is_autocast_enabled(device_type)  # some builds know a type but cannot query it
                types.append(device_type)
        except (RuntimeError, ValueError, AttributeError):
            continue
    return tuple(types)


_DEVICE_TYPES = _autocast_device_types()


def no_autocast() -> contextlib.AbstractContextManager:
    """A context in which autocast is off on every device type where it is on now."""
    enabled = [d for d in _DEVICE_TYPES if torch.is_autocast_enabled(d)]
    if not enabled:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for device_type in enabled:
        stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def autocast_off(fn: F) -> F:
    """Decorator: run ``fn`` inside ``no_autocast()``. Idempotent (wrapping twice is wrapping once)."""
    if getattr(fn, "__autocast_off__", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with no_autocast():
            return fn(*args, **kwargs)

    wrapper.__autocast_off__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
