"""Invertible residual block (i-ResNet, Behrmann et al. 2019): ``y = x + h(x)`` with Lip(h) < 1.

Lip(h) < 1 makes ``x -> x + h(x)`` a bijection, and its inverse is the fixed point of
``x = y - h(x)``, reached by Banach iteration at a geometric rate.

The Lipschitz bound is a *guarantee*, not an estimate: each convolution is divided by an
upper bound of its operator norm, ``sqrt(k_h * k_w) * ||W||_2`` (the kernel reshaped to a
``(out, in * k_h * k_w)`` matrix; a zero-padded convolution is that matrix applied to
``k_h * k_w`` shifted copies of the input, each of norm <= ||x||). ``||W||_2`` is computed
exactly (``matrix_norm(ord=2)``), not by power iteration: power iteration updates a state
vector on every training-mode call, so ``h`` would change between forward and inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lit_linearizer.flows.base import InvertibleModule, as_condition

__all__ = ["LipSwish", "ResidualFlowBlock"]


class LipSwish(nn.Module):
    """``x * sigmoid(x) / 1.1``: smooth and 1-Lipschitz (SiLU's slope peaks at ~1.0998)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x) / 1.1


class ResidualFlowBlock(InvertibleModule):
    """``y = x + h(x, cond)``, h = conv3x3 -> LipSwish -> conv1x1 -> LipSwish -> conv3x3.

    Args:
        num_channels: channels of x.
        hidden_channels: width of h.
        lipschitz_coeff: the guaranteed bound on Lip(h); smaller converges faster when inverting.
        conditional: append the conditioning scalar as a constant input channel (it shifts h
            but does not change its Lipschitz constant in x).
        max_iterations, tolerance: the fixed-point solver's cap and its stopping rule on the
            relative step size; ``tolerance=None`` picks 1e-12 for float64 and 1e-6 otherwise.
            If the cap is hit, ``inverse`` raises instead of returning an inexact result.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int = 64,
        lipschitz_coeff: float = 0.7,
        conditional: bool = True,
        max_iterations: int = 300,
        tolerance: float | None = None,
    ):
        super().__init__()
        if not 0.0 < lipschitz_coeff < 1.0:
            raise ValueError(f"lipschitz_coeff must be in (0, 1) for invertibility, got {lipschitz_coeff}")
        self.lipschitz_coeff = lipschitz_coeff
        self.conditional = conditional
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        in_channels = num_channels + int(conditional)
        shapes = [
            (hidden_channels, in_channels, 3),
            (hidden_channels, hidden_channels, 1),
            (num_channels, hidden_channels, 3),
        ]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for out_c, in_c, k in shapes:
            conv = nn.Conv2d(in_c, out_c, k, padding=k // 2)
            self.weights.append(nn.Parameter(conv.weight.detach().clone()))
            self.biases.append(nn.Parameter(conv.bias.detach().clone()))
        self.activation = LipSwish()

    def lipschitz_weights(self) -> list[Tensor]:
        """Kernels scaled so each conv has operator norm <= 1 (the last <= lipschitz_coeff)."""
        scaled = []
        for i, w in enumerate(self.weights):
            target = self.lipschitz_coeff if i == len(self.weights) - 1 else 1.0
            bound = math.sqrt(w.shape[-1] * w.shape[-2]) * torch.linalg.matrix_norm(w.flatten(1), ord=2)
            scaled.append(w * torch.clamp(target / bound, max=1.0))
        return scaled

    def _residual(self, x: Tensor, cond: Tensor | None, weights: list[Tensor]) -> Tensor:
        if self.conditional:
            if cond is None:
                raise ValueError("this network is conditional: pass cond (1.0 for g_x, 0.0 for g_y)")
            x = torch.cat([x, cond.view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])], dim=1)
        h = x
        for i, (w, b) in enumerate(zip(weights, self.biases)):
            h = F.conv2d(h, w, b, padding=w.shape[-1] // 2)
            if i < len(weights) - 1:
                h = self.activation(h)
        return h

    def forward(self, x, cond=None):
        return x + self._residual(x, as_condition(cond, x), self.lipschitz_weights())

    def forward_and_log_det(self, x, cond=None):
        """Exact log-determinant from the dense Jacobian of each sample: O(N) backward passes.

        Fine for tests and small images; the Linearizer's training never needs it.
        """
        y = self.forward(x, cond)
        cond_t = as_condition(cond, x)
        log_dets = []
        for i in range(x.shape[0]):
            c_i = None if cond_t is None else cond_t[i : i + 1]
            jac = torch.autograd.functional.jacobian(
                lambda xi: self.forward(xi, c_i), x[i : i + 1], create_graph=torch.is_grad_enabled()  # noqa: B023
            )
            n = x[0].numel()
            log_dets.append(torch.linalg.slogdet(jac.reshape(n, n))[1])
        return y, torch.stack(log_dets)

    def inverse(self, y, cond=None):
        cond_t = as_condition(cond, y)
        weights = self.lipschitz_weights()
        tolerance = self.tolerance or (1e-12 if y.dtype == torch.float64 else 1e-6)
        y_norm = y.flatten(1).norm(dim=1)
        x = y
        step = float("inf")
        for _ in range(self.max_iterations):
            x_next = y - self._residual(x, cond_t, weights)
            # Relative to the larger of |y| and |x|: relative to |y| alone the rule can never be
            # met for y = 0 (e.g. decoding the induced zero g^-1(0)), where x = -h(x) != 0.
            scale = torch.maximum(y_norm, x_next.flatten(1).norm(dim=1)).clamp_min(torch.finfo(y.dtype).tiny)
            step = ((x_next - x).flatten(1).norm(dim=1) / scale).max().item()
            x = x_next
            if step <= tolerance:
                return x
        raise RuntimeError(
            f"ResidualFlowBlock.inverse did not converge in {self.max_iterations} iterations "
            f"(relative step {step:.1e} > tolerance {tolerance:.0e}); "
            "lower lipschitz_coeff or raise max_iterations"
        )
