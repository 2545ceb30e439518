"""The Linearizer ``f(x) = g_y^-1(A g_x(x))`` and the linear algebra it inherits from A."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.induced_space import InducedSpace
from lit_linearizer.operators.base import IdentityOperator, LatentOperator, ProductOperator
from lit_linearizer.operators.dense import DenseOperator


@dataclass
class LinearizerSVD:
    """Singular values of f and its singular vectors in the induced spaces.

    ``f(x) = (+)_i [s_i <x, x_vectors[i]>_gx] (.) y_vectors[i]``, with ``x_vectors[i] = g_x^-1(v_i)``
    and ``y_vectors[i] = g_y^-1(u_i)`` for ``A = U diag(s) V^T``.
    """

    singular_values: Tensor
    x_vectors: Tensor
    y_vectors: Tensor


def _shape_of(g: InvertibleModule) -> tuple[int, ...] | None:
    shape = getattr(g, "in_shape", None) or getattr(getattr(g, "flow", None), "in_shape", None)
    return None if shape is None else tuple(shape)


def _numel(shape: Sequence[int]) -> int:
    return int(torch.tensor(list(shape)).prod())


class Linearizer(nn.Module):
    """``f(x) = g_y^-1(A g_x(x))``: nonlinear in pixels, exactly linear between induced spaces.

    Args:
        g_x: invertible network on inputs (shape ``x_shape``).
        A: a LatentOperator, or a ``(M, N)`` tensor (wrapped as a fixed DenseOperator).
        g_y: invertible network on outputs; defaults to ``g_x``.
        x_shape, y_shape: per-sample shapes of inputs and outputs. Default: the networks'
            ``in_shape`` when they have one; for a square A, outputs take the inputs' shape.

    Time-conditioned operators take ``t`` in every method; the algebra then acts on ``A_t``.
    """

    def __init__(
        self,
        g_x: InvertibleModule,
        A: LatentOperator | Tensor,
        g_y: InvertibleModule | None = None,
        x_shape: Sequence[int] | None = None,
        y_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        if isinstance(A, Tensor):
            if A.dim() != 2:
                raise ValueError(f"A must be a LatentOperator or a 2-D matrix, got a tensor of shape {tuple(A.shape)}")
            A = DenseOperator.from_matrix(A)
        if not isinstance(A, LatentOperator):
            raise TypeError(f"A must be a LatentOperator or a tensor, got {type(A).__name__}")
        self.g_x = g_x
        self.A = A
        self.g_y = g_x if g_y is None else g_y
        self.x_shape = tuple(x_shape) if x_shape is not None else _shape_of(self.g_x)
        self.y_shape = tuple(y_shape) if y_shape is not None else _shape_of(self.g_y)
        if A.is_square and self.x_shape is not None and self.y_shape is None:
            self.y_shape = self.x_shape
        if A.is_square and self.y_shape is not None and self.x_shape is None:
            self.x_shape = self.y_shape
        for name, shape, features in (("x", self.x_shape, A.in_features), ("y", self.y_shape, A.out_features)):
            if shape is not None and _numel(shape) != features:
                raise ValueError(
                    f"{name}-space shape {shape} has {_numel(shape)} values but the operator's "
                    f"{'input' if name == 'x' else 'output'} has {features} features"
                )
        if not A.is_square and (self.x_shape is None or self.y_shape is None):
            raise ValueError(
                f"A maps {A.in_features} -> {A.out_features} features: pass x_shape and y_shape "
                "(or use networks with an in_shape)"
            )

    # -- spaces ----------------------------------------------------------------------------
    @property
    def x_space(self) -> InducedSpace:
        return InducedSpace(self.g_x, self.x_shape)

    @property
    def y_space(self) -> InducedSpace:
        return InducedSpace(self.g_y, self.y_shape)

    def _out_shape(self, shape: tuple[int, ...] | None, inputs: Tensor) -> tuple[int, ...]:
        # Only reachable with a square A whose networks have no in_shape (e.g. IdentityFlow).
        return shape if shape is not None else tuple(inputs.shape[1:])

    def _encode(self, space: InducedSpace, v: Tensor, features: int) -> Tensor:
        z = space.encode(v)
        if z.shape[1] != features:
            raise ValueError(f"inputs of shape {tuple(v.shape)} give {z.shape[1]} latent features; the operator expects {features}")
        return z

    # -- the map and its relatives ------------------------------------------------------------
    def forward(self, x: Tensor, t: float | Tensor | None = None) -> Tensor:
        """``f(x) = g_y^-1(A g_x(x))``."""
        z = self.A(self._encode(self.x_space, x, self.A.in_features), t)
        return self.y_space.decode(z, self._out_shape(self.y_shape, x))

    def transpose(self, y: Tensor, t: float | Tensor | None = None) -> Tensor:
        """The adjoint for the induced inner products: ``<f(x), y>_gy = <x, f^T(y)>_gx``."""
        z = self.A.transpose(self._encode(self.y_space, y, self.A.out_features), t)
        return self.x_space.decode(z, self._out_shape(self.x_shape, y))

    def pinv(self, y: Tensor, t: float | None = None) -> Tensor:
        """Moore-Penrose pseudo-inverse ``f^+(y) = g_x^-1(A^+ g_y(y))``."""
        z = self.A.pseudo_inverse(t)(self._encode(self.y_space, y, self.A.out_features))
        return self.x_space.decode(z, self._out_shape(self.x_shape, y))

    def svd(self, k: int | None = None, t: float | None = None) -> LinearizerSVD:
        """Top-``k`` singular triplets (all when ``k`` is None) from the dense SVD of A."""
        if self.x_shape is None or self.y_shape is None:
            raise ValueError("svd needs x_shape and y_shape; build the Linearizer with them")
        u, s, vh = torch.linalg.svd(self.A.matrix(t), full_matrices=False)
        k = s.shape[0] if k is None else k
        if not 0 < k <= s.shape[0]:
            raise ValueError(f"k must be in [1, {s.shape[0]}], got {k}")
        return LinearizerSVD(
            singular_values=s[:k],
            x_vectors=self.x_space.decode(vh[:k]),
            y_vectors=self.y_space.decode(u[:, :k].T),
        )

    # -- algebra on Linearizers --------------------------------------------------------------
    def compose(self, other: "Linearizer") -> "Linearizer":
        """``self o other`` (apply ``other`` first): a Linearizer with core ``A_self A_other``.

        Needs ``other``'s output network to be this one's input network, so that the two
        inner networks cancel: ``g_x^-1`` of ``self`` meets ``g_y`` of ``other``.
        """
        if not self.g_x.same_as(other.g_y):
            raise ValueError(
                "cannot compose: the first Linearizer's output network g_y is not the second's input network g_x "
                "(composition needs a shared middle network)"
            )
        return Linearizer(other.g_x, ProductOperator([self.A, other.A]), self.g_y, other.x_shape, self.y_shape)

    def power(self, n: int) -> "Linearizer":
        """``f^n``: n applications for n >= 1, the identity for n = 0, powers of f^-1 for n < 0."""
        if not self.g_x.same_as(self.g_y) or not self.A.is_square:
            raise ValueError("power needs g_x and g_y to be the same network and a square A")
        if n == 0:
            core: LatentOperator = IdentityOperator(self.A.in_features)
        else:
            base = self.A if n > 0 else self._inverse_operator()
            core = base if abs(n) == 1 else ProductOperator([base] * abs(n))
        return Linearizer(self.g_x, core, self.g_y, self.x_shape, self.y_shape)

    def _inverse_operator(self) -> LatentOperator:
        matrix = self.A.matrix()
        rank = int(torch.linalg.matrix_rank(matrix))
        if rank < matrix.shape[0]:
            raise ValueError(
                f"power(-n) needs an invertible A, but A ({matrix.shape[0]}x{matrix.shape[1]}) has rank {rank}; "
                "use pinv for the pseudo-inverse"
            )
        return DenseOperator.from_matrix(torch.linalg.inv(matrix))
