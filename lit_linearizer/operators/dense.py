"""A dense matrix operator: any linear map, for latents small enough to hold N x M floats.

The class is defined in ``operators/base.py`` (every operator's default pseudo-inverse is one, so the
two modules would import each other); this module keeps its import path.
"""

from lit_linearizer.operators.base import DenseOperator

__all__ = ["DenseOperator"]
