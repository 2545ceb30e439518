"""Latent operators A. Which have an exact, cheap pseudo-inverse (``pinv_is_cheap``):

| operator | pseudo-inverse |
|---|---|
| IdentityOperator, DiagonalProjection, OrthogonalProjection | itself |
| ObliqueProjection (``U V^T``, ``V^T U = I``) | ``V (V^T V)^{-1} U^T``, factored |
| DiagonalOperator | ``diag(1/d_i)`` on the nonzero entries |
| ScalarPlusLowRank, TimeLowRankOperator (at a fixed t) | Woodbury, or QR when s = 0 |
| GaussianTransportOperator (closed-form flow-matching fit, fixed t) | dense SVD; its collapsed B: Woodbury or QR |
| DenseOperator, the latent convolutions, SqueezedOperator, products, combinations | dense SVD (exact, O(N^3)) |

Style transfer's operator families and their use at other image sizes: ``operators/style.py``.
"""

from lit_linearizer.operators.bank import OperatorBank
from lit_linearizer.operators.base import (
    DenseOperator,
    IdentityOperator,
    LatentOperator,
    LinearCombination,
    ProductOperator,
)
from lit_linearizer.operators.convolution import DepthwiseConvOperator, LatentConvolution, LatentConvOperator
from lit_linearizer.operators.diagonal import DiagonalOperator, DiagonalProjection
from lit_linearizer.operators.factored import ScalarPlusLowRank
from lit_linearizer.operators.gaussian_transport import GaussianTransportOperator, LatentMoments, fit_gaussian_transport
from lit_linearizer.operators.oblique import ObliqueProjection
from lit_linearizer.operators.projection import OrthogonalProjection
from lit_linearizer.operators.squeezed import SqueezedOperator
from lit_linearizer.operators.style import operator_at_shape, style_operator
from lit_linearizer.operators.time_low_rank import TimeLowRankOperator, sinusoidal_embedding

__all__ = [
    "DenseOperator",
    "DepthwiseConvOperator",
    "DiagonalOperator",
    "DiagonalProjection",
    "GaussianTransportOperator",
    "IdentityOperator",
    "LatentConvOperator",
    "LatentConvolution",
    "LatentMoments",
    "LatentOperator",
    "LinearCombination",
    "ObliqueProjection",
    "OperatorBank",
    "OrthogonalProjection",
    "ProductOperator",
    "ScalarPlusLowRank",
    "SqueezedOperator",
    "TimeLowRankOperator",
    "operator_at_shape",
    "fit_gaussian_transport",
    "sinusoidal_embedding",
    "style_operator",
]
