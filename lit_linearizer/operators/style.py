"""Style operators: the families a style's ``A_s`` can take (``style_operator``), and any of them at other sizes.

Example:
    >>> op = style_operator("depthwise", (3, 8, 8), kernel_size=3, squeeze=True)
    >>> type(op).__name__, type(op.inner).__name__, op.inner.latent_shape
    ('SqueezedOperator', 'DepthwiseConvOperator', (12, 4, 4))
    >>> operator_at_shape(op, (3, 16, 12)).in_features  # the same kernel on 16 x 12 images
    576
"""

from __future__ import annotations

import math
from typing import Sequence

from lit_linearizer.errors import ConfigError
from lit_linearizer.operators.base import (
    DenseOperator,
    IdentityOperator,
    LatentOperator,
    LinearCombination,
    ProductOperator,
)
from lit_linearizer.operators.convolution import DepthwiseConvOperator, LatentConvolution, LatentConvOperator
from lit_linearizer.operators.diagonal import DiagonalOperator
from lit_linearizer.operators.squeezed import SqueezedOperator

__all__ = ["MAX_DENSE_FEATURES", "OPERATOR_FAMILIES", "operator_at_shape", "style_operator"]

OPERATOR_FAMILIES = ("depthwise", "conv", "dense", "diagonal")
MAX_DENSE_FEATURES = 4096  # a dense operator stores features^2 floats per style (64 MiB at 4096)


def style_operator(
    family: str, latent_shape: Sequence[int], kernel_size: int = 5, squeeze: bool = False
) -> LatentOperator:
    """One style's operator, starting at the identity. ``family``: see OPERATOR_FAMILIES.

    ``squeeze``: apply it on the 2x2 space-to-depth view of the latent (``SqueezedOperator``).
    """
    if squeeze:
        c, h, w = (int(s) for s in latent_shape)
        if h % 2 or w % 2:
            raise ConfigError(f"model.operator.factory.squeeze=true needs even image sides, got {tuple(latent_shape)}")
        return SqueezedOperator(style_operator(family, (4 * c, h // 2, w // 2), kernel_size), latent_shape)
    features = math.prod(latent_shape)
    if family == "depthwise":
        return DepthwiseConvOperator(latent_shape, kernel_size)
    if family == "conv":
        return LatentConvOperator(latent_shape, kernel_size)
    if family == "dense":
        if features > MAX_DENSE_FEATURES:
            raise ConfigError(
                f"a dense style operator on {features} latent values needs {features}^2 floats per style; "
                f"use it for latents up to {MAX_DENSE_FEATURES} values (e.g. 3x32x32), or family=depthwise"
            )
        return DenseOperator(features)
    if family == "diagonal":
        return DiagonalOperator(features)
    raise ConfigError(f"model.operator.factory.family={family!r} is not one of {OPERATOR_FAMILIES}")


def operator_at_shape(operator: LatentOperator, latent_shape: Sequence[int]) -> LatentOperator:
    """The same operator on a latent grid of another size, sharing its parameters.

    Works for the convolutional families and for sums/products of them; operators tied to one
    size (dense, diagonal) raise a ConfigError.
    """
    latent_shape = tuple(int(s) for s in latent_shape)
    features = math.prod(latent_shape)
    if operator.in_features == features and getattr(operator, "latent_shape", latent_shape) == latent_shape:
        return operator
    if latent_shape[1] % 2 or latent_shape[2] % 2:
        raise ConfigError(f"images of shape {latent_shape}: the sides must be even")
    if isinstance(operator, LatentConvolution):
        if operator.latent_shape[0] != latent_shape[0]:
            raise ConfigError(
                f"the operator has {operator.latent_shape[0]} latent channels, the input {latent_shape[0]}"
            )
        return operator.at_shape(latent_shape)
    if isinstance(operator, SqueezedOperator):
        c, h, w = latent_shape
        return SqueezedOperator(operator_at_shape(operator.inner, (4 * c, h // 2, w // 2)), latent_shape)
    if isinstance(operator, LinearCombination):
        operators = [operator_at_shape(op, latent_shape) for op in operator.operators]
        return LinearCombination(operator.coefficients, operators)
    if isinstance(operator, ProductOperator):
        return ProductOperator([operator_at_shape(op, latent_shape) for op in operator.factors])
    if isinstance(operator, IdentityOperator):
        return IdentityOperator(features)
    raise ConfigError(
        f"{type(operator).__name__} is tied to latents of {operator.in_features} values; images must have the "
        "training size (a convolutional operator family works at any size)"
    )
