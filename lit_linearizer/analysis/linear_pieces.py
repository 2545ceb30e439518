"""How many linear regions a network has along a segment or in a plane; a Linearizer has one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from lit_linearizer.analysis.relu_regions import RegionTable, enumerate_regions, restrict

__all__ = [
    "LinearityReport",
    "PathPieces",
    "SegmentRegions",
    "count_linear_pieces",
    "linearizer_linearity",
    "segment_regions",
    "slice_regions",
]


@dataclass(frozen=True)
class SegmentRegions:
    """A ReLU MLP along ``p + t (q - p)``, ``t`` in ``[0, 1]``, exactly.

    Attributes:
        breakpoints: sorted ``t`` in (0, 1) where the activation pattern changes.
        kinks: the breakpoints where the slope changes too (the function's own breakpoints; a
            neuron whose downstream paths are all switched off flips without bending f).
        slopes: ``(pieces, out)``, ``d f / d t`` on each activation interval, left to right.
    """

    breakpoints: Tensor
    kinks: Tensor
    slopes: Tensor

    @property
    def num_activation_regions(self) -> int:
        return self.breakpoints.numel() + 1

    @property
    def num_linear_pieces(self) -> int:
        return self.kinks.numel() + 1


def segment_regions(net: nn.Sequential, p: Tensor, q: Tensor, rtol: float = 1e-9) -> SegmentRegions:
    """The activation regions and linear pieces of a ReLU MLP along the segment ``p -> q``, exactly.

    ``net`` restricted to the line is a ReLU MLP with one input (``restrict``), whose regions on
    ``[0, 1]`` are intervals (``enumerate_regions``). A breakpoint is a kink where the slopes on
    its two sides differ by more than ``rtol`` times the largest slope.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lit_linearizer.analysis import segment_regions
        >>> net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0], [1.0]])), net[0].bias.copy_(torch.tensor([0.0, -0.5]))
        ...     _ = net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> found = segment_regions(net, torch.tensor([-1.0]), torch.tensor([1.0]))  # relu(x) - 2 relu(x - 0.5)
        >>> found.breakpoints.tolist(), found.num_linear_pieces                     # kinks at x = 0 and 0.5
        ([0.5, 0.75], 3)
    """
    p = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
    q = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
    table = enumerate_regions(restrict(net, p, (q - p)[:, None]), 0.0, 1.0)
    order = torch.tensor([float(r.vertices.min()) for r in table.regions], dtype=torch.float64).argsort()
    regions = [table.regions[int(k)] for k in order]
    breakpoints = torch.tensor([float(r.vertices.min()) for r in regions[1:]], dtype=torch.float64)
    slopes = torch.stack([r.weight[:, 0] for r in regions])
    jumps = (slopes[1:] - slopes[:-1]).abs().amax(1)
    bends = jumps > rtol * slopes.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return SegmentRegions(breakpoints=breakpoints, kinks=breakpoints[bends], slopes=slopes)


def slice_regions(
    net: nn.Sequential, origin: Tensor, u: Tensor, v: Tensor, low: float = -1.0, high: float = 1.0
) -> RegionTable:
    """The activation regions of a ReLU MLP on the plane ``origin + s u + t v``, ``(s, t)`` in
    ``[low, high]^2``, exactly, for any input dimension (regions and maps in ``(s, t)``)."""
    directions = torch.stack(
        [torch.as_tensor(u, dtype=torch.float64).reshape(-1), torch.as_tensor(v, dtype=torch.float64).reshape(-1)],
        dim=1,
    )
    return enumerate_regions(restrict(net, origin, directions), low, high)


@dataclass(frozen=True)
class PathPieces:
    """A numerical count of linear pieces of any function along a path sampled at ``num + 1`` points.

    Attributes:
        num_pieces: the count (``num - 1`` for a function bent at every grid point).
        kinks: ``t`` of each isolated kink (the middle of its flagged grid points).
        curved_fraction: the fraction of interior grid points where the function is not affine.
        num: grid cells.
    """

    num_pieces: int
    kinks: Tensor
    curved_fraction: float
    num: int


def _pieces(t: Tensor, values: Tensor, rtol: float) -> PathPieces:
    values = values.flatten(1).double()
    second = (values[:-2] - 2 * values[1:-1] + values[2:]).abs().amax(1)
    scale = values.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    flagged = (second > rtol * scale).tolist()
    pieces, kinks, run = 1, [], []
    for i, bent in enumerate(flagged + [False]):
        if bent:
            run.append(i + 1)
            continue
        if run:
            pieces += max(1, len(run) - 1)
            if len(run) <= 2:
                kinks.append(float(t[run].mean()))
            run = []
    fraction = sum(flagged) / max(1, len(flagged))
    return PathPieces(
        num_pieces=pieces, kinks=torch.tensor(kinks, dtype=torch.float64), curved_fraction=fraction, num=t.numel() - 1
    )


def count_linear_pieces(
    fn: Callable[[Tensor], Tensor], p: Tensor, q: Tensor, num: int = 1024, rtol: float | None = None
) -> PathPieces:
    """Linear pieces of any network ``fn`` along ``p -> q``, from second differences on a grid.

    A grid point is bent when ``|f(t-h) - 2 f(t) + f(t+h)|`` exceeds ``rtol`` times the largest
    ``|f|`` (default 1e-8 in float64, 1e-3 in float32); a run of one or two bent points is one kink,
    a longer run of L points counts L - 1 (a curve bent everywhere gives ``num - 1``). For a
    piecewise-linear f it is exact when consecutive kinks are 3 or more grid cells apart and no
    slope change is below the tolerance; ``segment_regions`` is the exact count for a ReLU MLP.
    ``p`` and ``q`` are single inputs (any shape fn accepts with a batch dimension in front).
    """
    t = torch.linspace(0.0, 1.0, num + 1, dtype=torch.float64)
    path = p.unsqueeze(0) + t.to(p.dtype).reshape(-1, *[1] * p.dim()) * (q - p).unsqueeze(0)
    with torch.no_grad():
        values = fn(path)
    if rtol is None:
        rtol = 1e-8 if values.dtype == torch.float64 else 1e-3
    return _pieces(t, values, rtol)


@dataclass(frozen=True)
class LinearityReport:
    """A Linearizer f between x1 and x2: one region in its induced spaces, curved in pixels.

    Attributes:
        induced_defect: ``max_t |g_y(f(x(t))) - ((1 - t) g_y(f(x1)) + t g_y(f(x2)))|`` over the
            induced segment ``x(t) = g_x^-1((1 - t) g_x(x1) + t g_x(x2))``, relative to the
            largest value: roundoff, because f is linear there.
        pixel_defect: the same along the pixel segment ``(1 - t) x1 + t x2``, in pixels.
        induced_pieces, pixel_pieces: ``count_linear_pieces`` along each (1 vs. about ``num``).
        induced_additivity: ``|f(x1 (+) x2) - f(x1) (+) f(x2)| / |f(x1) (+) f(x2)|``.
        pixel_additivity: ``|f(x1 + x2) - (f(x1) + f(x2))| / |f(x1) + f(x2)|``.
    """

    induced_defect: float
    pixel_defect: float
    induced_pieces: PathPieces
    pixel_pieces: PathPieces
    induced_additivity: float
    pixel_additivity: float


def _chord_defect(t: Tensor, values: Tensor) -> float:
    values = values.flatten(1).double()
    chord = (1 - t)[:, None] * values[:1] + t[:, None] * values[-1:]
    return float((values - chord).abs().max() / values.abs().max().clamp_min(torch.finfo(torch.float64).tiny))


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).flatten().norm() / b.flatten().norm().clamp_min(torch.finfo(torch.float64).tiny))


@torch.no_grad()
def linearizer_linearity(f, x1: Tensor, x2: Tensor, num: int = 64, time: float | None = None) -> LinearityReport:
    """How linear a Linearizer is between two inputs, in its induced spaces and in pixels.

    ``x1`` and ``x2`` are single inputs (no batch dimension). A Linearizer is one linear map in
    coordinates ``g_x`` in and ``g_y`` out, so along the induced segment it has one linear piece
    and is additive; along the pixel segment the same f bends at every grid point (a ReLU MLP
    would show finitely many kinks instead: ``segment_regions``).

    Example:
        >>> import torch
        >>> from lit_linearizer import Linearizer
        >>> from lit_linearizer.analysis import linearizer_linearity
        >>> from lit_linearizer.flows import GlowNetwork
        >>> from lit_linearizer.operators import DenseOperator
        >>> _ = torch.manual_seed(0)
        >>> g = GlowNetwork(in_shape=(1, 4, 4), num_steps=1, hidden_channels=8, conditional=False).double()
        >>> torch.nn.utils.vector_to_parameters(
        ...     0.1 * torch.randn(sum(p.numel() for p in g.parameters()), dtype=torch.float64), g.parameters())
        >>> f = Linearizer(g, DenseOperator(16, init="random").double()).eval()
        >>> x1, x2 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
        >>> report = linearizer_linearity(f, x1, x2, num=64)
        >>> report.induced_pieces.num_pieces, report.induced_defect < 1e-10, report.induced_additivity < 1e-10
        (1, True, True)
        >>> report.pixel_pieces.num_pieces > 32, report.pixel_defect > 1e-3
        (True, True)
    """
    X, Y = f.x_space, f.y_space
    kwargs = {} if time is None else {"t": time}
    t = torch.linspace(0.0, 1.0, num + 1, dtype=torch.float64)
    pair = torch.stack([x1, x2])
    z1, z2 = X.encode(pair).double()
    induced_x = X.decode(((1 - t)[:, None] * z1 + t[:, None] * z2).to(x1.dtype), x1.shape)
    induced_y = Y.encode(f(induced_x, **kwargs))
    pixel_x = (1 - t.to(x1.dtype)).reshape(-1, *[1] * x1.dim()) * x1 + t.to(x1.dtype).reshape(-1, *[1] * x1.dim()) * x2
    pixel_y = f(pixel_x, **kwargs)
    rtol = 1e-8 if induced_y.dtype == torch.float64 else 1e-3
    fx = f(pair, **kwargs)
    induced_sum = f(X.add(pair[:1], pair[1:]), **kwargs)
    return LinearityReport(
        induced_defect=_chord_defect(t, induced_y),
        pixel_defect=_chord_defect(t, pixel_y),
        induced_pieces=_pieces(t, induced_y, rtol),
        pixel_pieces=_pieces(t, pixel_y, rtol),
        induced_additivity=_relative(induced_sum, Y.add(fx[:1], fx[1:])),
        pixel_additivity=_relative(f(pair.sum(0, keepdim=True), **kwargs), fx.sum(0, keepdim=True)),
    )
