"""The exact three-layer rewrite of a deep ReLU network (Villani & Schoots, arXiv 2306.11827)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lit_linearizer.analysis.relu_regions import RegionTable, enumerate_regions

__all__ = ["ShallowReluNetwork", "shallow_network"]

# Inputs this far outside the box (relative to its size) still count as inside: roundoff.
BOX_RTOL = 1e-12
# Elements per intermediate tensor in forward (points x regions x outputs); bounds memory.
CHUNK_ELEMENTS = 1 << 22


class ShallowReluNetwork(nn.Module):
    """A deep ReLU MLP rewritten exactly as three layers, from its regions on a box.

    The construction of the seed (notes on "Any Deep ReLU Network is Shallow"):

    1. **Hyperplanes.** Every region is the intersection of half-spaces ``a @ x + c >= 0`` (its
       facets). All of them, without repeats, are the rows of one matrix: ``G x + g <= 0`` on the
       region's side. ``z = relu(G x + g)`` is the *activation pattern*: ``z_j = 0`` iff x is on
       the region's side of hyperplane j.
    2. **Selection.** The ``(K, M)`` 0/1 selection matrix S has, in row k, ones at region k's
       facets. ``v = S z`` is zero in row k iff x lies in region k.
    3. **Extended reals and one max.** With ``mask_k = 0`` where ``v_k`` is zero and ``-inf``
       elsewhere, ``y = max_k (F_k x + f_k + mask_k)`` picks region k's affine map: every other
       candidate is ``-inf``. On a shared facet all finite candidates agree (the network is
       continuous), so the max is the value there as well.

    In floating point, a point on a facet can come out ``1e-17`` on the wrong side of every
    region's copy of it, so the mask keeps the regions whose ``v_k`` equals the smallest
    (``0`` in exact arithmetic): the construction unchanged, robust to roundoff. S is stored
    sparse (``selection_matrix()`` gives it as a tensor). Exact on the box the regions were
    enumerated on; an input outside it is a ``ValueError``.

    Args:
        table: the regions (``enumerate_regions``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lit_linearizer.analysis import ShallowReluNetwork, enumerate_regions
        >>> _ = torch.manual_seed(0)
        >>> deep = nn.Sequential(
        ...     nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        ...     nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3),
        ... ).double()
        >>> shallow = ShallowReluNetwork(enumerate_regions(deep, low=-1.0, high=1.0))
        >>> x = torch.rand(10_000, 2, dtype=torch.float64) * 2 - 1
        >>> bool((shallow(x) - deep(x)).abs().max() < 1e-12)
        True
        >>> table = shallow.region_maps                       # the per-region affine maps
        >>> table["weight"].shape[0] == shallow.num_regions
        True
    """

    def __init__(self, table: RegionTable):
        super().__init__()
        if len(table) == 0:
            raise ValueError("the region table is empty")
        d = table.input_dim
        rows: dict[bytes, int] = {}
        sel_rows, sel_cols = [], []
        for k, region in enumerate(table.regions):
            # a @ x + c >= 0 on the region  <=>  G_j x + g_j = -(a @ x + c) <= 0
            for row in (-region.halfspaces).numpy():
                j = rows.setdefault(row.tobytes(), len(rows))
                sel_rows.append(k)
                sel_cols.append(j)
        planes = np.frombuffer(b"".join(rows), dtype=np.float64).reshape(-1, d + 1)
        self.register_buffer("hyperplanes", torch.from_numpy(planes[:, :d].copy()))  # G (M, d)
        self.register_buffer("offsets", torch.from_numpy(planes[:, d].copy()))  # g (M,)
        self.register_buffer("selection_rows", torch.tensor(sel_rows, dtype=torch.int64))
        self.register_buffer("selection_cols", torch.tensor(sel_cols, dtype=torch.int64))
        self.register_buffer("weights", table.weights.clone())  # F (K, out, d)
        self.register_buffer("biases", table.biases.clone())  # f (K, out)
        self.register_buffer("low", table.low.clone())
        self.register_buffer("high", table.high.clone())

    @property
    def num_regions(self) -> int:
        return self.weights.shape[0]

    @property
    def num_hyperplanes(self) -> int:
        return self.hyperplanes.shape[0]

    @property
    def region_maps(self) -> dict[str, Tensor]:
        """The per-region affine maps as a table: ``weight (K, out, d)``, ``bias (K, out)``."""
        return {"weight": self.weights, "bias": self.biases}

    def selection_matrix(self, dense: bool = False) -> Tensor:
        """S, ``(K, M)``: row k has ones at region k's facet hyperplanes (sparse COO unless dense)."""
        indices = torch.stack([self.selection_rows, self.selection_cols])
        values = torch.ones(indices.shape[1], dtype=self.hyperplanes.dtype, device=self.hyperplanes.device)
        shape = (self.num_regions, self.num_hyperplanes)
        matrix = torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
        return matrix.to_dense() if dense else matrix

    def _check(self, x: Tensor) -> Tensor:
        d = self.low.numel()
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"expected inputs of shape (B, {d}), got {tuple(x.shape)}")
        x = x.to(self.hyperplanes.dtype)
        slack = BOX_RTOL * (self.high - self.low)
        outside = ((x < self.low - slack) | (x > self.high + slack)).any(1)
        if bool(outside.any()):
            i = int(outside.nonzero()[0])
            raise ValueError(
                f"{int(outside.sum())} of {x.shape[0]} inputs lie outside the box [{self.low.tolist()}, "
                f"{self.high.tolist()}] the regions were enumerated on (first: row {i}, {x[i].tolist()})"
            )
        return x

    def violations(self, x: Tensor) -> Tensor:
        """Layers 1-2: ``v = S relu(G x + g)``, ``(B, K)``, zero exactly at x's region(s)."""
        x = self._check(x)
        z = torch.relu(x @ self.hyperplanes.T + self.offsets)  # layer 1: the activation pattern
        return torch.sparse.mm(self.selection_matrix(), z.T).T  # layer 2: the selection matrix

    def region_index(self, x: Tensor) -> Tensor:
        """Which region the construction selects for each input, ``(B,)``."""
        return self.violations(x).argmin(1)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = self._check(x)
        chunk = max(1, CHUNK_ELEMENTS // max(self.weights.shape[0] * self.weights.shape[1], self.num_hyperplanes))
        selection = self.selection_matrix()
        K, out, d = self.weights.shape
        maps, offsets = self.weights.reshape(K * out, d).T, self.biases.reshape(K * out)
        outputs = []
        for xs in x.split(chunk):
            z = torch.relu(xs @ self.hyperplanes.T + self.offsets)  # layer 1
            v = torch.sparse.mm(selection, z.T).T  # layer 2
            mask = torch.zeros_like(v).masked_fill_(v > v.amin(1, keepdim=True), float("-inf"))  # extended reals
            candidates = (xs @ maps + offsets).reshape(-1, K, out) + mask[..., None]  # every region's F_k x + f_k
            outputs.append(candidates.amax(1))  # layer 3: one max
        return torch.cat(outputs).to(dtype)


def shallow_network(net: nn.Sequential, low=-1.0, high=1.0) -> ShallowReluNetwork:
    """``ShallowReluNetwork(enumerate_regions(net, low, high))``: the rewrite of ``net`` on the box."""
    return ShallowReluNetwork(enumerate_regions(net, low, high))
