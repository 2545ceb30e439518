"""The Linearizer ``f(x) = g_y^-1(A g_x(x))`` and the linear algebra it inherits from A."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.induced_space import InducedSpace, module_dtype
from lit_linearizer.operators.base import IdentityOperator, LatentOperator, ProductOperator, as_integer
from lit_linearizer.operators.dense import DenseOperator
from lit_linearizer.operators.precision import autocast_off


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


def same_network(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` compute one map: ``a.same_as(b)`` when ``a`` has it, else ``a is b``."""
    same_as = getattr(a, "same_as", None)
    return bool(same_as(b)) if callable(same_as) else a is b


def _autocast_on(tensor: Tensor) -> bool:
    return torch.is_autocast_enabled(tensor.device.type)


class Linearizer(nn.Module):
    """``f(x) = g_y^-1(A g_x(x))``: nonlinear in pixels, exactly linear between induced spaces.

    Args:
        g_x: invertible network on inputs (shape ``x_shape``).
        A: a LatentOperator, or a ``(M, N)`` tensor (wrapped as a fixed DenseOperator).
        g_y: invertible network on outputs; defaults to ``g_x``.
        x_shape, y_shape: per-sample shapes of inputs and outputs. Default: the networks'
            ``in_shape`` when they have one; for a square A, outputs take the inputs' shape.

    What the networks need: any ``nn.Module`` with ``forward(v)`` and ``inverse(z)`` (a bijection;
    an ``InvertibleModule`` is one). ``power`` and ``compose`` must also know whether two networks
    are one map (``g_x`` and ``g_y`` for a power, the middle pair for a composition): they ask
    ``g.same_as(other)`` when the network has that method (``InvertibleModule``: the same object;
    ``ConditionedFlow``: the same network and condition; ``IdentityFlow``: any identity), and
    otherwise require the very same object (``g_x is g_y``).

    Time-conditioned operators take ``t`` in every method; the algebra then acts on ``A_t``.
    ``at_time(t)`` fixes it (a time-independent Linearizer), and ``power(n, t=...)`` takes the
    power, or the inverse, of ``A_t``.

    Precision: ``forward`` (the training path) follows the ambient ``torch.autocast``; the algebra
    (``transpose``, ``pinv``, ``svd``, ``power``, ``compose``, ``at_time``) runs with autocast off,
    in the dtype of A and the networks, and returns in it. A, ``g_x`` and ``g_y`` must share one
    dtype (a mismatch raises a TypeError naming both sides).
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

    def _check_dtype(self, tensor: Tensor, tensor_name: str, dtype: torch.dtype | None, owner: str) -> None:
        """Outside autocast, ``tensor`` must have the dtype of the module it enters."""
        if dtype is None or tensor.dtype == dtype or not tensor.is_floating_point() or _autocast_on(tensor):
            return
        raise TypeError(
            f"dtype mismatch: {tensor_name} is {tensor.dtype} but {owner} is {dtype}; "
            f"put A, g_x and g_y in one dtype (e.g. f.to({dtype}))"
        )

    def _encode(self, space: InducedSpace, v: Tensor, features: int, names: tuple[str, str]) -> Tensor:
        network, value = names  # e.g. ("g_x", "x")
        self._check_dtype(v, value, module_dtype(space.g), network)
        z = space.encode(v)
        if z.shape[1] != features:
            raise ValueError(
                f"inputs of shape {tuple(v.shape)} give {z.shape[1]} latent features; the operator expects {features}"
            )
        self._check_dtype(z, f"{network}({value})", self.A.dtype, "the operator A")
        return z

    def _decode(self, space: InducedSpace, z: Tensor, shape: tuple[int, ...], names: tuple[str, str]) -> Tensor:
        network, value = names  # e.g. ("g_y", "A g_x(x)")
        self._check_dtype(z, value, module_dtype(space.g), network)
        return space.decode(z, shape)

    # -- the map and its relatives ------------------------------------------------------------
    def forward(self, x: Tensor, t: float | Tensor | None = None) -> Tensor:
        """``f(x) = g_y^-1(A g_x(x))``."""
        z = self.A(self._encode(self.x_space, x, self.A.in_features, ("g_x", "x")), t)
        return self._decode(self.y_space, z, self._out_shape(self.y_shape, x), ("g_y", "A g_x(x)"))

    @autocast_off
    def transpose(self, y: Tensor, t: float | Tensor | None = None) -> Tensor:
        """The adjoint for the induced inner products: ``<f(x), y>_gy = <x, f^T(y)>_gx``."""
        z = self.A.transpose(self._encode(self.y_space, y, self.A.out_features, ("g_y", "y")), t)
        return self._decode(self.x_space, z, self._out_shape(self.x_shape, y), ("g_x", "A^T g_y(y)"))

    @autocast_off
    def pinv(self, y: Tensor, t: float | None = None) -> Tensor:
        """Moore-Penrose pseudo-inverse ``f^+(y) = g_x^-1(A^+ g_y(y))``."""
        z = self.A.pseudo_inverse(t)(self._encode(self.y_space, y, self.A.out_features, ("g_y", "y")))
        return self._decode(self.x_space, z, self._out_shape(self.x_shape, y), ("g_x", "A^+ g_y(y)"))

    @autocast_off
    def svd(self, k: int | None = None, t: float | None = None) -> LinearizerSVD:
        """Top-``k`` singular triplets (all when ``k`` is None) from the dense SVD of A."""
        if self.x_shape is None or self.y_shape is None:
            raise ValueError("svd needs x_shape and y_shape; build the Linearizer with them")
        if k is not None:
            k = as_integer(k, "svd: k must be an integer (how many singular triplets) or None")
        u, s, vh = torch.linalg.svd(self.A.matrix(t), full_matrices=False)
        k = s.shape[0] if k is None else k
        if not 0 < k <= s.shape[0]:
            raise ValueError(f"k must be in [1, {s.shape[0]}], got {k}")
        return LinearizerSVD(
            singular_values=s[:k],
            x_vectors=self._decode(self.x_space, vh[:k], self.x_shape, ("g_x", "A's right singular vectors")),
            y_vectors=self._decode(self.y_space, u[:, :k].T, self.y_shape, ("g_y", "A's left singular vectors")),
        )

    # -- algebra on Linearizers --------------------------------------------------------------
    @autocast_off
    def at_time(self, t: float) -> "Linearizer":
        """This Linearizer with a time-conditioned A fixed at ``t`` (``A.at_time(t)``); others: unchanged."""
        if not self.A.time_conditioned:
            return self
        return Linearizer(self.g_x, self.A.at_time(t), self.g_y, self.x_shape, self.y_shape)

    @autocast_off
    def compose(self, other: "Linearizer") -> "Linearizer":
        """``self o other`` (apply ``other`` first): a Linearizer with core ``A_self A_other``.

        Needs ``other``'s output network to be this one's input network, so that the two
        inner networks cancel: ``g_x^-1`` of ``self`` meets ``g_y`` of ``other`` (decided by
        ``same_as``, or by identity for networks without it; see the class docstring).
        """
        if not isinstance(other, Linearizer):
            raise TypeError(f"compose: other must be a Linearizer, got {type(other).__name__}")
        if not same_network(self.g_x, other.g_y):
            raise ValueError(
                "cannot compose: the first Linearizer's output network g_y is not the second's input network g_x "
                "(composition needs a shared middle network)"
            )
        return Linearizer(other.g_x, ProductOperator([self.A, other.A]), self.g_y, other.x_shape, self.y_shape)

    @autocast_off
    def power(self, n: int, t: float | None = None) -> "Linearizer":
        """``f^n``: n applications for n >= 1, the identity for n = 0, powers of f^-1 for n < 0.

        Needs a square A and ``g_y`` the same network as ``g_x`` (class docstring). For a
        time-conditioned A, ``t`` fixes the time: ``f.power(n, t)`` is ``g^-1(A_t^n g(.))`` and
        takes no ``t`` when called. Without ``t``, positive powers stay time-conditioned
        (``f.power(2)(x, t)`` applies ``A_t`` twice); negative powers need ``t``.
        """
        n = as_integer(n, "power: n must be an integer (..., -1, 0, 1, 2, ...)")
        if not self.A.is_square:
            raise ValueError(
                f"power needs a square A (f's outputs are fed back in), but A maps "
                f"{self.A.in_features} -> {self.A.out_features} features"
            )
        if not same_network(self.g_x, self.g_y):
            raise ValueError(
                "power needs g_y to be the same network as g_x (f's outputs are fed back into g_x), "
                f"but g_x ({type(self.g_x).__name__}) and g_y ({type(self.g_y).__name__}) differ"
            )
        A = self.A
        if A.time_conditioned and t is not None:
            A = A.at_time(t)
        if n == 0:
            core: LatentOperator = IdentityOperator(A.in_features)
        else:
            base = A if n > 0 else self._inverse_operator(A)
            core = base if abs(n) == 1 else ProductOperator([base] * abs(n))
        return Linearizer(self.g_x, core, self.g_y, self.x_shape, self.y_shape)

    def _inverse_operator(self, A: LatentOperator) -> LatentOperator:
        if A.time_conditioned:
            raise ValueError(
                "power(n < 0) of a time-conditioned f needs the time: f.power(n, t=...) (A_t is inverted at that t)"
            )
        matrix = A.matrix()
        rank = int(torch.linalg.matrix_rank(matrix))
        if rank < matrix.shape[0]:
            raise ValueError(
                f"power(-n) needs an invertible A, but A ({matrix.shape[0]}x{matrix.shape[1]}) has rank {rank}; "
                "use pinv for the pseudo-inverse"
            )
        return DenseOperator.from_matrix(torch.linalg.inv(matrix))
