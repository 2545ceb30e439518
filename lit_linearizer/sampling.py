"""Sampling the latent flow-matching ODE, step by step or collapsed into one matrix B.

In latent space the model's velocity is ``v(z, t) = (A_t z - z) / (1 - t)``: the ODE
``dz/dt = L(t) z`` with ``L(t) = (A_t - I) / (1 - t)`` is *linear*, so every explicit solver
step is a matrix ``M_k`` and the whole trajectory is ``B = M_{T-1} ... M_1 M_0``:

- Euler: ``M_k = I + dt L(t_k)``.
- RK4:   ``K1 = L(t)``, ``K2 = L(t + dt/2) (I + dt/2 K1)``, ``K3 = L(t + dt/2) (I + dt/2 K2)``,
  ``K4 = L(t + dt) (I + dt K3)``, ``M_k = I + dt/6 (K1 + 2 K2 + 2 K3 + K4)``: the cross terms
  included (the reference drops them, and its B is then off by 22-34 %).

The last step (``t = 1 - dt``) is taken as ``M = A_{1 - dt}`` for both solvers: for Euler
this *is* the step (``dt / (1 - t) = 1``), and RK4 would otherwise evaluate the singular
``L(1)``. So both samplers run all the way to t = 1 (the reference stops one step short).

``integrate`` is the ordinary iterative solver on vectors; ``collapse`` builds B, either
dense (N x N, small N) or factored as ``b I + P C Q^T`` with the operator's shared bases,
where every product touches only the small K x K cores. Both give the same B up to
roundoff; tests hold them to 1e-10 relative in float64.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.operators.dense import DenseOperator
from lit_linearizer.operators.factored import ScalarPlusLowRank

Method = Literal["euler", "rk4"]
METHODS = ("euler", "rk4")


def _check(method: str, num_steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown solver {method!r}; choose one of {METHODS}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def _half_step_time(j: int, num_steps: int) -> float:
    """Time of half-step index ``j``: ``t = j / (2T)``. One formula for every solver and path."""
    return j / (2 * num_steps)


def velocity(operator: LatentOperator, z: Tensor, t: float) -> Tensor:
    """``v(z, t) = (A_t z - z) / (1 - t)``, the velocity of an x-predicting flow-matching model."""
    return (operator(z, t) - z) / (1.0 - t)


@torch.no_grad()
def integrate(
    operator: LatentOperator, z0: Tensor, num_steps: int, method: Method = "euler", progress: bool = False
) -> Tensor:
    """Solve the latent ODE from t = 0 to t = 1 with ``num_steps`` explicit steps."""
    _check(method, num_steps)
    z = z0
    dt = 1.0 / num_steps
    for k in tqdm(range(num_steps), desc=f"{method} x{num_steps}", disable=not progress, leave=False):
        t = _half_step_time(2 * k, num_steps)
        if k == num_steps - 1:
            z = operator(z, t)  # exact final step: z + dt v(z, t) with dt / (1 - t) = 1
        elif method == "euler":
            z = z + dt * velocity(operator, z, t)
        else:
            t_mid, t_next = _half_step_time(2 * k + 1, num_steps), _half_step_time(2 * k + 2, num_steps)
            k1 = velocity(operator, z, t)
            k2 = velocity(operator, z + 0.5 * dt * k1, t_mid)
            k3 = velocity(operator, z + 0.5 * dt * k2, t_mid)
            k4 = velocity(operator, z + dt * k3, t_next)
            z = z + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
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


def _step_matrix(A: Callable[[int], object], identity, k: int, num_steps: int, method: Method):
    """``M_k`` in whatever representation ``A`` (half-step index -> A_t) and ``identity`` use."""
    dt = 1.0 / num_steps
    if k == num_steps - 1:
        return A(2 * k)

    def L(j: int):
        return (1.0 / (1.0 - _half_step_time(j, num_steps))) * (A(j) - identity)

    if method == "euler":
        return identity + dt * L(2 * k)
    k1 = L(2 * k)
    l_mid = L(2 * k + 1)
    k2 = l_mid @ (identity + (0.5 * dt) * k1)
    k3 = l_mid @ (identity + (0.5 * dt) * k2)
    k4 = L(2 * k + 2) @ (identity + dt * k3)
    return identity + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@torch.no_grad()
def collapse(
    operator: LatentOperator,
    num_steps: int,
    method: Method = "euler",
    factored: bool = True,
    progress: bool = False,
) -> LatentOperator:
    """The one-step matrix B with ``integrate(A, z, T) == B z`` for every z.

    ``factored=True`` needs an operator with ``grid_factors`` (TimeLowRankOperator) and
    returns a ScalarPlusLowRank; ``factored=False`` returns a DenseOperator (any operator,
    ``N^2`` memory).
    """
    _check(method, num_steps)
    steps = tqdm(range(num_steps), desc=f"collapse {method} x{num_steps}", disable=not progress, leave=False)
    if factored:
        if not hasattr(operator, "grid_factors"):
            raise ValueError(
                f"{type(operator).__name__} has no shared low-rank factors; use factored=False (dense B)"
            )
        ref = operator.left_basis
        times = torch.arange(2 * num_steps + 1, dtype=ref.dtype, device=ref.device) / (2 * num_steps)
        scales, left, cores, right = operator.grid_factors(times)
        gram = right.T @ left
        identity = _Factored(torch.ones((), dtype=ref.dtype, device=ref.device), torch.zeros_like(cores[0]), gram)
        B = identity
        for k in steps:
            B = _step_matrix(lambda j: _Factored(scales[j], cores[j], gram), identity, k, num_steps, method) @ B
        return ScalarPlusLowRank(B.scale, left, B.core, right)

    ref = operator._reference_tensor()
    identity = torch.eye(operator.in_features, dtype=ref.dtype, device=ref.device)
    B = identity
    for k in steps:
        B = _step_matrix(lambda j: operator.matrix(_half_step_time(j, num_steps)), identity, k, num_steps, method) @ B
    return DenseOperator.from_matrix(B)

