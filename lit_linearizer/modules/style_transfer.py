"""Modular style transfer: one shared invertible network, one latent operator per style (LINEARIZER.md, section 4).

    f_s(x) = g^-1( A_s g(x) )

g is one unconditional network shared by every style (``network_mode: shared``) and the
``A_s`` are the members of an OperatorBank. Training regresses ``f_s(content)`` onto the
style's target image (MSE, plus LPIPS if asked for and its weights exist).

Because every style is a linear operator in the same latent space, styles are algebraic
objects at inference, with no retraining:

- interpolation ``f(x) = g^-1((alpha A_1 + (1 - alpha) A_2) g(x))`` -- the *operators* are
  interpolated (the reference interpolated the style index fed to an MLP instead);
- composition ``f_{A_2 A_1} = f_{A_2} o f_{A_1}``, exact because the inner ``g g^-1`` cancels;
- any mixture ``sum_s w_s A_s``, e.g. a style's strength ``w A_s + (1 - w) I``.

Operator families (``style_operator``): ``depthwise`` (a k x k kernel per latent channel, the
paper's choice), ``conv`` (a k x k convolution that also mixes the latent channels),
``dense`` (any matrix; small latents only) and ``diagonal``. The convolutional families do not
depend on the image size, so a model trained on 64 x 64 crops can style larger images.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.utils import make_grid

from lit_linearizer.errors import ConfigError
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.metrics import pretrained
from lit_linearizer.modules.base import PERCEPTUAL_CHOICES, LinearizerLitModule, to_unit_range
from lit_linearizer.operators import (
    DenseOperator,
    DepthwiseConvOperator,
    DiagonalOperator,
    IdentityOperator,
    LatentOperator,
    LinearCombination,
    OperatorBank,
    ProductOperator,
)

OPERATOR_FAMILIES = ("depthwise", "conv", "dense", "diagonal")
MAX_DENSE_FEATURES = 4096  # a dense operator stores features^2 floats per style (64 MiB at 4096)


class LatentConvOperator(LatentOperator):
    """A ``k x k`` convolution on the latent grid that mixes channels (``C -> C``, zero padding).

    Starts as the identity. The transpose is the transposed convolution (exact adjoint).
    """

    def __init__(self, latent_shape: Sequence[int], kernel_size: int = 3):
        channels, height, width = (int(s) for s in latent_shape)
        super().__init__(channels * height * width, channels * height * width)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so the output keeps the latent's size, got {kernel_size}")
        self.latent_shape = (channels, height, width)
        self.kernel_size = kernel_size
        weight = torch.zeros(channels, channels, kernel_size, kernel_size)
        weight[range(channels), range(channels), kernel_size // 2, kernel_size // 2] = 1.0
        self.kernel = nn.Parameter(weight)

    def _grid(self, z: Tensor) -> Tensor:
        self.check_input(z)
        return z.view(z.shape[0], *self.latent_shape)

    def forward(self, z, t=None):
        return F.conv2d(self._grid(z), self.kernel, padding=self.kernel_size // 2).flatten(1)

    def transpose(self, z, t=None):
        return F.conv_transpose2d(self._grid(z), self.kernel, padding=self.kernel_size // 2).flatten(1)

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}, kernel_size={self.kernel_size}"


class SqueezedOperator(LatentOperator):
    """``S^T B S``: an operator ``B`` applied on the 2x2 space-to-depth view ``S z`` of a ``(C, H, W)`` latent.

    ``S`` is a permutation (``pixel_unshuffle``, the squeeze inside GlowNetwork), so this is
    still one linear map of the flat latent and the transpose is ``S^T B^T S``. A kernel on the
    squeezed grid treats the four pixels of each 2x2 cell as separate channels, as g's own
    couplings do; a kernel on the unsqueezed grid would mix them with one weight and leave a
    2x2 checkerboard in the outputs.
    """

    def __init__(self, inner: LatentOperator, latent_shape: Sequence[int]):
        channels, height, width = (int(s) for s in latent_shape)
        if height % 2 or width % 2:
            raise ConfigError(f"a squeezed operator needs an even latent grid, got {tuple(latent_shape)}")
        super().__init__(inner.in_features, inner.out_features)
        if inner.in_features != channels * height * width or not inner.is_square:
            raise ValueError(f"the inner operator must be square on {channels * height * width} values")
        self.inner = inner
        self.latent_shape = (channels, height, width)

    def _squeeze(self, z: Tensor) -> Tensor:
        self.check_input(z)
        return F.pixel_unshuffle(z.view(z.shape[0], *self.latent_shape), 2).flatten(1)

    def _unsqueeze(self, z: Tensor) -> Tensor:
        c, h, w = self.latent_shape
        return F.pixel_shuffle(z.view(z.shape[0], 4 * c, h // 2, w // 2), 2).flatten(1)

    def forward(self, z, t=None):
        return self._unsqueeze(self.inner(self._squeeze(z), t))

    def transpose(self, z, t=None):
        return self._unsqueeze(self.inner.transpose(self._squeeze(z), t))

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}"


def style_operator(family: str, latent_shape: Sequence[int], kernel_size: int = 5, squeeze: bool = False) -> LatentOperator:
    """One style's operator, starting at the identity. ``family``: see OPERATOR_FAMILIES.

    ``squeeze``: apply it on the 2x2 space-to-depth view of the latent (``SqueezedOperator``).
    """
    if squeeze:
        c, h, w = (int(s) for s in latent_shape)
        if h % 2 or w % 2:
            raise ConfigError(f"model.operator.factory.squeeze=true needs even image sides, got {tuple(latent_shape)}")
        return SqueezedOperator(style_operator(family, (4 * c, h // 2, w // 2), kernel_size), latent_shape)
    features = math.prod(latent_shape)
    if family == "depthwise":
        return DepthwiseConvOperator(latent_shape, kernel_size)
    if family == "conv":
        return LatentConvOperator(latent_shape, kernel_size)
    if family == "dense":
        if features > MAX_DENSE_FEATURES:
            raise ConfigError(
                f"a dense style operator on {features} latent values needs {features}^2 floats per style; "
                f"use it for latents up to {MAX_DENSE_FEATURES} values (e.g. 3x32x32), or family=depthwise"
            )
        return DenseOperator(features)
    if family == "diagonal":
        return DiagonalOperator(features)
    raise ConfigError(f"model.operator.factory.family={family!r} is not one of {OPERATOR_FAMILIES}")


def operator_at_shape(operator: LatentOperator, latent_shape: Sequence[int]) -> LatentOperator:
    """The same operator on a latent grid of another size, sharing its parameters.

    Works for the convolutional families and for sums/products of them; operators tied to one
    size (dense, diagonal) raise a ConfigError.
    """
    latent_shape = tuple(int(s) for s in latent_shape)
    features = math.prod(latent_shape)
    if operator.in_features == features and getattr(operator, "latent_shape", latent_shape) == latent_shape:
        return operator
    if latent_shape[1] % 2 or latent_shape[2] % 2:
        raise ConfigError(f"images of shape {latent_shape}: the sides must be even")
    if isinstance(operator, (DepthwiseConvOperator, LatentConvOperator)):
        if operator.latent_shape[0] != latent_shape[0]:
            raise ConfigError(f"the operator has {operator.latent_shape[0]} latent channels, the input {latent_shape[0]}")
        resized = type(operator)(latent_shape, operator.kernel_size)
        resized.kernel = operator.kernel
        return resized
    if isinstance(operator, SqueezedOperator):
        c, h, w = latent_shape
        return SqueezedOperator(operator_at_shape(operator.inner, (4 * c, h // 2, w // 2)), latent_shape)
    if isinstance(operator, LinearCombination):
        return LinearCombination(operator.coefficients, [operator_at_shape(op, latent_shape) for op in operator.operators])
    if isinstance(operator, ProductOperator):
        return ProductOperator([operator_at_shape(op, latent_shape) for op in operator.factors])
    if isinstance(operator, IdentityOperator):
        return IdentityOperator(features)
    raise ConfigError(
        f"{type(operator).__name__} is tied to latents of {operator.in_features} values; images must have the "
        "training size (a convolutional operator family works at any size)"
    )


class StyleTransferLitModule(LinearizerLitModule):
    """``f_s(x) = g^-1(A_s g(x))`` for every style s; style algebra at inference.

    Args (beyond LinearizerLitModule's):
        styles: style names, in the order of the data's targets; the operator bank's names.
        perceptual: ``mse`` (default), ``auto`` (add LPIPS when its weights are available) or
            ``lpips`` (an error if they are missing).
        perceptual_weight: weight of the LPIPS term.
        num_grid_images: validation images per sample grid.
        interpolation_steps: frames of the interpolation strips in the sample grids.
    """

    def __init__(
        self,
        *,
        styles: Sequence[str],
        perceptual: str = "mse",
        perceptual_weight: float = 1.0,
        num_grid_images: int = 4,
        interpolation_steps: int = 7,
        **base_kwargs,
    ):
        base_kwargs.setdefault("network_mode", "shared")
        super().__init__(**base_kwargs)
        if self.hparams.network_mode != "shared":
            raise ConfigError(
                f"model.network_mode={self.hparams.network_mode!r}: style transfer needs one shared g "
                "(network_mode=shared) for f_s = g^-1 A_s g and exact composition of styles"
            )
        if perceptual not in PERCEPTUAL_CHOICES:
            raise ConfigError(f"model.perceptual={perceptual!r} is not one of {PERCEPTUAL_CHOICES}")
        self.styles = [str(s) for s in styles]
        if not self.styles:
            raise ConfigError("model.styles is empty: list the styles (data.styles)")
        if not isinstance(self.operator, OperatorBank):
            raise ConfigError(
                f"model.operator builds a {type(self.operator).__name__}; style transfer needs an OperatorBank "
                "(one operator per style, e.g. OperatorBank.replicate)"
            )
        if list(self.operator.names) != self.styles:
            raise ConfigError(f"the operator bank's names {self.operator.names} differ from model.styles {self.styles}")
        features = math.prod(self.image_shape)
        if self.operator[0].in_features != features:
            raise ConfigError(
                f"the style operators take {self.operator[0].in_features} latent values but images "
                f"{self.image_shape} have {features}"
            )
        self.val_quality = nn.ModuleDict(
            {
                style: MetricCollection(
                    {"psnr": PeakSignalNoiseRatio(data_range=1.0), "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)}
                )
                for style in self.styles
            }
        )

    # -- the style maps and their algebra -------------------------------------------------------
    @property
    def bank(self) -> OperatorBank:
        return self.operator

    def _check_style(self, style: str | int) -> str | int:
        if isinstance(style, str) and style not in self.styles:
            raise ConfigError(f"unknown style {style!r}; this model knows {self.styles}")
        return style

    def style_operator(self, style: str | int) -> LatentOperator:
        """``A_s``."""
        return self.bank[self._check_style(style)]

    def interpolated_operator(self, first: str | int, second: str | int, alpha: float) -> LinearCombination:
        """``alpha A_first + (1 - alpha) A_second``: alpha = 1 is ``first``, alpha = 0 is ``second``."""
        return self.bank.interpolate(self._check_style(first), self._check_style(second), float(alpha))

    def mixed_operator(self, weights: Mapping[str, float]) -> LinearCombination:
        """``sum_s w_s A_s``; the key ``identity`` adds ``w I`` (``{"sepia": 0.5, "identity": 0.5}``: half strength)."""
        weights = dict(weights)
        identity = weights.pop("identity", None)
        operators = [self.style_operator(s) for s in weights]
        coefficients = [float(w) for w in weights.values()]
        if identity is not None:
            operators.append(IdentityOperator(self.bank[0].in_features))
            coefficients.append(float(identity))
        return LinearCombination(coefficients, operators)

    def composed_operator(self, styles: Sequence[str | int]) -> ProductOperator:
        """``A_{s_k} ... A_{s_1}`` for ``styles = [s_1, ..., s_k]`` (the first style is applied first)."""
        if not styles:
            raise ConfigError("compose at least one style")
        return ProductOperator([self.style_operator(s) for s in reversed(list(styles))])

    def stylizer(self, operator: LatentOperator | str | int, image_shape: Sequence[int] | None = None) -> Linearizer:
        """The Linearizer ``g^-1(A g(.))`` for a style name or any operator built from the bank.

        ``image_shape``: apply it to images of another size (convolutional operator families).
        """
        if not isinstance(operator, LatentOperator):
            operator = self.style_operator(operator)
        shape = self.image_shape if image_shape is None else tuple(int(s) for s in image_shape)
        if shape != self.image_shape:
            if shape[0] != self.image_shape[0] or shape[1] % 2 or shape[2] % 2:
                raise ConfigError(f"images of shape {shape}: need {self.image_shape[0]} channels and even sides")
            operator = operator_at_shape(operator, shape)
        return Linearizer(self.g_x, operator, self.g_y, shape, shape)

    @torch.no_grad()
    def stylize(self, images: Tensor, style: LatentOperator | str | int) -> Tensor:
        """``f_A(images)`` for images ``(B, C, H, W)`` in [-1, 1]."""
        return self.stylizer(style, images.shape[1:])(images)

    @torch.no_grad()
    def interpolate_styles(self, images: Tensor, first: str | int, second: str | int, steps: int) -> Tensor:
        """``(steps, B, C, H, W)``: alpha from 1 (``first``) to 0 (``second``), operators interpolated."""
        if steps < 2:
            raise ConfigError(f"steps={steps}: an interpolation needs at least 2 frames")
        z = self.g_x(images).flatten(1)
        frames = []
        for i in range(steps):
            alpha = 1.0 - i / (steps - 1)  # exactly 1 and 0 at the ends
            operator = operator_at_shape(self.interpolated_operator(first, second, alpha), images.shape[1:])
            frames.append(self.g_y.inverse(operator(z).view_as(images)))
        return torch.stack(frames)

    @torch.no_grad()
    def compose_styles(self, images: Tensor, styles: Sequence[str | int]) -> Tensor:
        """``f_{A_k ... A_1}(images)``: all the styles in one pass through g and g^-1."""
        return self.stylize(images, self.composed_operator(styles))

    # -- training -----------------------------------------------------------------------------
    def stylize_all(self, images: Tensor) -> Tensor:
        """Every style of every image, ``(B, num_styles, C, H, W)``: one pass through g, one through g^-1."""
        z = self.network(images).flatten(1)
        latents = torch.cat([operator(z) for operator in self.bank.operators])
        outputs = self.network.inverse(latents.view(-1, *self.image_shape))
        return outputs.view(len(self.styles), images.shape[0], *self.image_shape).transpose(0, 1)

    def model_step(self, batch):
        targets = batch["target"]
        if targets.dim() != 5 or targets.shape[1] != len(self.styles):
            raise ConfigError(
                f"batches carry {tuple(targets.shape[1:2])} targets per image but the model has "
                f"{len(self.styles)} styles {self.styles}"
            )
        outputs = self.stylize_all(batch["image"])
        per_style = (outputs - targets).pow(2).mean(dim=(0, 2, 3, 4))
        terms = {f"mse/{style}": per_style[i] for i, style in enumerate(self.styles)}
        terms["mse"] = per_style.mean()
        loss = terms["mse"]
        if self.perceptual_loss is not None:
            terms["lpips"] = self.perceptual_loss(outputs.flatten(0, 1), targets.flatten(0, 1))
            loss = loss + self.hparams.perceptual_weight * terms["lpips"]
        terms["loss"] = loss
        return terms

    # -- metrics ------------------------------------------------------------------------------
    def _datamodule(self):
        trainer = self._trainer
        return None if trainer is None else getattr(trainer, "datamodule", None)

    def setup_metrics(self) -> None:
        datamodule = self._datamodule()
        data_styles = getattr(datamodule, "styles", None)
        if data_styles is not None and list(data_styles) != self.styles:
            raise ConfigError(f"the data's styles {list(data_styles)} differ from the model's {self.styles} (same order)")
        settings = self.metric_settings
        net, backbone = settings.get("lpips_net", "alex"), settings.get("lpips_backbone_weights")
        self.setup_perceptual_loss(self.hparams.perceptual)  # MSE always; LPIPS added when built
        # Per-style LPIPS: built once each; if the weights are missing, one notice for all.
        for style in self.styles:
            name = f"lpips/{style}"
            if name in self.pretrained_metrics or name in self.skipped_metrics:
                continue
            reason = next(iter(v for k, v in self.skipped_metrics.items() if k.startswith("lpips/")), None)
            if reason is not None:
                self.skipped_metrics[name] = reason
            else:
                self.add_pretrained_metric(name, lambda: pretrained.lpips_metric(net, backbone))
        if settings.get("baselines", True) and not self.reference_metrics:
            self.reference_metrics = self._baselines(datamodule)

    @torch.no_grad()
    def _baselines(self, datamodule) -> dict[str, float]:
        """Validation PSNR of two references, per style, to read the model's PSNR against:

        ``psnr_identity/<s>``: the content itself as the prediction;
        ``psnr_colour_affine/<s>``: the best per-pixel affine colour map (3x3 matrix + offset,
        least squares on the training photos), i.e. what a linear map in pixel space can do.
        """
        train = getattr(datamodule, "train_dataset", None)
        val = getattr(datamodule, "val_dataset", None)
        if train is None or val is None or not hasattr(train, "stacks") or not hasattr(val, "targets"):
            return {}
        pixels = torch.cat([stack.flatten(2).double() / 255.0 for stack in train.stacks], dim=2)  # (1+S, 3, P)
        content = torch.cat([pixels[0], torch.ones_like(pixels[0, :1])]).T  # (P, 4)
        val_content = to_unit_range(val.images).double()
        features = torch.cat([val_content, torch.ones_like(val_content[:, :1])], dim=1)  # (V, 4, H, W)
        values = {}
        for i, style in enumerate(self.styles):
            target = to_unit_range(val.targets[:, i]).double()
            values[f"psnr_identity/{style}"] = _psnr(val_content, target)
            solution = torch.linalg.lstsq(content, pixels[1 + i].T).solution  # (4, 3)
            prediction = torch.einsum("vkhw,kc->vchw", features, solution).clamp(0.0, 1.0)
            values[f"psnr_colour_affine/{style}"] = _psnr(prediction, target)
        return values

    def evaluation_step(self, batch, batch_idx):
        outputs = to_unit_range(self.stylize_all(batch["image"]))
        targets = to_unit_range(batch["target"])
        for i, style in enumerate(self.styles):
            self.val_quality[style].update(outputs[:, i], targets[:, i])
            metric = self.pretrained_metrics.get(f"lpips/{style}")
            if metric is not None:
                metric.update(outputs[:, i], targets[:, i])

    def evaluation_metrics(self):
        values: dict[str, Tensor] = {}
        for style in self.styles:
            for name, value in self.val_quality[style].compute().items():
                values[f"{name}/{style}"] = value
            self.val_quality[style].reset()
            metric = self.pretrained_metrics.get(f"lpips/{style}")
            if metric is not None:
                values[f"lpips/{style}"] = metric.compute()
                metric.reset()
        for name in ("psnr", "ssim", "lpips"):
            per_style = [values[f"{name}/{s}"] for s in self.styles if f"{name}/{s}" in values]
            if per_style:
                values[f"{name}_mean"] = torch.stack([torch.as_tensor(v, device=self.device) for v in per_style]).mean()
        return values

    # -- grids --------------------------------------------------------------------------------
    def _grid_images(self) -> tuple[Tensor, Tensor] | None:
        """Validation contents and targets for the grids: one crop (the centre) per held-out photo first."""
        val = getattr(self._datamodule(), "val_dataset", None)
        if val is None or not hasattr(val, "targets") or len(val) == 0:
            return None
        per_photo = getattr(self._datamodule(), "val_crops_per_image", 1)
        order = list(range(0, len(val), per_photo)) + [i for i in range(len(val)) if i % per_photo]
        chosen = torch.tensor(order[: self.hparams.num_grid_images])
        return val.images[chosen].to(self.device), val.targets[chosen].to(self.device)

    @torch.no_grad()
    def sample_grids(self, images: Tensor | None = None, targets: Tensor | None = None) -> dict[str, Tensor]:
        if images is None:
            chosen = self._grid_images()
            if chosen is None:
                return {}
            images, targets = chosen
        n = images.shape[0]
        outputs = self.stylize_all(images)
        grids = {}
        for i, style in enumerate(self.styles):
            rows = [images] + ([targets[:, i]] if targets is not None else []) + [outputs[:, i]]
            grids[f"style_{style}"] = make_grid(to_unit_range(torch.cat(rows)), nrow=n)
        # Overview: per image, a row [content, f_s1, f_s2, ...] (and [content, targets...] below).
        rows = []
        for b in range(n):
            rows.append(torch.cat([images[b : b + 1], outputs[b]]))
            if targets is not None:
                rows.append(torch.cat([images[b : b + 1], targets[b]]))
        grids["styles"] = make_grid(to_unit_range(torch.cat(rows)), nrow=len(self.styles) + 1)
        if len(self.styles) >= 2:
            grids["interpolation"] = self._interpolation_grid(images[:2])
            grids["composition"] = self._composition_grid(images[:2])
        return grids

    def _style_pairs(self) -> list[tuple[str, str]]:
        s = self.styles
        return [(s[i], s[(i + 1) % len(s)]) for i in range(len(s) if len(s) > 2 else 1)]

    def _interpolation_grid(self, images: Tensor) -> Tensor:
        """Rows: ``[content, alpha = 1 (first style), ..., alpha = 0 (second style)]`` per style pair and image."""
        steps = self.hparams.interpolation_steps
        rows = []
        for first, second in self._style_pairs():
            frames = self.interpolate_styles(images, first, second, steps)  # (steps, B, C, H, W)
            for b in range(images.shape[0]):
                rows.append(torch.cat([images[b : b + 1], frames[:, b]]))
        return make_grid(to_unit_range(torch.cat(rows)), nrow=steps + 1)

    def _composition_grid(self, images: Tensor) -> Tensor:
        """Rows: ``[content, f_a, f_b, f_{A_b A_a} (one pass), f_b(f_a(x)) (two passes)]``."""
        rows = []
        for first, second in self._style_pairs():
            styled_first = self.stylize(images, first)
            for b in range(images.shape[0]):
                x = images[b : b + 1]
                rows.append(
                    torch.cat(
                        [x, styled_first[b : b + 1], self.stylize(x, second), self.compose_styles(x, [first, second]),
                         self.stylize(styled_first[b : b + 1], second)]  # fmt: skip
                    )
                )
        return make_grid(to_unit_range(torch.cat(rows)), nrow=5)

    @torch.no_grad()
    def sample_for_cli(self, source: str = "file", input: str | None = None, **_) -> dict[str, Tensor]:
        """``linearizer sample source=file input=photo.jpg``: the photo in every style, one row."""
        if source != "file" or not input:
            raise ConfigError("style transfer needs an input image: source=file input=<photo> (or `linearizer style`)")
        from lit_linearizer.tasks.style import load_input

        image = load_input(input, self.image_shape, None, self.device)
        return {"styles": make_grid(to_unit_range(torch.cat([image, self.stylize_all(image)[0]])), nrow=len(self.styles) + 1)}

    @torch.no_grad()
    def final_report(self) -> dict[str, float]:
        """How exact the style algebra is with the trained float32 weights, on validation images."""
        chosen = self._grid_images()
        if chosen is None or len(self.styles) < 2:
            return {}
        images = chosen[0]
        first, second = self.styles[:2]
        composed = self.compose_styles(images, [first, second])
        sequential = self.stylize(self.stylize(images, first), second)
        frames = self.interpolate_styles(images, first, second, 2)
        return {
            "algebra/composition_max_abs_error": float((composed - sequential).abs().max()),
            "algebra/interpolation_endpoint_max_abs_error": float(
                torch.maximum(
                    (frames[0] - self.stylize(images, first)).abs().max(), (frames[-1] - self.stylize(images, second)).abs().max()
                )
            ),
        }


def _psnr(prediction: Tensor, target: Tensor) -> float:
    """PSNR (data range 1) of the pooled squared error, as torchmetrics computes it."""
    mse = (prediction - target).pow(2).mean()
    return float(10.0 * torch.log10(1.0 / mse))
