"""One-step generation, training: flow matching in the latent space of a Linearizer (LINEARIZER.md, section 3).

Training: ``x1`` data, ``x0 ~ N(0, I)``, ``t ~ U(0, 1)``,
``z_t = (1 - t) g_y(x0) + t g_x(x1)``; the time-conditioned operator ``A_t`` predicts
``g_x(x1)`` from ``z_t``. Reconstruction terms keep ``g^-1`` accurate on latents no image
produced: ``x0`` vs ``g_y^-1(g_y(x0) + eps)``, ``x1`` vs ``g_x^-1(g_x(x1) + eps)`` and ``x1`` vs
``g_x^-1(A_t z_t)``, ``eps ~ N(0, latent_noise_std^2)``; the two ``x1`` terms are LPIPS when
its weights are available (``perceptual=auto``) and MSE otherwise.

Sampling, inversion and interpolation live in ``model.py`` (``self.model``), the grids in ``grids.py``.

At every validation (with the EMA weights) the closed-form flow-matching operator of the current g is
fitted on the training latents (``transport.py``) and, with ``sampler.operator=fitted`` (the default),
samples; ``diagnostics.py`` logs where the samples stand (LINEARIZER.md, section 7).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.image import PeakSignalNoiseRatio

from lit_linearizer.applications.checks import check_operator_features, merged_loss_weights
from lit_linearizer.applications.one_step import grids
from lit_linearizer.applications.one_step.diagnostics import diagnostic_metrics, linear_probes, update_diagnostics
from lit_linearizer.applications.one_step.model import OPERATOR_CHOICES, OneStepModel
from lit_linearizer.applications.one_step.transport import (
    LatentFit,
    fit_options,
    load_transport,
    saved_transport,
    transport_settings,
)
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import to_three_channels, to_unit_range
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.metrics import pretrained
from lit_linearizer.modules.base import LinearizerLitModule
from lit_linearizer.modules.trainer_data import (
    add_digit_diagnostics,
    add_digit_fid,
    datamodule_of,
    fit_on_training_split,
    validation_images,
)
from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.sampling import METHODS

__all__ = ["DEFAULT_LOSS_WEIGHTS", "OneStepLitModule"]

DEFAULT_LOSS_WEIGHTS = {
    "flow_matching": 1.0,
    "noise_reconstruction": 1.0,
    "data_reconstruction": 1.0,
    "prediction": 1.0,
    "likelihood": 0.0,
}
# Evaluation noise streams (see LinearizerLitModule.normal): distinct so that draws are independent.
_NOISE, _TIME, _EPS_NOISE, _EPS_DATA, _EVAL_NOISE, _DEQUANTIZE, _TRANSPORT_NOISE, _CEILING_NOISE = range(8)


class OneStepLitModule(LinearizerLitModule):
    """Flow matching with ``A_t``; one-step sampling through the collapsed matrix B (``self.model``).

    Args (beyond LinearizerLitModule's):
        loss_weights: weights of ``flow_matching``, ``noise_reconstruction``,
            ``data_reconstruction``, ``prediction`` and ``likelihood``.
        latent_noise_std: std of the latent perturbation ``eps`` in the reconstruction terms.
        perceptual: ``auto`` (LPIPS if its weights are available, else MSE), ``lpips`` or ``mse``.
        sampler: ``method`` (``euler``/``rk4``), ``steps`` (T, the steps B is collapsed from
            and the multi-step sampler's default), ``factored`` (keep B as ``b I + P C Q^T``),
            ``operator`` (``fitted``: the closed-form operator of the trained g; ``learned``: A_t).
        transport: the closed-form fit: ``rank`` of the principal subspace for latents over
            transport.DENSE_LIMIT values (smaller latents keep full moments), ``max_samples`` training
            images streamed (evenly spaced), ``batch_size``.
        num_grid_samples: images per sample grid.
    """

    def __init__(
        self,
        *,
        loss_weights: Mapping[str, float] | None = None,
        latent_noise_std: float = 0.3,
        perceptual: str = "auto",
        sampler: Mapping | None = None,
        transport: Mapping | None = None,
        num_grid_samples: int = 64,
        **base_kwargs,
    ):
        super().__init__(**base_kwargs)
        self.transport_settings = transport_settings(transport)
        self.latent_fit: LatentFit | None = None  # fitted at each validation (out of the module tree: not EMA'd)
        self.transport_step: int | None = None
        self.digit_diagnostics = None
        pretrained.check_perceptual(perceptual)  # checked again, with the weights, in setup
        self.loss_weights = merged_loss_weights(loss_weights, DEFAULT_LOSS_WEIGHTS)
        self.attach_model(OneStepModel(self.g_x, self.g_y, self.operator, self.image_shape, sampler))
        self.model.transport_options = fit_options(
            self.transport_settings, self.image_shape, self._stream_seed(_TRANSPORT_NOISE)
        )
        if self.sampler_settings["method"] not in METHODS:
            raise ConfigError(f"model.sampler.method={self.sampler_settings['method']!r} is not one of {METHODS}")
        if self.sampler_settings["operator"] not in OPERATOR_CHOICES:
            raise ConfigError(
                f"model.sampler.operator={self.sampler_settings['operator']!r} is not one of {OPERATOR_CHOICES}"
            )
        if not isinstance(self.operator, LatentOperator) or not self.operator.time_conditioned:
            raise ConfigError("one-step generation needs a time-conditioned operator (e.g. TimeLowRankOperator)")
        check_operator_features(self.operator, self.image_shape)
        self.val_metrics.add_metrics(
            {name: PeakSignalNoiseRatio(data_range=1.0) for name in ("psnr_one_vs_multi", "psnr_inversion")}
        )

    @property
    def sampler_settings(self) -> dict:
        return self.model.sampler_settings

    # -- the plain model's API, also on the module --------------------------------------------------
    def generator(self, B: LatentOperator | None = None) -> Linearizer:
        return self.model.generator(B)

    def sample(self, noise: Tensor, steps: int = 1, method: str | None = None, progress: bool = False) -> Tensor:
        return self.model.sample(noise, steps, method, progress)

    def invert(self, images: Tensor) -> Tensor:
        return self.model.invert(images)

    def interpolate(self, first: Tensor, second: Tensor, num: int = 8) -> Tensor:
        return self.model.interpolate(first, second, num)

    # -- training -----------------------------------------------------------------------------------
    def _encode(self, data: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flat latents ``g_x(data)``, ``g_y(noise)`` and ``log|det dg_x/dx|`` of the data (one
        batched pass when g is shared). The log-determinants are nearly free for Glow blocks."""
        if self.hparams.network_mode == "conditional":
            cond = torch.cat([data.new_ones(len(data)), noise.new_zeros(len(noise))])
            latents, log_det = self.network.forward_and_log_det(torch.cat([data, noise]), cond)
            latents = latents.flatten(1)
            return latents[: len(data)], latents[len(data) :], log_det[: len(data)]
        data_latents, log_det = self.g_x.forward_and_log_det(data)
        return data_latents.flatten(1), self.g_y(noise).flatten(1), log_det

    def _decode(self, data_latents: Tensor, noise_latents: Tensor) -> tuple[Tensor, Tensor]:
        """``g_x^-1`` of the first batch and ``g_y^-1`` of the second; one pass when g is shared."""
        shape = (-1, *self.image_shape)
        if self.hparams.network_mode == "conditional":
            cond = torch.cat([data_latents.new_ones(len(data_latents)), noise_latents.new_zeros(len(noise_latents))])
            images = self.network.inverse(torch.cat([data_latents, noise_latents]).view(shape), cond)
            return images[: len(data_latents)], images[len(data_latents) :]
        return self.g_x.inverse(data_latents.view(shape)), self.g_y.inverse(noise_latents.view(shape))

    def _perceptual(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.perceptual_loss is None:
            return F.mse_loss(prediction, target)
        return self.perceptual_loss(prediction, target)

    def model_step(self, batch):
        x1 = batch["image"]
        n = x1.shape[0]
        features = math.prod(self.image_shape)
        x0 = self.normal(batch, self.image_shape, _NOISE)
        t = self.uniform(batch, _TIME)
        if self.loss_weights["likelihood"]:
            # Uniform dequantisation: a density on 8-bit pixels (and MNIST's flat background)
            # could otherwise grow without bound.
            x1 = x1 + (self.uniform(batch, _DEQUANTIZE, self.image_shape) - 0.5) * (2.0 / 255.0)
        z1, z0, log_det = self._encode(x1, x0)
        zt = (1.0 - t)[:, None] * z0 + t[:, None] * z1
        prediction = self.operator(zt, t)
        std = self.hparams.latent_noise_std
        eps_noise = std * self.normal(batch, (features,), _EPS_NOISE)
        eps_data = std * self.normal(batch, (features,), _EPS_DATA)
        decoded_data, decoded_noise = self._decode(torch.cat([z1 + eps_data, prediction]), z0 + eps_noise)
        terms = {
            "flow_matching": F.mse_loss(prediction, z1),
            "noise_reconstruction": F.mse_loss(decoded_noise, x0),
            "data_reconstruction": self._perceptual(decoded_data[:n], x1),
            "prediction": self._perceptual(decoded_data[n:], x1),
            # Negative log-likelihood per dimension of the data under g_x and a standard normal.
            "likelihood": 0.5 * (z1 * z1).mean() + 0.5 * math.log(2 * math.pi) - log_det.mean() / features,
        }
        terms["loss"] = sum(self.loss_weights[name] * value for name, value in terms.items())
        return terms

    # -- metrics ------------------------------------------------------------------------------------
    def setup_metrics(self) -> None:
        settings = self.metric_settings
        net, backbone = settings.get("lpips_net", "alex"), settings.get("lpips_backbone_weights")
        self.pretrained.setup_perceptual_loss(self.hparams.perceptual, self.device)
        if settings.get("inception_fid", True):
            weights = settings.get("inception_weights")
            self.add_pretrained_metric("fid_inception", lambda: pretrained.inception_fid(weights))
        for name in ("lpips_one_vs_multi", "lpips_inversion"):
            self.add_pretrained_metric(name, lambda: pretrained.lpips_metric(net, backbone))
        if settings.get("domain_classifier") == "mnist":
            add_digit_fid(self)
            if self.digit_diagnostics is None:
                self.digit_diagnostics = add_digit_diagnostics(self)

    def on_validation_epoch_start(self) -> None:
        self.model.clear_cache()  # weights changed (and EMA weights are swapped in)
        if not self.trainer.sanity_checking:
            self.fit_transport()
        metrics = diagnostic_metrics(self.latent_fit, self.digit_diagnostics, self.model.uses_transport)
        self.diagnostics = {name: metric.to(self.device) for name, metric in metrics.items()}

    @torch.no_grad()
    def fit_transport(self) -> LatentFit | None:
        """Fit the closed-form operator of the current g on the training images (every process the same fit)."""
        fit = fit_on_training_split(self, int(self.transport_settings["max_samples"]), self.model.fit_transport)
        if fit is not None:
            self.latent_fit, self.transport_step = fit, self.global_step
        return fit

    def evaluation_step(self, batch, batch_idx):
        generator = self.model.generator()
        noise = self.normal(batch, self.image_shape, _EVAL_NOISE)
        one_step = to_unit_range(generator(noise))
        multi_step = to_unit_range(self.model.sample(noise, steps=self.sampler_settings["steps"]))
        real = to_unit_range(batch["image"])
        reconstruction = to_unit_range(generator(generator.pinv(batch["image"])))
        self.val_metrics["psnr_one_vs_multi"].update(one_step, multi_step)
        self.val_metrics["psnr_inversion"].update(reconstruction, real)
        self.pretrained.update_fids(real, one_step)
        ceiling_noise = self.normal(batch, (math.prod(self.image_shape),), _CEILING_NOISE)
        update_diagnostics(
            self.diagnostics, self.model, self.latent_fit, batch["image"], noise, ceiling_noise, one_step
        )
        lpips = self.pretrained.metrics
        if "lpips_one_vs_multi" in lpips:
            lpips["lpips_one_vs_multi"].update(to_three_channels(one_step), to_three_channels(multi_step))
        if "lpips_inversion" in lpips:
            lpips["lpips_inversion"].update(to_three_channels(reconstruction), to_three_channels(real))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.model.clear_cache()

    # -- the fitted operator in checkpoints -----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the base refuses to save NaN/inf weights
        # Kept beside the state_dict: the fit is a function of the (EMA) weights, not something EMA averages.
        if self.latent_fit is not None:
            checkpoint["latent_transport"] = saved_transport(self.latent_fit, self.transport_step)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # None: written before the fit existed (or before the first validation): A_t until a refit
        self.transport_step = load_transport(self.model, checkpoint)

    # -- grids and the final report -----------------------------------------------------------------
    def sample_grids(self) -> dict[str, Tensor]:
        n = self.hparams.num_grid_samples
        noise = self.model.noise(n, self._stream_seed(_EVAL_NOISE))
        return grids.sample_grids(self.model, noise, validation_images(self, 2 * max(1, int(math.sqrt(n)))))

    @torch.no_grad()
    def final_report(self) -> dict[str, float]:
        """Linear probes on g_x's latents against raw pixels, on labelled in-memory splits (MNIST)."""
        datamodule = datamodule_of(self)
        if datamodule is None or datamodule.train_dataset is None:
            return {}
        train, val = datamodule.train_dataset, datamodule.val_dataset
        if getattr(train, "labels", None) is None or not hasattr(train, "images") or train.labels.unique().numel() < 2:
            return {}
        was_training = self.training
        self.eval()
        report = linear_probes(self.g_x, train.images, train.labels, val.images, val.labels, self.device)
        self.train(was_training)
        return report
