"""Config checks every application runs: the operator's size against the images, and the names of loss weights."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from lit_linearizer.errors import ConfigError
from lit_linearizer.operators.base import LatentOperator

__all__ = ["check_operator_features", "merged_loss_weights", "merged_settings"]


def check_operator_features(operator: LatentOperator, image_shape: Sequence[int]) -> None:
    """The operator must act on as many latent values as an image has (a one-line ConfigError otherwise).

    Example:
        >>> from lit_linearizer.operators import DiagonalOperator
        >>> check_operator_features(DiagonalOperator(64), (1, 8, 8))
        >>> check_operator_features(DiagonalOperator(63), (1, 8, 8))
        Traceback (most recent call last):
        ...
        lit_linearizer.errors.ConfigError: model.operator has 63 features but images have 64 values (1, 8, 8)
    """
    features = math.prod(image_shape)
    if operator.in_features != features:
        raise ConfigError(
            f"model.operator has {operator.in_features} features but images have {features} values {tuple(image_shape)}"
        )


def merged_loss_weights(given: Mapping[str, float] | None, defaults: Mapping[str, float]) -> dict[str, float]:
    """``defaults`` updated with ``given`` (as floats); an unknown name is a one-line ConfigError.

    Example:
        >>> merged_loss_weights({"b": 2}, {"a": 1.0, "b": 0.0})
        {'a': 1.0, 'b': 2.0}
    """
    return {k: float(v) for k, v in merged_settings("loss_weights", given, defaults).items()}


def merged_settings(name: str, given: Mapping | None, defaults: Mapping) -> dict:
    """``defaults`` updated with ``given``, the settings ``model.<name>``; an unknown key is a one-line ConfigError.

    Example:
        >>> merged_settings("transport", {"rank": 64}, {"rank": 512, "batch_size": 500})
        {'rank': 64, 'batch_size': 500}
    """
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown model.{name} keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **dict(given or {})}
