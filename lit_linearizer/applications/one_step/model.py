"""One-step generation without Lightning: noise -> image through the collapsed matrix B, inversion, interpolation.

The latent ODE of flow matching is linear, so T solver steps collapse into one matrix B and
``x1 = g_x^-1(B g_y(x0))`` is the Linearizer ``(g_y, B, g_x)``; its pseudo-inverse maps real images
back to noise (LINEARIZER.md, section 3).

The operator is either the trained ``A_t`` or, once one is set with ``set_transport``, the closed-form
flow-matching operator of the trained g (``applications/one_step/transport.py``): it acts on latents
centred on the noise and data latent means, so the generator is then ``(g_y - m0, B, g_x - m1)``, still a
Linearizer. ``sampler_settings["operator"]`` says which (``fitted`` uses the transport when there is one).

Example:
    >>> import torch
    >>> from lit_linearizer.flows import GlowNetwork
    >>> from lit_linearizer.operators import TimeLowRankOperator
    >>> _ = torch.manual_seed(0)
    >>> g = GlowNetwork(in_shape=(1, 4, 4), num_steps=1, hidden_channels=4)  # conditional: g_x and g_y in one
    >>> A = TimeLowRankOperator(16, rank=2, basis_size=4, hidden=8, embedding_dim=8)
    >>> model = OneStepModel(g.bind(1.0), g.bind(0.0), A, (1, 4, 4), {"steps": 8}).double().eval()
    >>> noise = model.noise(3, seed=0)
    >>> one, eight = model.sample(noise), model.sample(noise, steps=8)
    >>> bool(((one - eight).norm() / eight.norm()) < 1e-10)  # one step through B = eight RK4 steps
    True
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.applications.one_step.transport import LatentFit, fit_latent_transport
from lit_linearizer.flows.base import InvertibleModule, ShiftedFlow
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.operators.gaussian_transport import GaussianTransportOperator
from lit_linearizer.randomness import per_sample_normal
from lit_linearizer.sampling import collapse, integrate

__all__ = ["OPERATOR_CHOICES", "OneStepModel", "slerp"]

OPERATOR_CHOICES = ("fitted", "learned")


def slerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation between Gaussian noise tensors (keeps their typical norm)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    omega = torch.arccos((a_flat @ b_flat / (a_flat.norm() * b_flat.norm())).clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return torch.stack([(1 - w) * a + w * b for w in weights])
    return torch.stack(
        [(torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega) for w in weights]
    )


class OneStepModel(nn.Module):
    """Sampling in one step (or T), inversion and interpolation with g_x, g_y and the time-conditioned A_t.

    Args:
        g_x, g_y: the data and noise networks (views of one conditional network are fine).
        operator: the time-conditioned ``A_t``.
        image_shape: (C, H, W).
        sampler: ``method`` (``euler``/``rk4``), ``steps`` (T, the steps B is collapsed from and the
            multi-step sampler's default), ``factored`` (keep B as ``b I + P C Q^T``), ``operator``
            (``fitted``: the closed-form transport once one is set, else the trained A_t; ``learned``).
    """

    def __init__(
        self,
        g_x: InvertibleModule,
        g_y: InvertibleModule,
        operator: LatentOperator,
        image_shape: Sequence[int],
        sampler: Mapping | None = None,
    ):
        super().__init__()
        self.g_x, self.g_y, self.operator = g_x, g_y, operator
        self.image_shape = tuple(int(s) for s in image_shape)
        self.sampler_settings = {"method": "rk4", "steps": 100, "factored": True, "operator": "fitted",
                                 **dict(sampler or {})}
        self.transport: GaussianTransportOperator | None = None
        self.transport_current = False  # fitted on these very weights (False: absent, or restored from older ones)
        self.transport_options: dict = {"noise_seed": 0}  # how the training module fits it (fit_transport defaults)
        self._one_step_cache: dict[bool, LatentOperator] = {}

    @torch.no_grad()
    def fit_transport(self, images: Tensor, **options) -> LatentFit:
        """Fit the closed-form operator of this g on training ``images`` and sample with it from now on
        (``sampler.operator=fitted``). ``options``: those of ``transport.fit_latent_transport``, defaulting to
        ``transport_options`` (the training module's, so a refit from a checkpoint reproduces its fit)."""
        options = {**self.transport_options, **options}
        dtype = next(self.parameters()).dtype
        fit = fit_latent_transport(self.g_x, self.g_y, images, self.image_shape, dtype=dtype, **options)
        self.set_transport(fit.operator, current=True)
        return fit

    def set_transport(self, transport: GaussianTransportOperator | None, current: bool = True) -> None:
        """Use this closed-form operator (``sampler.operator=fitted``) from now on; None goes back to A_t.
        ``current=False``: it was fitted on other weights (``transport_current`` tells a command to refit)."""
        self.transport, self.transport_current = transport, current and transport is not None
        self.clear_cache()

    @property
    def uses_transport(self) -> bool:
        return self.transport is not None and self.sampler_settings["operator"] == "fitted"

    @property
    def active_operator(self) -> LatentOperator:
        """The time-conditioned operator that sampling integrates and B collapses."""
        if not self.uses_transport:
            return self.operator
        reference = next(self.g_x.parameters())  # the transport is not a submodule: it follows g here
        if self.transport.left.device != reference.device or self.transport.left.dtype != reference.dtype:
            self.transport = self.transport.to(reference.device, reference.dtype)
            self.clear_cache()
        return self.transport

    @property
    def noise_network(self) -> InvertibleModule:
        """g_y, centred on the noise latents' mean when the transport is used."""
        return ShiftedFlow(self.g_y, self.active_operator.source_mean) if self.uses_transport else self.g_y

    @property
    def data_network(self) -> InvertibleModule:
        """g_x, centred on the data latents' mean when the transport is used."""
        return ShiftedFlow(self.g_x, self.active_operator.target_mean) if self.uses_transport else self.g_x

    @torch.no_grad()
    def one_step_operator(
        self, steps: int | None = None, method: str | None = None, learned: bool = False
    ) -> LatentOperator:
        """B, collapsed from ``steps`` solver steps of the active operator (or of the trained A_t: ``learned``);
        cached for the sampler's defaults (see ``clear_cache``)."""
        s = self.sampler_settings
        steps, method = steps or s["steps"], method or s["method"]
        default = steps == s["steps"] and method == s["method"]
        learned = learned or not self.uses_transport
        if default and learned in self._one_step_cache:
            return self._one_step_cache[learned]
        B = collapse(self.operator if learned else self.transport, steps, method, factored=s["factored"])
        if default:
            self._one_step_cache[learned] = B
        return B

    def clear_cache(self) -> None:
        """Forget the cached B (after the weights change, e.g. when EMA weights are swapped in)."""
        self._one_step_cache = {}

    def generator(self, B: LatentOperator | None = None) -> Linearizer:
        """The one-step generator as a Linearizer: noise -> image, ``g_x^-1(B g_y(.))`` (centred with a transport)."""
        B = self.one_step_operator() if B is None else B
        return Linearizer(self.noise_network, B, self.data_network, self.image_shape)

    @torch.no_grad()
    def latents(self, noise: Tensor, learned: bool = False) -> Tensor:
        """The data latents ``g_x(sample)`` of the one-step samples of ``noise`` (with the trained A_t: ``learned``),
        flat, without decoding them."""
        if learned or not self.uses_transport:
            return self.one_step_operator(learned=True)(self.g_y(noise).flatten(1))
        return self.one_step_operator()(self.noise_network(noise).flatten(1)) + self.active_operator.target_mean

    def noise(self, n: int, seed: int) -> Tensor:
        """``n`` standard normal inputs, sample i drawn from (seed, i): the same noise for any n >= i."""
        reference = next(self.parameters())
        return per_sample_normal(torch.arange(n), self.image_shape, seed, reference.dtype, reference.device)

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int = 1, method: str | None = None, progress: bool = False) -> Tensor:
        """Images from noise: ``steps=1`` applies B; ``steps=T > 1`` runs T solver steps."""
        if steps == 1:
            return self.generator()(noise)
        method = method or self.sampler_settings["method"]
        z = integrate(self.active_operator, self.noise_network(noise).flatten(1), steps, method, progress)
        return self.data_network.inverse(z.view(-1, *self.image_shape))

    @torch.no_grad()
    def invert(self, images: Tensor) -> Tensor:
        """The noise that generates ``images``: ``g_y^-1(B^+ g_x(images))``."""
        return self.generator().pinv(images)

    @torch.no_grad()
    def interpolate(self, first: Tensor, second: Tensor, num: int = 8) -> Tensor:
        """Images along a slerp between the inverted noises of two real images (``(num, C, H, W)``)."""
        noise = self.invert(torch.stack([first, second]))
        weights = torch.linspace(0.0, 1.0, num, dtype=noise.dtype, device=noise.device)
        return self.sample(slerp(noise[0], noise[1], weights))
