"""``A = s I + P C Q^T``: a scalar times identity plus a low-rank part, kept factored.

This is the shape of a time-conditioned low-rank operator at a fixed time, and of the
one-step sampling matrix B collapsed from it (see ``lit_linearizer.sampling``): products
and sums of such operators with the same bases (P, Q) only touch the small K x K cores.
Storage is ``2 N K + K^2 + 1`` numbers instead of ``N^2``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_linearizer.operators.base import LatentOperator


class ScalarPlusLowRank(LatentOperator):
    """``s I + P C Q^T`` with P, Q of shape (N, K) and core C of shape (K, K). Not trainable.

    The tensors are stored as given (buffers, no copy): ``TimeLowRankOperator.at_time`` returns a
    live, differentiable view of its parameters this way. ``collapse`` and ``pseudo_inverse``
    return values instead (detached tensors that the result owns).

    The pseudo-inverse is exact and cheap:
    - ``s != 0``: Woodbury, ``(1/s) (I - P C (s I + Q^T P C)^{-1} Q^T)`` (raises if A is singular);
    - ``s == 0``: with thin QRs ``P = Q_p R_p``, ``Q = Q_q R_q``,
      ``A^+ = Q_q (R_p C R_q^T)^+ Q_p^T`` (orthonormal outer factors make this exact).
    """

    pinv_is_cheap = True

    def __init__(self, scale: float | Tensor, left: Tensor, core: Tensor, right: Tensor):
        n, k = left.shape
        if right.shape != (n, k) or core.shape != (k, k):
            raise ValueError(
                f"ScalarPlusLowRank needs left/right of one shape (N, K) and a (K, K) core, got "
                f"{tuple(left.shape)}, {tuple(right.shape)}, {tuple(core.shape)}"
            )
        super().__init__(n, n)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=left.dtype, device=left.device).reshape(()))
        self.register_buffer("left", left)
        self.register_buffer("core", core)
        self.register_buffer("right", right)

    @property
    def rank(self) -> int:
        return self.core.shape[0]

    def forward(self, z, t=None):
        self.check_input(z)
        return self.scale * z + ((z @ self.right) @ self.core.T) @ self.left.T

    def transpose(self, z, t=None):
        self.check_input(z)
        return self.scale * z + ((z @ self.left) @ self.core) @ self.right.T

    def matrix(self, t=None):
        eye = torch.eye(self.in_features, dtype=self.left.dtype, device=self.left.device)
        return self.scale * eye + self.left @ self.core @ self.right.T

    def pseudo_inverse(self, t=None):
        # A value: detached, and owning its tensors (the bases are cloned, not shared).
        s, left, core, right = (x.detach() for x in (self.scale, self.left, self.core, self.right))
        if s != 0:
            capacitance = s * torch.eye(self.rank, dtype=s.dtype, device=s.device) + right.T @ left @ core
            if torch.linalg.matrix_rank(capacitance) < self.rank:
                raise ValueError(
                    "pseudo-inverse of a singular s*I + low-rank operator has no cheap form; "
                    "use .matrix() with torch.linalg.pinv for small N"
                )
            inverse_core = -torch.linalg.solve(capacitance.T, core.T).T / s  # -(1/s) C M^{-1}
            return ScalarPlusLowRank(1.0 / s, left.clone(), inverse_core, right.clone())
        q_left, r_left = torch.linalg.qr(left)
        q_right, r_right = torch.linalg.qr(right)
        inverse_core = torch.linalg.pinv(r_left @ core @ r_right.T)
        return ScalarPlusLowRank(0.0, q_right, inverse_core, q_left)
