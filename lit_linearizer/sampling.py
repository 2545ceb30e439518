"""Sampling the latent flow-matching ODE, step by step or collapsed into one matrix B.

In latent space the model's velocity is ``v(z, t) = (A_t z - z) / (1 - t)``: the ODE
``dz/dt = L(t) z`` with ``L(t) = (A_t - I) / (1 - t)`` is *linear*, so every explicit solver
step is a matrix ``M_k`` and the whole trajectory is ``B = M_{T-1} ... M_1 M_0``
(``t_k = k h``, ``h = 1 / T``).

Steps ``0 .. T-2`` are the classical explicit Runge-Kutta steps:

- Euler: ``M_k = I + h L(t_k)``.
- RK4:   ``K1 = L(t)``, ``K2 = L(t + h/2) (I + h/2 K1)``, ``K3 = L(t + h/2) (I + h/2 K2)``,
  ``K4 = L(t + h) (I + h K3)``, ``M_k = I + h/6 (K1 + 2 K2 + 2 K3 + K4)``: the cross terms
  included (the reference drops them, and its B is then off by 22-34 %).

The last step, from ``1 - h`` to 1, must not evaluate ``L(1)`` (``1 / (1 - t)`` is singular).
It is an explicit Runge-Kutta step ``(c, a, b)`` whose nodes ``c_i`` all lie *below* 1, written in
data-prediction form. At ``t_i = 1 - h + c_i h`` we have ``1 - t_i = h (1 - c_i)``, so
``h L(t_i) = (A_{t_i} - I) / (1 - c_i)`` contains no ``h`` and no division by a small number:

    D_i = A_{t_i} Y_i,   Y_i = z + sum_j  a_ij / (1 - c_j)  (D_j - Y_j),   z(1) = sum_i w_i D_i

with ``w = b (a + diag(1 - c))^{-1}`` (``sum_i w_i = sum_i b_i = 1``). This is the same step as
``z + h sum_i b_i k_i``, exactly, rewritten: ``z(1)`` is a combination of the model's
predictions ``D_i`` of the clean latent.

- Euler: one node, ``c = 0``: ``z(1) = A_{1-h} z``, Euler's own last step (``h / (1 - t) = 1``).
- RK4: a five-stage, fourth-order scheme with nodes ``0, 1/4, 1/2, 1/2, 3/4`` (its weights
  ``0, 2/3, -1/3, 0, 2/3`` are Milne's open quadrature rule at ``1/4, 1/2, 3/4``):

      Y_1 = z + (D_0 - z)/4,  Y_2 = z + (D_0 - z)/2,  Y_3 = z + (D_0 - z)/4 + (D_2 - Y_2)/2,
      Y_4 = z + (D_0 - z)/4 + (D_3 - Y_3),  z(1) = -5/9 D_0 + 8/9 D_1 + 2/3 D_2 - 8/3 D_3 + 8/3 D_4.

  Its local error is ``O(h^5)`` wherever the field is smooth up to ``t = 1`` (``A_1 = I``, as for
  the exact conditional expectation of Gaussian latents), so RK4 is fourth order overall: on a
  Gaussian case with a closed-form flow map the error falls as ``T^-4`` (tests). (Replacing the
  last step by ``z <- A_{1-h} z``, as this module once did, made RK4 second order.) Every form
  here is a polynomial in the ``A_{t_i}``, so B stays exact and factored; a pure low-rank
  ``A_t`` (no identity part) gives a B with an identity part of exactly 0.

``integrate`` is the ordinary iterative solver on vectors; ``collapse`` builds B, either
dense (N x N, small N) or factored as ``b I + P C Q^T`` with the operator's shared bases,
where every product touches only the small K x K cores. Both run the same step code on their
representation and give the same B up to roundoff; tests hold them to 1e-10 relative in
float64. Both run with autocast off, in the operator's dtype, and B is a value: detached tensors
that it owns, unaffected by later updates of the operator's parameters.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_linearizer.operators.base import LatentOperator, as_integer
from lit_linearizer.operators.dense import DenseOperator
from lit_linearizer.operators.factored import ScalarPlusLowRank
from lit_linearizer.operators.precision import autocast_off

Method = Literal["euler", "rk4"]
METHODS = ("euler", "rk4")


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta scheme: nodes ``c``, strictly lower-triangular ``a``, weights ``b``.

    ``a[i]`` holds the ``i`` coefficients of stage ``i`` on stages ``0 .. i-1``. Exact fractions.
    """

    nodes: tuple[Fraction, ...]
    a: tuple[tuple[Fraction, ...], ...]
    weights: tuple[Fraction, ...]

    def __post_init__(self):
        s = len(self.nodes)
        if len(self.weights) != s or len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError("a tableau needs s nodes, s weights and rows of length 0, 1, ..., s-1")
        if any(sum(row, Fraction(0)) != c for row, c in zip(self.a, self.nodes)):
            raise ValueError("each node must be the sum of its row of a")

    @functools.cached_property
    def data_prediction(self) -> tuple[tuple[tuple[Fraction, ...], ...], tuple[Fraction, ...]]:
        """``(alpha, w)``: ``alpha_ij = a_ij / (1 - c_j)`` and ``w = b (a + diag(1 - c))^{-1}``.

        Only defined when every node is below 1 (the form of the last step, module docstring).
        """
        if any(c >= 1 for c in self.nodes):
            raise ValueError("the data-prediction form needs every node below 1")
        s = len(self.nodes)
        alpha = tuple(tuple(a / (1 - self.nodes[j]) for j, a in enumerate(row)) for row in self.a)
        # w (a + diag(1 - c)) = b: the matrix is lower triangular, solve from the last column.
        w = [Fraction(0)] * s
        for j in reversed(range(s)):
            rest = sum((w[i] * self.a[i][j] for i in range(j + 1, s)), Fraction(0))
            w[j] = (self.weights[j] - rest) / (1 - self.nodes[j])
        return alpha, tuple(w)


def _tableau(nodes, a, weights) -> Tableau:
    """A Tableau from ints and strings like ``"1/6"`` (exact fractions)."""
    return Tableau(
        tuple(map(Fraction, nodes)), tuple(tuple(map(Fraction, row)) for row in a), tuple(map(Fraction, weights))
    )


EULER = _tableau([0], [[]], [1])
RK4 = _tableau([0, "1/2", "1/2", 1], [[], ["1/2"], [0, "1/2"], [0, 0, 1]], ["1/6", "1/3", "1/3", "1/6"])
# Fourth order with every node below 1, for the interval that ends at the singular t = 1.
RK4_LAST = _tableau(
    [0, "1/4", "1/2", "1/2", "3/4"],
    [[], ["1/4"], ["1/2", 0], ["1/4", 0, "1/4"], ["1/4", 0, 0, "1/2"]],
    [0, "2/3", "-1/3", 0, "2/3"],
)
# Steps 0 .. T-2, and the last step (data-prediction form), per method.
TABLEAUS = {"euler": EULER, "rk4": RK4}
LAST_STEP_TABLEAUS = {"euler": EULER, "rk4": RK4_LAST}


def _check(method: str, num_steps: int) -> int:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown solver {method!r}; choose one of {METHODS}")
    num_steps = as_integer(num_steps, "num_steps must be an integer >= 1 (the number of solver steps)")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return num_steps


def _check_operator(operator: LatentOperator) -> None:
    if not isinstance(operator, LatentOperator):
        raise TypeError(f"operator must be a LatentOperator, got {type(operator).__name__}")
    if not operator.is_square:
        raise ValueError(
            f"the latent ODE needs a square operator, but it maps {operator.in_features} -> "
            f"{operator.out_features} features"
        )


def _time(k: int, node: Fraction, num_steps: int) -> float:
    """``t = (k + c) / T``, rounded once from the exact fraction: one formula for every path."""
    return float((k + node) / num_steps)


def step_times(num_steps: int, method: Method = "euler") -> list[float]:
    """Every time at which the solver evaluates ``A_t``, in order of first use (no repeats)."""
    num_steps = _check(method, num_steps)
    times: dict[float, None] = {}
    for k in range(num_steps):
        tableau = LAST_STEP_TABLEAUS[method] if k == num_steps - 1 else TABLEAUS[method]
        for node in tableau.nodes:
            times.setdefault(_time(k, node, num_steps), None)
    return list(times)


def _combine(terms: Sequence[tuple[float, object]], start=None):
    """``start + sum_i c_i x_i`` for any representation with ``+`` and scalar ``*``; skips zeros."""
    out = start
    for coefficient, value in terms:
        if coefficient == 0:
            continue
        term = value if coefficient == 1 else coefficient * value
        out = term if out is None else out + term
    return out


def _step(apply: Callable[[float, object], object], x, k: int, num_steps: int, method: Method):
    """Solver step ``k`` applied to ``x``: ``M_k x``.

    ``x`` is anything closed under ``+``, ``-``, scalar ``*`` and ``apply(t, y) = A_t y``: a batch of
    vectors (``integrate``), a dense matrix or a ``_Factored`` (``collapse``). One code path for all.
    """
    if k == num_steps - 1:  # data-prediction form: no L(1), no division by 1 - t
        tableau = LAST_STEP_TABLEAUS[method]
        alpha, w = tableau.data_prediction
        states, predictions = [], []
        for i, node in enumerate(tableau.nodes):
            y = _combine([(float(a), predictions[j] - states[j]) for j, a in enumerate(alpha[i]) if a != 0], x)
            states.append(y)
            predictions.append(apply(_time(k, node, num_steps), y))
        return _combine([(float(wi), d) for wi, d in zip(w, predictions)])

    tableau = TABLEAUS[method]
    h = 1.0 / num_steps
    slopes = []
    for i, node in enumerate(tableau.nodes):
        y = _combine([(h * float(a), slopes[j]) for j, a in enumerate(tableau.a[i]) if a != 0], x)
        t = _time(k, node, num_steps)
        slopes.append((1.0 / (1.0 - t)) * (apply(t, y) - y))  # L(t) y
    return _combine([(h * float(b), s) for b, s in zip(tableau.weights, slopes)], x)


def velocity(operator: LatentOperator, z: Tensor, t: float) -> Tensor:
    """``v(z, t) = (A_t z - z) / (1 - t)``, the velocity of an x-predicting flow-matching model."""
    return (operator(z, t) - z) / (1.0 - t)


@torch.no_grad()
@autocast_off
def integrate(
    operator: LatentOperator, z0: Tensor, num_steps: int, method: Method = "euler", progress: bool = False
) -> Tensor:
    """Solve the latent ODE from t = 0 to t = 1 with ``num_steps`` explicit steps (module docstring)."""
    num_steps = _check(method, num_steps)
    _check_operator(operator)
    z = z0
    for k in tqdm(range(num_steps), desc=f"{method} x{num_steps}", disable=not progress, leave=False):
        z = _step(lambda t, y: operator(y, t), z, k, num_steps, method)
    return z


class _Factored:
    """``s I + P C Q^T`` for fixed bases P, Q: only (s, C) vary. ``gram = Q^T P``."""

    __slots__ = ("scale", "core", "gram")

    def __init__(self, scale: Tensor, core: Tensor, gram: Tensor):
        self.scale, self.core, self.gram = scale, core, gram

    def __add__(self, other: "_Factored") -> "_Factored":
        return _Factored(self.scale + other.scale, self.core + other.core, self.gram)

    def __sub__(self, other: "_Factored") -> "_Factored":
        return _Factored(self.scale - other.scale, self.core - other.core, self.gram)

    def __rmul__(self, a: float) -> "_Factored":
        return _Factored(a * self.scale, a * self.core, self.gram)

    def __matmul__(self, other: "_Factored") -> "_Factored":
        # (s1 I + P C1 Q^T)(s2 I + P C2 Q^T) = s1 s2 I + P (s1 C2 + s2 C1 + C1 Q^T P C2) Q^T
        core = self.scale * other.core + other.scale * self.core + self.core @ self.gram @ other.core
        return _Factored(self.scale * other.scale, core, self.gram)


class _Diagonal:
    """``s I + P diag(c) Q^T`` with ``Q^T P = I`` (a diagonalised operator): products are elementwise."""

    __slots__ = ("scale", "core")

    def __init__(self, scale: Tensor, core: Tensor):
        self.scale, self.core = scale, core

    def __add__(self, other: "_Diagonal") -> "_Diagonal":
        return _Diagonal(self.scale + other.scale, self.core + other.core)

    def __sub__(self, other: "_Diagonal") -> "_Diagonal":
        return _Diagonal(self.scale - other.scale, self.core - other.core)

    def __rmul__(self, a: float) -> "_Diagonal":
        return _Diagonal(a * self.scale, a * self.core)

    def __matmul__(self, other: "_Diagonal") -> "_Diagonal":
        # (s1 I + P C1 Q^T)(s2 I + P C2 Q^T) = s1 s2 I + P (s1 C2 + s2 C1 + C1 C2) Q^T, C diagonal, Q^T P = I
        core = self.scale * other.core + other.scale * self.core + self.core * other.core
        return _Diagonal(self.scale * other.scale, core)


@torch.no_grad()
@autocast_off
def collapse(
    operator: LatentOperator,
    num_steps: int,
    method: Method = "euler",
    factored: bool = True,
    progress: bool = False,
) -> LatentOperator:
    """The one-step matrix B with ``integrate(A, z, T) == B z`` for every z.

    ``factored=True`` needs an operator with ``grid_factors`` (TimeLowRankOperator) or
    ``grid_spectrum`` (a diagonalised operator, GaussianTransportOperator: every product is then
    elementwise) and returns a ScalarPlusLowRank; ``factored=False`` returns a DenseOperator (any
    square operator, ``N^2`` memory). B is a value: its tensors are detached and its own (not views
    of the operator's parameters), so a later optimizer step does not change it; it is computed
    with autocast off, in the operator's dtype.
    """
    num_steps = _check(method, num_steps)
    _check_operator(operator)
    steps = tqdm(range(num_steps), desc=f"collapse {method} x{num_steps}", disable=not progress, leave=False)
    if factored and hasattr(operator, "grid_spectrum"):
        ref = operator._reference_tensor()
        times = step_times(num_steps, method)
        index = {t: i for i, t in enumerate(times)}
        scales, left, cores, right = operator.grid_spectrum(torch.tensor(times, dtype=ref.dtype, device=ref.device))
        B = _Diagonal(torch.ones((), dtype=ref.dtype, device=ref.device), torch.zeros_like(cores[0]))
        for k in steps:
            B = _step(lambda t, y: _Diagonal(scales[index[t]], cores[index[t]]) @ y, B, k, num_steps, method)
        return ScalarPlusLowRank(
            B.scale.detach().clone(), left.detach().clone(), torch.diag(B.core.detach()), right.detach().clone()
        )
    if factored:
        if not hasattr(operator, "grid_factors"):
            raise ValueError(f"{type(operator).__name__} has no shared low-rank factors; use factored=False (dense B)")
        ref = operator._reference_tensor()
        times = step_times(num_steps, method)
        index = {t: i for i, t in enumerate(times)}
        scales, left, cores, right = operator.grid_factors(torch.tensor(times, dtype=ref.dtype, device=ref.device))
        gram = right.T @ left

        def apply(t: float, y: _Factored) -> _Factored:
            i = index[t]
            return _Factored(scales[i], cores[i], gram) @ y

        B = _Factored(torch.ones((), dtype=ref.dtype, device=ref.device), torch.zeros_like(cores[0]), gram)
        for k in steps:
            B = _step(apply, B, k, num_steps, method)
        return ScalarPlusLowRank(
            B.scale.detach().clone(), left.detach().clone(), B.core.detach().clone(), right.detach().clone()
        )

    ref = operator._reference_tensor()
    matrix_at = functools.lru_cache(maxsize=4)(operator.matrix)  # a time is reused by consecutive stages
    B = torch.eye(operator.in_features, dtype=ref.dtype, device=ref.device)
    for k in steps:
        B = _step(lambda t, y: matrix_at(t) @ y, B, k, num_steps, method)
    return DenseOperator.from_matrix(B)
