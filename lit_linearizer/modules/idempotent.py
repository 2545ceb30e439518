"""Linear idempotent generative network: a global projector by construction (LINEARIZER.md, section 5).

``f(x) = g^-1(P g(x))`` with one shared invertible g and a latent projection ``P^2 = P``.
Then ``f(f(x)) = g^-1(P g(g^-1(P g(x)))) = g^-1(P^2 g(x)) = f(x)`` for *every* x, at every
step of training: f is a projector onto the manifold ``M = g^-1(range P)``, and any input
(Gaussian noise, uniform noise, a corrupted image, another dataset) is mapped onto M in one
pass. Only roundoff separates ``f(f(x))`` from ``f(x)`` (``g^-1(g(y)) = y`` and ``P^2 = P``
in floating point).

Projections (``model/operator=...``): ``diagonal_projection`` (0/1 mask from a straight-through
estimator, learned rank), ``orthogonal_projection`` (``U U^T``, fixed rank) and
``oblique_projection`` (``U V^T`` with ``V^T U = I``, fixed rank, learned collapse direction).

Training losses (weights in ``loss_weights``; ``D`` is ``distance``, MSE or L1, on pixels):

- ``reconstruction``: ``D(f(x), x)`` on data, so the data lie on M.
- ``expected_rank``: the expected rank of P over N (the mean keep-probability of the diagonal
  STE; a constant for the fixed-rank projections). It keeps M small: the part of IGN's
  *tightness* that survives here (see below).
- ``latent_match``: sliced Wasserstein-2 (squared, per kept dimension) between ``P g(z)`` and
  ``P g(x)`` (data latents detached), ``z`` the source noise. ``P g(z)`` and ``P g(x)`` are
  the induced-space coordinates of ``f(z)`` and ``f(x) ~ x``; g is a bijection, so matching
  them makes ``f(z)`` distributed like the data. This replaces IGN's generative signal.
- ``denoising``: ``D(f(x + s eps), x)``, ``s ~ U(0, corruption_std)``: inputs near the data
  project to the data they came from, not just to some point of M.
- ``idempotence`` and ``tightness``: IGN's terms (Shocher et al. 2024), implemented as in the
  paper's algorithm: ``L_idem = D(f'(f(z)), f(z))`` with the outer f' a frozen copy
  (gradients through the inner f), ``L_tight = -D(f(y), y)``, ``y = f(z)`` detached
  (gradients through the outer f), soft-clamped to ``tanh(L_tight / (a L_rec)) a L_rec``.
  (The issue text swaps which application carries the gradient; the paper's code is
  followed here.)

What IGN's terms mean when f is idempotent by construction. In IGN, ``delta(y) = D(f(y), y)``
is an energy that is zero on f's fixed points; ``L_idem`` moves ``f(z)`` to where the energy is
zero and ``L_tight`` raises the energy at ``f(z)`` (shrinks the manifold), a GAN-like game
whose equilibrium is ``f(z) ~ data``. Here ``f(z)`` is *always* a fixed point, for any
weights: both terms are identically zero up to roundoff. Their gradients vanish too: the
frozen copy equals f, so ``f(z)`` is a global minimiser of ``y -> D(f'(y), y)`` (and
``f(y)`` of ``theta -> -D(f_theta(y), y)`` a maximiser), where the gradient of a smooth D is
exactly zero; with L1 it is a sign of roundoff residues, i.e. noise. So both default to
weight 0 (kept, with the paper's routing, for ablations, and their values are a free live
check of exact idempotence). What they were *for* is provided otherwise: "f(z) lies on the
manifold" holds by construction; "the manifold is tight" becomes the rank of P
(``expected_rank``); and "f(z) is distributed like the data", IGN's equilibrium, becomes an
explicit distribution match in the induced space (``latent_match``), where M is the linear
subspace ``range P``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.image import PeakSignalNoiseRatio
from torchvision.utils import make_grid

from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.flows.actnorm import ActNorm
from lit_linearizer.metrics import pretrained
from lit_linearizer.modules.base import LinearizerLitModule, to_unit_range
from lit_linearizer.operators.diagonal import DiagonalProjection
from lit_linearizer.operators.oblique import ObliqueProjection
from lit_linearizer.operators.projection import OrthogonalProjection
from lit_linearizer.randomness import per_sample_normal

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
_NOISE, _SIGMA, _CORRUPTION, _EVAL_NOISE, _EVAL_CORRUPTION, _GRID_NOISE = range(6)
_GRID_ROW = 16  # images per row in the input / f / f(f) grids


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> Tensor:
    """Squared sliced 2-Wasserstein distance of two equal-size point clouds ``(B, N)`` along ``directions`` ``(N, L)``."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs clouds of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    projected_a = torch.sort(a @ directions, dim=0).values
    projected_b = torch.sort(b @ directions, dim=0).values
    return (projected_a - projected_b).pow(2).mean()


def occlude(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image with a random square (half the side) replaced by uniform noise in [-1, 1]."""
    out = images.clone()
    _, _, h, w = images.shape
    side_h, side_w = max(1, h // 2), max(1, w // 2)
    for i in range(len(images)):
        top = int(torch.randint(0, h - side_h + 1, (), generator=generator))
        left = int(torch.randint(0, w - side_w + 1, (), generator=generator))
        patch = torch.rand(images.shape[1], side_h, side_w, generator=generator, dtype=images.dtype) * 2 - 1
        out[i, :, top : top + side_h, left : left + side_w] = patch.to(images.device)
    return out


def spread(dataset, n: int) -> Tensor:
    """``n`` images evenly spaced through a split (splits are often sorted by class).

    Reads the in-memory ``images`` tensor when the dataset has one, else decodes ``n`` items.
    """
    indices = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long()
    images = getattr(dataset, "images", None)
    if images is not None:
        return images[indices]
    return torch.stack([dataset[int(i)]["image"] for i in indices])


def load_image(path: str | Path, shape: Sequence[int]) -> Tensor:
    """An image file as a ``(C, H, W)`` tensor in [-1, 1] of the model's shape (one-line errors)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"input={path} does not exist (source=file reads image files)")
    channels, height, width = shape
    if channels not in (1, 3):
        raise ConfigError(f"source=file needs a model on 1- or 3-channel images, this one has {channels}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError) as error:
        reason = " ".join(str(error).split())[:120]
        raise DataNotFoundError(f"input={path} is not a readable image file: {reason}") from None
    pixels = data.view(height, width, channels).permute(2, 0, 1).float() / 255.0
    return pixels * 2.0 - 1.0


class IdempotentLitModule(LinearizerLitModule):
    """``f = g^-1 P g`` with ``P^2 = P``: idempotent everywhere; generation is ``f(noise)``.

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
        **base_kwargs,
    ):
        base_kwargs.setdefault("network_mode", "shared")
        if base_kwargs["network_mode"] != "shared":
            raise ConfigError(
                f"model.network_mode={base_kwargs['network_mode']!r}: an idempotent Linearizer needs one g on both "
                "sides (g_x = g_y), use network_mode=shared"
            )
        super().__init__(**base_kwargs)
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ConfigError(f"unknown model.loss_weights keys {sorted(unknown)}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}")
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **{k: float(v) for k, v in dict(loss_weights or {}).items()}}
        if distance not in DISTANCES:
            raise ConfigError(f"model.distance={distance!r} is not one of {DISTANCES}")
        if not isinstance(self.operator, PROJECTIONS):
            names = ", ".join(cls.__name__ for cls in PROJECTIONS)
            raise ConfigError(f"model.operator is a {type(self.operator).__name__}; an IGN needs a projection ({names})")
        features = math.prod(self.image_shape)
        if self.operator.in_features != features:
            raise ConfigError(
                f"model.operator has {self.operator.in_features} features but images have {features} values {self.image_shape}"
            )
        self.val_psnr_reconstruction = PeakSignalNoiseRatio(data_range=1.0)
        self.val_psnr_noisy = PeakSignalNoiseRatio(data_range=1.0)
        self.val_psnr_denoised = PeakSignalNoiseRatio(data_range=1.0)
        self.val_idempotence_error = MaxMetric()

    # -- the projector ------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """The rank of P: the dimension of the manifold ``g^-1(range P)``."""
        return int(self.operator.rank)

    def expected_rank_fraction(self) -> Tensor:
        """``E[rank P] / N``: the mean keep-probability for the STE mask, else the fixed ``rank / N``."""
        if isinstance(self.operator, DiagonalProjection):
            return self.operator.keep_probability().mean()
        ref = next(self.operator.parameters())
        return ref.new_tensor(self.operator.rank / self.operator.in_features)

    def project(self, x: Tensor) -> Tensor:
        """``f(x) = g^-1(P g(x))``."""
        return self.linearizer()(x)

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        return F.mse_loss(a, b) if self.hparams.distance == "mse" else F.l1_loss(a, b)

    def _frozen_project(self, x: Tensor) -> Tensor:
        """f with its parameters detached (IGN's frozen copy f'): gradients reach only ``x``."""
        linearizer = self.linearizer()
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
        decoded = dict(zip(decode_parts, self.network.inverse(torch.cat([parts[p] for p in decode_parts]).view(shape)).split(n)))

        reconstruction = self._distance(decoded["data"], x)
        terms = {"reconstruction": reconstruction, "expected_rank": self.expected_rank_fraction()}
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
                raw = -self._distance(self.project(y), y)
                scale = self.hparams.tightness_clamp * reconstruction.clamp_min(1e-12)
                terms["tightness"] = torch.tanh(raw / scale) * scale
        terms["loss"] = sum(w[name] * value for name, value in terms.items())
        terms["rank"] = x.new_tensor(float(self.rank))  # diagnostic, not optimised
        return terms

    # -- metrics ----------------------------------------------------------------------------------
    def setup_metrics(self) -> None:
        settings = self.metric_settings
        if settings.get("inception_fid", True):
            self.add_pretrained_metric("fid_inception", lambda: pretrained.inception_fid(settings.get("inception_weights")))
        if settings.get("domain_classifier") == "mnist":
            self.add_digit_fid()

    def evaluation_step(self, batch, batch_idx):
        x = batch["image"]
        n = x.shape[0]
        z = self.hparams.noise_std * self.normal(batch, self.image_shape, _EVAL_NOISE)
        noisy = x + self.hparams.corruption_std * self.normal(batch, self.image_shape, _EVAL_CORRUPTION)
        fz, fx, f_noisy = self.project(torch.cat([z, x, noisy])).split(n)
        ffz = self.project(fz)
        relative = (ffz - fz).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1).clamp_min(1e-30)
        self.val_idempotence_error.update(relative.max())
        real = to_unit_range(x)
        self.val_psnr_reconstruction.update(to_unit_range(fx), real)
        self.val_psnr_noisy.update(to_unit_range(noisy), real)
        self.val_psnr_denoised.update(to_unit_range(f_noisy), real)
        generated = to_unit_range(fz)
        for name, metric in self.pretrained_metrics.items():
            if name.startswith("fid"):
                metric.update(pretrained.to_three_channels(real), real=True)
                metric.update(pretrained.to_three_channels(generated), real=False)

    @torch.no_grad()
    def projection_error(self) -> float:
        """``max |P(Pz) - Pz| / |Pz|`` over fixed random latents: P's own roundoff."""
        ref = next(self.operator.parameters())
        z = torch.randn(16, self.operator.in_features, generator=torch.Generator().manual_seed(0), dtype=ref.dtype)
        pz = self.operator(z.to(ref.device))
        return float(((self.operator(pz) - pz).norm(dim=1) / pz.norm(dim=1).clamp_min(1e-30)).max())

    def evaluation_metrics(self):
        metrics = {
            "psnr_reconstruction": self.val_psnr_reconstruction,
            "psnr_noisy": self.val_psnr_noisy,
            "psnr_denoised": self.val_psnr_denoised,
            "idempotence_error": self.val_idempotence_error,
            **{name: metric for name, metric in self.pretrained_metrics.items()},
        }
        values = {}
        for name, metric in metrics.items():
            values[name] = metric.compute()
            metric.reset()
        values["rank"] = float(self.rank)
        values["projection_error"] = self.projection_error()
        return values

    # -- grids --------------------------------------------------------------------------------------
    @torch.no_grad()
    def projection_grid(self, inputs: Tensor, row: int = _GRID_ROW) -> Tensor:
        """Rows of ``row`` images in triplets: inputs, f(inputs), f(f(inputs)) (in [0, 1])."""
        outputs = torch.cat([self.project(chunk) for chunk in inputs.split(256)])
        twice = torch.cat([self.project(chunk) for chunk in outputs.split(256)])
        row = max(1, min(row, len(inputs)))
        pad = (-len(inputs)) % row
        if pad:
            blank = inputs.new_full((pad, *inputs.shape[1:]), -1.0)
            inputs, outputs, twice = (torch.cat([t, blank]) for t in (inputs, outputs, twice))
        rows = []
        for start in range(0, len(inputs), row):
            rows += [t[start : start + row] for t in (inputs, outputs, twice)]
        return make_grid(to_unit_range(torch.cat(rows)), nrow=row)

    @torch.no_grad()
    def generate(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``(noise, f(noise))`` for n per-sample-seeded Gaussian inputs."""
        dtype = next(self.parameters()).dtype
        noise = self.hparams.noise_std * per_sample_normal(torch.arange(n), self.image_shape, seed, dtype, self.device)
        return noise, torch.cat([self.project(chunk) for chunk in noise.split(256)])

    def corrupted(self, images: Tensor, seed: int) -> Tensor:
        """The first half with Gaussian noise (``corruption_std``), the second half occluded."""
        generator = torch.Generator().manual_seed(seed)
        half = (len(images) + 1) // 2
        noise = torch.randn(images[:half].shape, generator=generator, dtype=images.dtype).to(images.device)
        return torch.cat([images[:half] + self.hparams.corruption_std * noise, occlude(images[half:], generator)])

    def _grids_for(self, noise: Tensor | None = None, images: Tensor | None = None, seed: int = 0) -> dict[str, Tensor]:
        grids = {}
        if noise is not None:
            grids["noise"] = self.projection_grid(noise)
        if images is not None and len(images):
            grids["data"] = self.projection_grid(images)
            grids["corrupted"] = self.projection_grid(self.corrupted(images, seed))
        return grids

    @torch.no_grad()
    def sample_grids(self) -> dict[str, Tensor]:
        n = int(self.hparams.num_grid_samples)
        noise, samples = self.generate(max(n, 64), self._stream_seed(_GRID_NOISE))
        datamodule = getattr(self._trainer, "datamodule", None)
        dataset = getattr(datamodule, "val_dataset", None)
        images = None if dataset is None else spread(dataset, n).to(self.device)
        grids = self._grids_for(noise[:n], images, seed=self._stream_seed(_GRID_NOISE))
        grids["samples"] = make_grid(to_unit_range(samples[:64]), nrow=8)
        return grids

    @torch.no_grad()
    def sample_for_cli(
        self,
        n: int = 64,
        seed: int = 0,
        source: str = "noise",
        input: str | Sequence[str] | None = None,  # noqa: A002 (the CLI option's name)
        data_config: Mapping | None = None,
        **_,
    ) -> dict[str, Tensor]:
        """``linearizer sample source=noise|data|file``: grids of inputs, f(inputs), f(f(inputs)).

        ``noise``: n Gaussian inputs (grids ``noise`` and ``samples``, the latter f(noise) alone);
        ``data``: the first n validation images of the checkpoint's data (grids ``data`` and
        ``corrupted``); ``file``: the image file(s) ``input=``, resized to the model's shape.
        """
        n = int(n)
        if n < 1:
            raise ConfigError(f"n={n}: ask for at least one sample")
        if source == "noise":
            noise, samples = self.generate(n, seed)
            return {"noise": self.projection_grid(noise), "samples": make_grid(to_unit_range(samples), nrow=max(1, int(math.sqrt(n))))}
        if source == "data":
            images = self._data_images(data_config, n).to(self.device, next(self.parameters()).dtype)
            return self._grids_for(images=images, seed=seed)
        if source == "file":
            if input is None or input == "":
                raise ConfigError("source=file needs input=<image file> (or input=[a.png,b.png])")
            paths = list(input) if isinstance(input, (list, tuple, ListConfig)) else [input]
            images = torch.stack([load_image(p, self.image_shape) for p in paths])
            return {"file": self.projection_grid(images.to(self.device, next(self.parameters()).dtype))}
        raise ConfigError(f"source={source!r} is not one of noise, data, file")

    def _data_images(self, data_config: Mapping | None, n: int) -> Tensor:
        if not data_config:
            raise ConfigError("source=data: the checkpoint stores no data config; pass one with +data=<name> (e.g. +data=mnist)")
        if isinstance(data_config, (DictConfig, ListConfig)):
            data_config = OmegaConf.to_container(data_config, resolve=True)
        datamodule = instantiate(dict(data_config))
        datamodule.prepare_data()
        datamodule.setup("validate")
        images = spread(datamodule.val_dataset, n)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ConfigError(f"the data has images of shape {tuple(images.shape[1:])} but the model expects {self.image_shape}")
        return images
