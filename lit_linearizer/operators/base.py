"""The latent operator A: the one linear piece of a Linearizer.

An operator maps flattened latents ``(B, N) -> (B, M)``. Every operator can

- apply itself (``forward``) and its transpose (``transpose``) to a batch,
- return its dense ``(M, N)`` matrix (``matrix``; meant for small N),
- return its Moore-Penrose pseudo-inverse as another operator (``pseudo_inverse``).

``pinv_is_cheap`` says whether ``pseudo_inverse`` has a closed form that avoids a dense SVD.
Operators without one fall back to ``torch.linalg.pinv`` of the dense matrix: exact, but
O(N^3) time and O(N^2) memory.

A time-conditioned operator (``time_conditioned = True``) takes ``t``: a float or a ``(B,)``
tensor. The others accept and ignore it, so callers can pass ``t`` uniformly.

Operators combine with ``@`` (product), ``+``, ``-`` and scalar ``*``, and every combination
is again an operator.

The algebra (``matrix``, ``pseudo_inverse``, ``at_time``, ``grid_factors``, ``grid_spectrum``, in every subclass)
runs with autocast off, in the operator's own dtype, whatever the ambient ``torch.autocast``
(see ``lit_linearizer.operators.precision``); ``forward``/``transpose`` follow the autocast.
A pseudo-inverse is a value: detached, owning its tensors.
"""

from __future__ import annotations

from operator import index
from typing import Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.operators.precision import autocast_off

# Methods that are linear algebra, not a forward pass: autocast is turned off around them in
# every subclass that defines them (so new operators get exact algebra without remembering to).
ALGEBRA_METHODS = ("matrix", "pseudo_inverse", "at_time", "grid_factors", "grid_spectrum")


def as_integer(value, what: str) -> int:
    """``value`` as an int (anything with ``__index__``, not a bool), else a one-line TypeError
    starting with ``what`` (which names the argument and what is allowed)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return index(value)
    except TypeError:
        raise TypeError(f"{what}, got {value!r} ({type(value).__name__})") from None


class LatentOperator(nn.Module):
    """Base class. Subclasses set ``in_features``/``out_features`` and implement ``forward`` and ``transpose``."""

    time_conditioned: bool = False
    pinv_is_cheap: bool = False

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ALGEBRA_METHODS:
            if name in cls.__dict__ and callable(cls.__dict__[name]):
                setattr(cls, name, autocast_off(cls.__dict__[name]))

    # -- to implement -------------------------------------------------------------------------
    def forward(self, z: Tensor, t: float | Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def transpose(self, z: Tensor, t: float | Tensor | None = None) -> Tensor:
        raise NotImplementedError

    # -- shared behaviour ---------------------------------------------------------------------
    @property
    def is_square(self) -> bool:
        return self.in_features == self.out_features

    def check_input(self, z: Tensor, features: int | None = None, what: str = "input") -> None:
        features = self.in_features if features is None else features
        if z.dim() != 2 or z.shape[1] != features:
            raise ValueError(
                f"{type(self).__name__} expects {what} of shape (B, {features}), got {tuple(z.shape)}"
            )

    def _reference_tensor(self) -> Tensor:
        for tensor in [*self.parameters(), *self.buffers()]:
            if tensor.is_floating_point():
                return tensor
        return torch.zeros(())

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the operator's tensors; None for an operator without any (e.g. the identity)."""
        for tensor in [*self.parameters(), *self.buffers()]:
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    @autocast_off
    def matrix(self, t: float | None = None) -> Tensor:
        """The dense ``(out_features, in_features)`` matrix, built by applying A to the identity."""
        ref = self._reference_tensor()
        eye = torch.eye(self.in_features, dtype=ref.dtype, device=ref.device)
        return self.forward(eye, t).T

    @autocast_off
    def pseudo_inverse(self, t: float | None = None) -> "LatentOperator":
        """A^+ as an operator. Base implementation: dense SVD (exact, O(N^3))."""
        return DenseOperator.from_matrix(torch.linalg.pinv(self.matrix(t)))

    @autocast_off
    def at_time(self, t: float) -> "LatentOperator":
        """This operator with ``t`` fixed; time-independent operators return themselves."""
        return self

    def numel(self) -> int:
        """Number of stored tensor elements (parameters and buffers): the operator's memory."""
        return sum(p.numel() for p in self.parameters()) + sum(b.numel() for b in self.buffers())

    # -- algebra ------------------------------------------------------------------------------
    def __matmul__(self, other: "LatentOperator") -> "LatentOperator":
        return ProductOperator([self, other])

    def __add__(self, other: "LatentOperator") -> "LatentOperator":
        return LinearCombination([1.0, 1.0], [self, other])

    def __sub__(self, other: "LatentOperator") -> "LatentOperator":
        return LinearCombination([1.0, -1.0], [self, other])

    def __rmul__(self, scalar: float) -> "LatentOperator":
        return LinearCombination([float(scalar)], [self])

    def __mul__(self, scalar: float) -> "LatentOperator":
        return self.__rmul__(scalar)

    def __neg__(self) -> "LatentOperator":
        return self.__rmul__(-1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class IdentityOperator(LatentOperator):
    """A = I."""

    pinv_is_cheap = True

    def __init__(self, features: int):
        super().__init__(features, features)

    def forward(self, z, t=None):
        self.check_input(z)
        return z

    def transpose(self, z, t=None):
        self.check_input(z)
        return z

    def pseudo_inverse(self, t=None):
        return self


class ProductOperator(LatentOperator):
    """``A_1 A_2 ... A_k``: applies the *last* factor first, like matrix multiplication."""

    def __init__(self, factors: Sequence[LatentOperator]):
        factors = list(factors)
        if not factors:
            raise ValueError("ProductOperator needs at least one factor")
        for left, right in zip(factors[:-1], factors[1:]):
            if left.in_features != right.out_features:
                raise ValueError(
                    f"cannot multiply operators: {type(left).__name__} takes {left.in_features} features "
                    f"but {type(right).__name__} returns {right.out_features}"
                )
        super().__init__(factors[-1].in_features, factors[0].out_features)
        self.factors = nn.ModuleList(factors)
        self.time_conditioned = any(f.time_conditioned for f in factors)

    def forward(self, z, t=None):
        for factor in reversed(self.factors):
            z = factor(z, t)
        return z

    def transpose(self, z, t=None):
        for factor in self.factors:
            z = factor.transpose(z, t)
        return z

    def at_time(self, t):
        return ProductOperator([f.at_time(t) for f in self.factors])


class LinearCombination(LatentOperator):
    """``sum_i c_i A_i`` for operators of equal shape (e.g. interpolated styles)."""

    def __init__(self, coefficients: Sequence[float] | Tensor, operators: Sequence[LatentOperator]):
        operators = list(operators)
        if len(operators) == 0 or len(coefficients) != len(operators):
            raise ValueError(
                f"LinearCombination needs one coefficient per operator, got {len(coefficients)} and {len(operators)}"
            )
        shapes = {(op.out_features, op.in_features) for op in operators}
        if len(shapes) != 1:
            raise ValueError(f"cannot add operators of different shapes (out, in): {sorted(shapes)}")
        super().__init__(operators[0].in_features, operators[0].out_features)
        self.operators = nn.ModuleList(operators)
        # Python floats, not a buffer: a float32 buffer would round 0.3 before a float64 run.
        self.coefficients = [float(c) for c in coefficients]
        self.time_conditioned = any(op.time_conditioned for op in operators)

    def forward(self, z, t=None):
        return sum(c * op(z, t) for c, op in zip(self.coefficients, self.operators))

    def transpose(self, z, t=None):
        return sum(c * op.transpose(z, t) for c, op in zip(self.coefficients, self.operators))

    def at_time(self, t):
        return LinearCombination(self.coefficients, [op.at_time(t) for op in self.operators])


# Here, not in a module of its own: the default pseudo-inverse of every operator is a DenseOperator,
# and two modules would otherwise import each other.
class DenseOperator(LatentOperator):
    """``A z`` with a learnable ``(out_features, in_features)`` matrix.

    ``init="identity"`` starts at I (padded or cropped when not square), ``"random"`` at a
    Gaussian matrix scaled by ``1/sqrt(in_features)``. The pseudo-inverse is exact (SVD) but
    not cheap.
    """

    def __init__(self, in_features: int, out_features: int | None = None, init: str = "identity"):
        out_features = in_features if out_features is None else out_features
        super().__init__(in_features, out_features)
        if init == "identity":
            weight = torch.eye(out_features, in_features)
        elif init == "random":
            weight = torch.randn(out_features, in_features) / in_features**0.5
        else:
            raise ValueError(f"unknown init {init!r}; use 'identity' or 'random'")
        self.weight = nn.Parameter(weight)

    @classmethod
    def from_matrix(cls, matrix: Tensor, trainable: bool = False) -> "DenseOperator":
        op = cls(matrix.shape[1], matrix.shape[0])
        op.weight = nn.Parameter(matrix.detach().clone(), requires_grad=trainable)
        return op

    def forward(self, z, t=None):
        self.check_input(z)
        return z @ self.weight.T

    def transpose(self, z, t=None):
        self.check_input(z, self.out_features)
        return z @ self.weight

    def matrix(self, t=None):
        return self.weight
