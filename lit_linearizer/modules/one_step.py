"""One-step generation: flow matching in the latent space of a Linearizer (LINEARIZER.md, section 3).

Training: ``x1`` data, ``x0 ~ N(0, I)``, ``t ~ U(0, 1)``,
``z_t = (1 - t) g_y(x0) + t g_x(x1)``; the time-conditioned operator ``A_t`` predicts
``g_x(x1)`` from ``z_t``. Reconstruction terms keep ``g^-1`` accurate on latents no image
produced: ``x0`` vs ``g_y^-1(g_y(x0) + eps)``, ``x1`` vs ``g_x^-1(g_x(x1) + eps)`` and ``x1`` vs
``g_x^-1(A_t z_t)``, ``eps ~ N(0, latent_noise_std^2)``; the two ``x1`` terms are LPIPS when
its weights are available (``perceptual=auto``) and MSE otherwise.

Sampling: the latent ODE is linear, so T solver steps collapse into one matrix B and
``x1 = g_x^-1(B g_y(x0))`` is the Linearizer ``(g_y, B, g_x)``. Its pseudo-inverse maps real
images back to noise (inversion).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.image import PeakSignalNoiseRatio
from torchvision.utils import make_grid

from lit_linearizer.errors import ConfigError
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.metrics import pretrained
from lit_linearizer.metrics.probe import linear_probe_accuracy
from lit_linearizer.modules.base import PERCEPTUAL_CHOICES, LinearizerLitModule, to_unit_range
from lit_linearizer.operators.base import LatentOperator
from lit_linearizer.randomness import per_sample_normal
from lit_linearizer.sampling import METHODS, collapse, integrate

DEFAULT_LOSS_WEIGHTS = {
    "flow_matching": 1.0,
    "noise_reconstruction": 1.0,
    "data_reconstruction": 1.0,
    "prediction": 1.0,
    "likelihood": 0.0,
}
# Evaluation noise streams (see LinearizerLitModule.normal): distinct so that draws are independent.
_NOISE, _TIME, _EPS_NOISE, _EPS_DATA, _EVAL_NOISE, _DEQUANTIZE = range(6)


def slerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation between Gaussian noise tensors (keeps their typical norm)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    omega = torch.arccos((a_flat @ b_flat / (a_flat.norm() * b_flat.norm())).clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return torch.stack([(1 - w) * a + w * b for w in weights])
    return torch.stack([(torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega) for w in weights])


class OneStepLitModule(LinearizerLitModule):
    """Flow matching with ``A_t``; one-step sampling through the collapsed matrix B.

    Args (beyond LinearizerLitModule's):
        loss_weights: weights of ``flow_matching``, ``noise_reconstruction``,
            ``data_reconstruction`` and ``prediction``.
        latent_noise_std: std of the latent perturbation ``eps`` in the reconstruction terms.
        perceptual: ``auto`` (LPIPS if its weights are available, else MSE), ``lpips`` or ``mse``.
        sampler: ``method`` (``euler``/``rk4``), ``steps`` (T, the steps B is collapsed from
            and the multi-step sampler's default), ``factored`` (keep B as ``b I + P C Q^T``).
        num_grid_samples: images per sample grid.
    """

    def __init__(
        self,
        *,
        loss_weights: Mapping[str, float] | None = None,
        latent_noise_std: float = 0.3,
        perceptual: str = "auto",
        sampler: Mapping | None = None,
        num_grid_samples: int = 64,
        **base_kwargs,
    ):
        super().__init__(**base_kwargs)
        if perceptual not in PERCEPTUAL_CHOICES:  # checked again, with the weights, in setup
            raise ConfigError(f"model.perceptual={perceptual!r} is not one of {PERCEPTUAL_CHOICES}")
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ConfigError(f"unknown model.loss_weights keys {sorted(unknown)}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}")
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **dict(loss_weights or {})}
        self.sampler_settings = {"method": "rk4", "steps": 100, "factored": True, **dict(sampler or {})}
        if self.sampler_settings["method"] not in METHODS:
            raise ConfigError(f"model.sampler.method={self.sampler_settings['method']!r} is not one of {METHODS}")
        if not isinstance(self.operator, LatentOperator) or not self.operator.time_conditioned:
            raise ConfigError("one-step generation needs a time-conditioned operator (e.g. TimeLowRankOperator)")
        if self.operator.in_features != math.prod(self.image_shape):
            raise ConfigError(
                f"model.operator has {self.operator.in_features} features but images have "
                f"{math.prod(self.image_shape)} values {self.image_shape}"
            )
        self.val_psnr_one_vs_multi = PeakSignalNoiseRatio(data_range=1.0)
        self.val_psnr_inversion = PeakSignalNoiseRatio(data_range=1.0)
        self._one_step_cache: LatentOperator | None = None

    # -- training ---------------------------------------------------------------------------
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

    # -- sampling and inversion ---------------------------------------------------------------
    @torch.no_grad()
    def one_step_operator(self, steps: int | None = None, method: str | None = None) -> LatentOperator:
        """B, collapsed from ``steps`` solver steps (cached for the sampler's defaults)."""
        s = self.sampler_settings
        steps, method = steps or s["steps"], method or s["method"]
        default = steps == s["steps"] and method == s["method"]
        if default and self._one_step_cache is not None:
            return self._one_step_cache
        B = collapse(self.operator, steps, method, factored=s["factored"])
        if default:
            self._one_step_cache = B
        return B

    def generator(self, B: LatentOperator | None = None) -> Linearizer:
        """The one-step generator as a Linearizer: noise -> image, ``g_x^-1(B g_y(.))``."""
        return Linearizer(self.g_y, self.one_step_operator() if B is None else B, self.g_x, self.image_shape)

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int = 1, method: str | None = None, progress: bool = False) -> Tensor:
        """Images from noise: ``steps=1`` applies B; ``steps=T > 1`` runs T solver steps."""
        if steps == 1:
            return self.generator()(noise)
        z = integrate(self.operator, self.g_y(noise).flatten(1), steps, method or self.sampler_settings["method"], progress)
        return self.g_x.inverse(z.view(-1, *self.image_shape))

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

    def on_validation_epoch_start(self) -> None:
        self._one_step_cache = None  # weights changed (and EMA weights are swapped in)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._one_step_cache = None

    # -- metrics ------------------------------------------------------------------------------
    def setup_metrics(self) -> None:
        settings = self.metric_settings
        net = settings.get("lpips_net", "alex")
        backbone = settings.get("lpips_backbone_weights")
        self.setup_perceptual_loss(self.hparams.perceptual)
        if settings.get("inception_fid", True):
            self.add_pretrained_metric("fid_inception", lambda: pretrained.inception_fid(settings.get("inception_weights")))
        for name in ("lpips_one_vs_multi", "lpips_inversion"):
            self.add_pretrained_metric(name, lambda: pretrained.lpips_metric(net, backbone))
        if settings.get("domain_classifier") == "mnist":
            self.add_digit_fid()

    def evaluation_step(self, batch, batch_idx):
        x1 = batch["image"]
        generator = self.generator()
        noise = self.normal(batch, self.image_shape, _EVAL_NOISE)
        one_step = to_unit_range(generator(noise))
        multi_step = to_unit_range(self.sample(noise, steps=self.sampler_settings["steps"]))
        real = to_unit_range(x1)
        reconstruction = to_unit_range(generator(generator.pinv(x1)))
        self.val_psnr_one_vs_multi.update(one_step, multi_step)
        self.val_psnr_inversion.update(reconstruction, real)
        rgb = pretrained.to_three_channels
        for name, metric in self.pretrained_metrics.items():
            if name.startswith("fid"):
                metric.update(rgb(real), real=True)
                metric.update(rgb(one_step), real=False)
            elif name == "lpips_one_vs_multi":
                metric.update(rgb(one_step), rgb(multi_step))
            elif name == "lpips_inversion":
                metric.update(rgb(reconstruction), rgb(real))

    def evaluation_metrics(self):
        values = {
            "psnr_one_vs_multi": self.val_psnr_one_vs_multi.compute(),
            "psnr_inversion": self.val_psnr_inversion.compute(),
        }
        self.val_psnr_one_vs_multi.reset()
        self.val_psnr_inversion.reset()
        for name, metric in self.pretrained_metrics.items():
            values[name] = metric.compute()
            metric.reset()
        return values

    # -- grids and the final report -------------------------------------------------------------
    def _validation_images(self, n: int) -> Tensor | None:
        dataset = getattr(getattr(self._trainer, "datamodule", None), "val_dataset", None)
        if dataset is None:
            return None
        # Evenly spaced through the split: splits are often ordered (by class, by identity).
        indices = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).long().tolist()
        return torch.stack([dataset[i]["image"] for i in indices]).to(self.device)

    @torch.no_grad()
    def sample_grids(self, images: Tensor | None = None) -> dict[str, Tensor]:
        n = self.hparams.num_grid_samples
        nrow = max(1, int(math.sqrt(n)))
        dtype = next(self.parameters()).dtype
        noise = per_sample_normal(torch.arange(n), self.image_shape, self._stream_seed(_EVAL_NOISE), dtype, self.device)
        steps = self.sampler_settings["steps"]
        grids = {
            "one_step": make_grid(to_unit_range(self.sample(noise)), nrow=nrow),
            f"{steps}_step": make_grid(to_unit_range(self.sample(noise, steps=steps)), nrow=nrow),
        }
        images = self._validation_images(nrow * 2) if images is None else images
        if images is not None and len(images) >= 2:
            pairs = images[: 2 * (len(images) // 2)]
            reconstruction = self.generator()(self.invert(pairs))
            grids["inversion"] = make_grid(to_unit_range(torch.cat([pairs, reconstruction])), nrow=len(pairs))
            rows = [self.interpolate(pairs[2 * i], pairs[2 * i + 1], nrow) for i in range(min(4, len(pairs) // 2))]
            grids["interpolation"] = make_grid(to_unit_range(torch.cat(rows)), nrow=nrow)
        return grids

    @torch.no_grad()
    def sample_for_cli(self, n: int = 64, steps: int = 1, method: str | None = None, seed: int = 0, source: str = "noise", **_) -> dict[str, Tensor]:
        """``linearizer sample``: a grid of ``n`` samples from noise, in ``steps`` steps."""
        if source != "noise":
            raise ConfigError(f"source={source!r}: one-step generation samples from noise only (source=noise)")
        dtype = next(self.parameters()).dtype
        noise = per_sample_normal(torch.arange(n), self.image_shape, seed, dtype, self.device)
        images = self.sample(noise, steps=steps, method=method, progress=True)
        name = "samples_one_step" if steps == 1 else f"samples_{steps}_step_{method or self.sampler_settings['method']}"
        return {name: make_grid(to_unit_range(images), nrow=max(1, int(math.sqrt(n))))}

    @torch.no_grad()
    def final_report(self) -> dict[str, float]:
        """Linear probes (seed 002): logistic regression on g_x(x) latents vs on raw pixels."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or datamodule.train_dataset is None:
            return {}
        train, val = datamodule.train_dataset, datamodule.val_dataset
        # Probes need labelled in-memory splits (MNIST); photo folders have no classes.
        if getattr(train, "labels", None) is None or not hasattr(train, "images") or train.labels.unique().numel() < 2:
            return {}

        def latents(images: Tensor) -> Tensor:
            return torch.cat([self.g_x(chunk.to(self.device)).flatten(1).cpu() for chunk in images.split(500)])

        was_training = self.training
        self.eval()
        report = {
            "probe_accuracy_latent": linear_probe_accuracy(latents(train.images), train.labels, latents(val.images), val.labels),
            "probe_accuracy_pixels": linear_probe_accuracy(train.images, train.labels, val.images, val.labels),
        }
        self.train(was_training)
        return report
