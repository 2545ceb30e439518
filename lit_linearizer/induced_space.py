"""The vector space a network g induces on R^N, in which a Linearizer is exactly linear.

    v1 (+)_g v2 := g^-1( g(v1) + g(v2) )
    a (.)_g v   := g^-1( a g(v) )
    <v1, v2>_g  := < g(v1), g(v2) >

g is a bijection, so these inherit every vector-space axiom (and the inner product every
Hilbert-space axiom) from R^N: the space is R^N, relabelled through g. g may be any
``nn.Module`` with ``forward`` and ``inverse``.

``encode``/``decode`` are g and g^-1 and follow the ambient ``torch.autocast``; the vector-space
operations (``add``, ``scale``, ``inner``, ``norm``, ``zero``, ``linear_combination``) are algebra
and run with autocast off, in g's dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.operators.precision import autocast_off


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter or buffer; None if it has none."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return None


class InducedSpace:
    """Vector-space operations on batches of shape ``(B, *shape)``, transported by ``g``."""

    def __init__(self, g: InvertibleModule, shape: Sequence[int] | None):
        self.g = g
        self.shape = None if shape is None else tuple(shape)

    def encode(self, v: Tensor) -> Tensor:
        """``g(v)`` flattened to ``(B, N)``: coordinates in the induced space."""
        if self.shape is not None and tuple(v.shape[1:]) != self.shape:
            raise ValueError(f"expected inputs of shape (B, {', '.join(map(str, self.shape))}), got {tuple(v.shape)}")
        return self.g(v).flatten(1)

    def decode(self, z: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """``g^-1`` of flat coordinates ``(B, N)``."""
        shape = self.shape if shape is None else tuple(shape)
        if shape is None:
            raise ValueError("this space does not know its shape; pass shape= or build it with one")
        return self.g.inverse(z.reshape(z.shape[0], *shape))

    def _check_same_shape(self, what: str, v1: Tensor, v2: Tensor) -> None:
        if v1.shape != v2.shape:
            raise ValueError(
                f"{what}: v1 and v2 must have one shape (the same batch size and sample shape), "
                f"got {tuple(v1.shape)} and {tuple(v2.shape)}"
            )

    @autocast_off
    def add(self, v1: Tensor, v2: Tensor) -> Tensor:
        """``v1 (+) v2``, sample by sample: both of shape ``(B, *shape)``."""
        self._check_same_shape("add", v1, v2)
        return self.decode(self.encode(v1) + self.encode(v2), v1.shape[1:])

    @autocast_off
    def scale(self, a: float | Tensor, v: Tensor) -> Tensor:
        """``a (.) v``; ``a`` is a scalar or one scalar per batch element (shape ``(B,)``)."""
        a = torch.as_tensor(a, dtype=v.dtype, device=v.device)
        if a.numel() != 1 and tuple(a.shape) not in ((v.shape[0],), (v.shape[0], 1)):
            raise ValueError(
                f"scale: a must be a scalar or hold one scalar per sample, shape ({v.shape[0]},), "
                f"got shape {tuple(a.shape)} for a batch of {v.shape[0]}"
            )
        a = a.reshape(-1, 1) if a.numel() != 1 else a.reshape(())
        return self.decode(a * self.encode(v), v.shape[1:])

    @autocast_off
    def inner(self, v1: Tensor, v2: Tensor) -> Tensor:
        """Per-sample ``<v1, v2>_g``, shape ``(B,)``."""
        self._check_same_shape("inner", v1, v2)
        return (self.encode(v1) * self.encode(v2)).sum(dim=1)

    @autocast_off
    def norm(self, v: Tensor) -> Tensor:
        return self.inner(v, v).sqrt()

    @autocast_off
    def zero(self, batch_size: int = 1, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """The additive identity ``g^-1(0)`` (not the pixel-space zero)."""
        if self.shape is None:
            raise ValueError("this space does not know its shape; build it with one")
        ref = next(iter(self.g.parameters()), None)
        dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
        device = device or (ref.device if ref is not None else None)
        n = int(torch.tensor(self.shape).prod())
        return self.decode(torch.zeros(batch_size, n, dtype=dtype, device=device))

    @autocast_off
    def linear_combination(self, coefficients: Tensor, vectors: Tensor) -> Tensor:
        """``(+)_i c[b, i] (.) vectors[i]`` for every b: coefficients ``(B, k)``, vectors ``(k, *shape)``."""
        if coefficients.dim() != 2 or coefficients.shape[1] != vectors.shape[0]:
            raise ValueError(
                f"linear_combination: coefficients must have shape (B, k) with k = {vectors.shape[0]} "
                f"(one per vector), got {tuple(coefficients.shape)}"
            )
        return self.decode(coefficients @ self.encode(vectors), vectors.shape[1:])
