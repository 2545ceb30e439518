"""The idempotent Linearizer (IGN), training: a global projector by construction (LINEARIZER.md, section 5).

``f(x) = g^-1(P g(x))`` with one shared invertible g and a latent projection ``P^2 = P``, so
``f(f(x)) = f(x)`` for *every* x at every step of training: f projects any input onto the manifold
``M = g^-1(range P)`` in one pass. Projections (``model/operator=...``): ``diagonal_projection``
(0/1 mask from a straight-through estimator, learned rank), ``orthogonal_projection`` (``U U^T``)
and ``oblique_projection`` (``U V^T`` with ``V^T U = I``).

Training losses (weights in ``loss_weights``; ``D`` is ``distance``, MSE or L1, on pixels):

- ``reconstruction``: ``D(f(x), x)`` on data, so the data lie on M.
- ``expected_rank``: the expected rank of P over N (a constant for the fixed-rank projections): keeps M small.
- ``latent_match``: sliced Wasserstein-2 (squared, per kept dimension) between ``P g(z)`` and ``P g(x)``
  (data latents detached), ``z`` the source noise: makes ``f(z)`` distributed like the data.
- ``denoising``: ``D(f(x + s eps), x)``, ``s ~ U(0, corruption_std)``: inputs near the data project to
  the data they came from.
- ``idempotence`` and ``tightness``: IGN's terms (Shocher et al. 2024) with the paper's gradient
  routing (a frozen copy f' in ``L_idem = D(f'(f(z)), f(z))``; ``L_tight = -D(f(y), y)``, ``y = f(z)``
  detached, soft-clamped to ``tanh(L_tight / (a L_rec)) a L_rec``). Here f is idempotent by
  construction, so both are zero with zero gradient up to roundoff and default to weight 0;
  docs/idempotent.md says why, and what replaces them.

The projector itself (project, generate, corrupt) is ``model.py`` (``self.model``), its grids ``grids.py``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Mapping

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.image import PeakSignalNoiseRatio

from lit_linearizer.applications.checks import check_operator_features, merged_loss_weights, merged_settings
from lit_linearizer.applications.idempotent import grids
from lit_linearizer.applications.idempotent.model import IdempotentModel
from lit_linearizer.applications.idempotent.transport import coordinate_gaps
from lit_linearizer.errors import ConfigError
from lit_linearizer.flows.actnorm import ActNorm
from lit_linearizer.images import to_three_channels, to_unit_range
from lit_linearizer.metrics import pretrained
from lit_linearizer.modules.base import LinearizerLitModule
from lit_linearizer.modules.trainer_data import (
    add_digit_diagnostics,
    add_digit_fid,
    fit_on_training_split,
    validation_images,
)
from lit_linearizer.operators.diagonal import DiagonalProjection
from lit_linearizer.operators.oblique import ObliqueProjection
from lit_linearizer.operators.projection import OrthogonalProjection

__all__ = ["DEFAULT_LOSS_WEIGHTS", "IdempotentLitModule", "sliced_wasserstein"]

PROJECTIONS = (DiagonalProjection, OrthogonalProjection, ObliqueProjection)
DISTANCES = ("mse", "l1")
DEFAULT_LOSS_WEIGHTS = {
    "reconstruction": 1.0,
    "expected_rank": 0.0,
    "latent_match": 0.0,
    "denoising": 0.0,
    "idempotence": 0.0,
    "tightness": 0.0,
}
# Evaluation noise streams (see LinearizerLitModule.normal): distinct so that draws are independent.
_NOISE, _SIGMA, _CORRUPTION, _EVAL_NOISE, _EVAL_CORRUPTION, _GRID_NOISE, _FIT_NOISE, _CEILING_NOISE = range(8)
DEFAULT_PROJECTION_FIT = {"enabled": True, "stay": 10.0, "max_samples": 20000}


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> Tensor:
    """Squared sliced 2-Wasserstein distance of two equal-size clouds ``(B, N)`` along ``directions`` ``(N, L)``."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs clouds of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    projected_a = torch.sort(a @ directions, dim=0).values
    projected_b = torch.sort(b @ directions, dim=0).values
    return (projected_a - projected_b).pow(2).mean()


class IdempotentLitModule(LinearizerLitModule):
    """``f = g^-1 P g`` with ``P^2 = P``: idempotent everywhere; generation is ``f(noise)`` (``self.model``).

    Args (beyond LinearizerLitModule's; ``network_mode`` must be ``shared``):
        loss_weights: weights of ``reconstruction``, ``expected_rank``, ``latent_match``,
            ``denoising``, ``idempotence`` and ``tightness`` (module docstring).
        distance: D of the pixel-space terms, ``mse`` or ``l1``.
        noise_std: std of the Gaussian source noise z (training and generation).
        corruption_std: largest std of the Gaussian corruption in ``denoising`` (drawn
            uniformly below it); evaluation and grids corrupt with exactly this std.
        num_projections: random directions of the sliced Wasserstein distance.
        tightness_clamp: ``a`` of IGN's soft clamp of the tightness term.
        num_grid_samples: images per validation grid.
        projection_fit: at each validation, refit an oblique P's collapse direction on the latents' moments
            (``transport.py``): ``enabled``, ``stay`` (how much the data's coordinates may move),
            ``max_samples`` (training images streamed).
    """

    def __init__(
        self,
        *,
        loss_weights: Mapping[str, float] | None = None,
        distance: str = "mse",
        noise_std: float = 1.0,
        corruption_std: float = 0.5,
        num_projections: int = 128,
        tightness_clamp: float = 1.5,
        num_grid_samples: int = 32,
        projection_fit: Mapping | None = None,
        **base_kwargs,
    ):
        base_kwargs.setdefault("network_mode", "shared")
        if base_kwargs["network_mode"] != "shared":
            raise ConfigError(
                f"model.network_mode={base_kwargs['network_mode']!r}: an idempotent Linearizer needs one g on both "
                "sides (g_x = g_y), use network_mode=shared"
            )
        super().__init__(**base_kwargs)
        self.loss_weights = merged_loss_weights(loss_weights, DEFAULT_LOSS_WEIGHTS)
        if distance not in DISTANCES:
            raise ConfigError(f"model.distance={distance!r} is not one of {DISTANCES}")
        if not isinstance(self.operator, PROJECTIONS):
            names = ", ".join(cls.__name__ for cls in PROJECTIONS)
            kind = type(self.operator).__name__
            raise ConfigError(f"model.operator is a {kind}; an IGN needs a projection ({names})")
        check_operator_features(self.operator, self.image_shape)
        self.val_metrics.add_metrics(
            {
                "psnr_reconstruction": PeakSignalNoiseRatio(data_range=1.0),
                "psnr_noisy": PeakSignalNoiseRatio(data_range=1.0),
                "psnr_denoised": PeakSignalNoiseRatio(data_range=1.0),
                "idempotence_error": MaxMetric(),
            }
        )
        self.attach_model(IdempotentModel(self.network, self.operator, self.image_shape, noise_std, corruption_std))
        self.fit_settings = merged_settings("projection_fit", projection_fit, DEFAULT_PROJECTION_FIT)
        self.latent_moments = None  # (data, noise) latent moments of the latest fit
        self.digit_diagnostics = None

    # -- the plain model's API, also on the module --------------------------------------------------
    @property
    def rank(self) -> int:
        """The rank of P: the dimension of the manifold ``g^-1(range P)``."""
        return self.model.rank

    def project(self, x: Tensor) -> Tensor:
        """``f(x) = g^-1(P g(x))``."""
        return self.model.project(x)

    # -- training -----------------------------------------------------------------------------------
    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        return F.mse_loss(a, b) if self.hparams.distance == "mse" else F.l1_loss(a, b)

    def _frozen_project(self, x: Tensor) -> Tensor:
        """f with its parameters detached (IGN's frozen copy f'): gradients reach only ``x``."""
        linearizer = self.model.linearizer(fitted=False)
        detached = {name: p.detach() for name, p in linearizer.named_parameters()}
        return torch.func.functional_call(linearizer, detached, (x,))

    def _initialise_actnorm(self, x: Tensor) -> None:
        """ActNorm's data-dependent init from data alone (not from the noise batched beside it)."""
        if self.training and any(isinstance(m, ActNorm) and not bool(m.initialized) for m in self.network.modules()):
            with torch.no_grad():
                self.network(x)

    def _directions(self, features: int, like: Tensor) -> Tensor:
        """Unit directions ``(N, L)``: from the training generator, or fixed in evaluation."""
        shape = (features, int(self.hparams.num_projections))
        if self.training and self.noise_generator is not None:
            d = torch.randn(shape, generator=self.noise_generator, dtype=like.dtype, device=self.noise_generator.device)
        else:
            d = torch.randn(shape, generator=torch.Generator().manual_seed(self._stream_seed(99)), dtype=like.dtype)
        d = d.to(like.device)
        return d / d.norm(dim=0, keepdim=True)

    # -- training -------------------------------------------------------------------------------
    def model_step(self, batch):
        x = batch["image"]
        n = x.shape[0]
        w = self.loss_weights
        shape = (-1, *self.image_shape)
        features = math.prod(self.image_shape)
        self._initialise_actnorm(x)

        inputs, decode_parts = [x], ["data"]
        if w["denoising"]:
            sigma = self.hparams.corruption_std * self.uniform(batch, _SIGMA)
            noisy = x + sigma.view(-1, 1, 1, 1) * self.normal(batch, self.image_shape, _CORRUPTION)
            inputs.append(noisy)
            decode_parts.append("noisy")
        uses_noise = w["latent_match"] or w["idempotence"] or w["tightness"]
        if uses_noise:
            z = self.hparams.noise_std * self.normal(batch, self.image_shape, _NOISE)
            inputs.append(z)
        latents = self.network(torch.cat(inputs)).flatten(1)
        projected = self.operator(latents)
        parts = dict(zip(["data", "noisy", "noise"] if w["denoising"] else ["data", "noise"], projected.split(n)))
        if w["idempotence"] or w["tightness"]:
            decode_parts.append("noise")
        decoded_all = self.network.inverse(torch.cat([parts[p] for p in decode_parts]).view(shape))
        decoded = dict(zip(decode_parts, decoded_all.split(n)))

        reconstruction = self._distance(decoded["data"], x)
        terms = {"reconstruction": reconstruction, "expected_rank": self.model.expected_rank_fraction()}
        if w["denoising"]:
            terms["denoising"] = self._distance(decoded["noisy"], x)
        if w["latent_match"]:
            data_coordinates = self.operator(latents[:n].detach())
            match = sliced_wasserstein(parts["noise"], data_coordinates, self._directions(features, latents))
            terms["latent_match"] = match * features / max(self.rank, 1)  # per kept dimension
        if w["idempotence"] or w["tightness"]:
            fz = decoded["noise"]
            if w["idempotence"]:
                terms["idempotence"] = self._distance(self._frozen_project(fz), fz)
            if w["tightness"]:
                y = fz.detach()
                raw = -self._distance(self.model.project(y, fitted=False), y)
                scale = self.hparams.tightness_clamp * reconstruction.clamp_min(1e-12)
                terms["tightness"] = torch.tanh(raw / scale) * scale
        terms["loss"] = sum(w[name] * value for name, value in terms.items())
        terms["rank"] = x.new_tensor(float(self.rank))  # diagnostic, not optimised
        return terms

    # -- metrics ------------------------------------------------------------------------------------
    def setup_metrics(self) -> None:
        settings = self.metric_settings
        if settings.get("inception_fid", True):
            weights = settings.get("inception_weights")
            self.add_pretrained_metric("fid_inception", lambda: pretrained.inception_fid(weights))
        if settings.get("domain_classifier") == "mnist":
            add_digit_fid(self)
            if self.digit_diagnostics is None:
                self.digit_diagnostics = add_digit_diagnostics(self)

    def on_validation_epoch_start(self) -> None:
        if self.fit_settings["enabled"] and not self.trainer.sanity_checking:
            fit = partial(self.model.fit_projection, noise_seed=self._stream_seed(_FIT_NOISE),
                          stay=float(self.fit_settings["stay"]))
            self.latent_moments = fit_on_training_split(self, int(self.fit_settings["max_samples"]), fit)
        metrics = {}
        if self.digit_diagnostics is not None:
            metrics["recognisable"] = self.digit_diagnostics.recognisable()
            if self.latent_moments is not None:
                metrics["fid_mnist_classifier_latent_gaussian"] = self.digit_diagnostics.fid()
        self.diagnostics = {name: metric.to(self.device) for name, metric in metrics.items()}

    def evaluation_step(self, batch, batch_idx):
        x = batch["image"]
        n = x.shape[0]
        z = self.hparams.noise_std * self.normal(batch, self.image_shape, _EVAL_NOISE)
        noisy = x + self.hparams.corruption_std * self.normal(batch, self.image_shape, _EVAL_CORRUPTION)
        fz, fx, f_noisy = self.project(torch.cat([z, x, noisy])).split(n)
        ffz = self.project(fz)
        relative = (ffz - fz).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1).clamp_min(1e-30)
        self.val_metrics["idempotence_error"].update(relative.max())
        real = to_unit_range(x)
        self.val_metrics["psnr_reconstruction"].update(to_unit_range(fx), real)
        self.val_metrics["psnr_noisy"].update(to_unit_range(noisy), real)
        self.val_metrics["psnr_denoised"].update(to_unit_range(f_noisy), real)
        self.pretrained.update_fids(real, to_unit_range(fz))
        self._update_diagnostics(batch, real, to_unit_range(fz))

    def _update_diagnostics(self, batch, real: Tensor, generated: Tensor) -> None:
        """Recognisable rate of f(noise); the ceiling: the data coordinates' own Gaussian, decoded."""
        if "recognisable" in self.diagnostics:
            self.diagnostics["recognisable"].update(generated)
        if "fid_mnist_classifier_latent_gaussian" in self.diagnostics:
            noise = self.normal(batch, (self.rank,), _CEILING_NOISE)
            ceiling = self.model.range_gaussian(self.latent_moments[0], noise)
            fid = self.diagnostics["fid_mnist_classifier_latent_gaussian"]
            fid.update(to_three_channels(real), real=True)
            fid.update(to_three_channels(to_unit_range(ceiling)), real=False)

    def derived_metrics(self, values):
        derived = {"rank": float(self.rank), "projection_error": self.model.projection_error()}
        if self.latent_moments is not None:  # noise vs data coordinates in P's range (analytic, from the moments)
            for suffix, projection in (("", self.model.projection), ("_learned", self.operator)):
                gaps = coordinate_gaps(projection.factors()[1].detach().double(), *self.latent_moments)
                derived.update({f"coordinate_{k}_gap{suffix}": float(v) for k, v in gaps.items()})
        return derived

    # -- the moment-fitted projection in checkpoints -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the base refuses to save NaN/inf weights
        if self.model.fitted_projection is not None:
            checkpoint["fitted_projection"] = self.model.fitted_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("fitted_projection") is not None:
            self.model.load_fitted_state(checkpoint["fitted_projection"])

    # -- grids ----------------------------------------------------------------------------------------
    def sample_grids(self) -> dict[str, Tensor]:
        n = int(self.hparams.num_grid_samples)
        seed = self._stream_seed(_GRID_NOISE)
        noise, samples = self.model.generate(max(n, 64), seed)
        result = grids.input_grids(self.model, noise[:n], validation_images(self, n), seed=seed)
        result["samples"] = grids.samples_grid(samples[:64], nrow=8)
        return result
