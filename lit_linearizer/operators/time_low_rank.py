"""The time-conditioned operator of one-step generation: ``A_t = c(t) I + U(t) V(t)^T``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.operators.factored import ScalarPlusLowRank

__all__ = ["TimeLowRankOperator", "sinusoidal_embedding"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style features of ``t`` in [0, 1] (scaled by 1000, as in diffusion models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimeLowRankOperator(LatentOperator):
    """``A_t = c(t) I + U(t) V(t)^T`` with rank-``rank`` factors from an MLP on an embedding of t.

    The factors live in learned bases: ``U(t) = U_0 alpha(t)``, ``V(t) = V_0 beta(t)`` with
    ``U_0, V_0`` of shape ``(N, basis_size)``, and the MLP produces the small mixing matrices
    ``alpha(t), beta(t)`` of shape ``(basis_size, rank)``. Why: every ``A_t`` is then
    ``c I + U_0 [alpha beta^T] V_0^T``, so products over a whole sampling trajectory stay in
    the same form and the one-step matrix B is exactly ``b I + U_0 C V_0^T`` with a
    ``basis_size``-square core, whatever the number of steps. (With free-form ``U(t)`` the
    rank of B grows by ``rank`` for every time the solver visits.) ``basis_size = N`` loses
    no generality; the default keeps B at a few percent of a dense N x N matrix.

    Args:
        features: N, the flattened latent size.
        rank: rank of the low-rank part at each t (8 in the paper).
        basis_size: K, the dimension of the span shared by all U(t) (and all V(t)).
        hidden: MLP width.
        embedding_dim: size of the sinusoidal time embedding.
        identity_scale: ``"learned"``: ``c(t) = t + MLP(t)`` (starts at ``c = t``, so that
            ``A_1 = I`` maps a clean latent to itself); ``"zero"``: ``c = 0``, the reference's
            pure low-rank ``A_1(t) A_2(t)^T``.
    """

    time_conditioned = True
    pinv_is_cheap = True

    def __init__(
        self,
        features: int,
        rank: int = 8,
        basis_size: int = 64,
        hidden: int = 256,
        embedding_dim: int = 64,
        identity_scale: str = "learned",
    ):
        super().__init__(features, features)
        if identity_scale not in ("learned", "zero"):
            raise ValueError(f"identity_scale must be 'learned' or 'zero', got {identity_scale!r}")
        if not 0 < rank <= basis_size <= features:
            raise ValueError(f"need 0 < rank <= basis_size <= features, got {rank}, {basis_size}, {features}")
        self.rank = rank
        self.basis_size = basis_size
        self.embedding_dim = embedding_dim
        self.identity_scale = identity_scale
        self.left_basis = nn.Parameter(torch.randn(features, basis_size) / math.sqrt(features))
        self.right_basis = nn.Parameter(torch.randn(features, basis_size) / math.sqrt(features))
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.mixing_head = nn.Linear(hidden, 2 * basis_size * rank)
        # Only when used: DDP rejects parameters that never receive a gradient.
        self.scale_head = nn.Linear(hidden, 1) if identity_scale == "learned" else None
        if self.scale_head is not None:
            nn.init.zeros_(self.scale_head.weight)
            nn.init.zeros_(self.scale_head.bias)

    def _times(self, t: float | Tensor | None, batch: int | None = None) -> Tensor:
        if t is None:
            raise ValueError("TimeLowRankOperator needs a time t (float or (B,) tensor)")
        ref = self.left_basis
        t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
        if t.dim() == 0:
            t = t.reshape(1)
        if batch is not None and t.shape[0] not in (1, batch):
            raise ValueError(f"t must be a float or have shape ({batch},), got {tuple(t.shape)}")
        return t

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``c (T,)``, ``alpha (T, K, r)`` and ``beta (T, K, r)`` at times ``t (T,)``."""
        h = self.mlp(sinusoidal_embedding(t, self.embedding_dim))
        alpha, beta = self.mixing_head(h).view(-1, 2, self.basis_size, self.rank).unbind(1)
        if self.identity_scale == "learned":
            scale = t + self.scale_head(h).squeeze(1)
        else:
            scale = torch.zeros_like(t)
        return scale, alpha, beta

    def _factored_apply(self, z: Tensor, out_basis: Tensor, out_mix: Tensor, in_basis: Tensor, in_mix: Tensor, scale):
        """``s z + P_out M_out M_in^T P_in^T z``, per sample (training) or one t for all (sampling)."""
        w = z @ in_basis  # (B, K)
        if in_mix.shape[0] == 1:  # one time for the whole batch: plain matrix products
            w = (w @ in_mix[0]) @ out_mix[0].T
        else:
            w = torch.einsum("bkr,bk->br", in_mix, w)
            w = torch.einsum("bkr,br->bk", out_mix, w)
        return scale[:, None] * z + w @ out_basis.T

    def forward(self, z, t=None):
        self.check_input(z)
        scale, alpha, beta = self.coefficients(self._times(t, z.shape[0]))
        return self._factored_apply(z, self.left_basis, alpha, self.right_basis, beta, scale)

    def transpose(self, z, t=None):
        self.check_input(z)
        scale, alpha, beta = self.coefficients(self._times(t, z.shape[0]))
        return self._factored_apply(z, self.right_basis, beta, self.left_basis, alpha, scale)

    def grid_factors(self, times: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every ``A_tau`` for ``tau`` in ``times`` as ``s_tau I + P C_tau Q^T`` with shared P, Q.

        Returns ``(scales (T,), P (N, K), cores (T, K, K), Q (N, K))``.
        """
        scale, alpha, beta = self.coefficients(times)
        return scale, self.left_basis, alpha @ beta.transpose(1, 2), self.right_basis

    def at_time(self, t: float) -> ScalarPlusLowRank:
        scales, left, cores, right = self.grid_factors(self._times(t))
        if scales.shape[0] != 1:
            raise ValueError("at_time needs a single time")
        return ScalarPlusLowRank(scales[0], left, cores[0], right)

    def matrix(self, t=None):
        return self.at_time(self._times(t)).matrix()

    def pseudo_inverse(self, t=None):
        return self.at_time(self._times(t)).pseudo_inverse()

    def extra_repr(self) -> str:
        return (
            f"features={self.in_features}, rank={self.rank}, basis_size={self.basis_size}, "
            f"identity_scale={self.identity_scale}"
        )
