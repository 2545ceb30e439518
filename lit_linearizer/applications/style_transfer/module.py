"""Modular style transfer, training: one shared invertible network, one latent operator per style (LINEARIZER.md, 4).

    f_s(x) = g^-1( A_s g(x) )

g is one unconditional network shared by every style (``network_mode: shared``) and the ``A_s``
are the members of an OperatorBank (their families: ``lit_linearizer/operators/style.py``).
Training regresses ``f_s(content)`` onto the style's target image (MSE, plus LPIPS if asked for
and its weights exist). The styles and their algebra (interpolation, composition, mixtures) live in
``model.py`` (``self.model``), the grids in ``grids.py``, the baselines and algebra checks in ``diagnostics.py``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lit_linearizer.applications.checks import check_operator_features
from lit_linearizer.applications.style_transfer import diagnostics, grids
from lit_linearizer.applications.style_transfer.model import StyleTransferModel
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import to_unit_range
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.metrics import pretrained
from lit_linearizer.modules.base import LinearizerLitModule
from lit_linearizer.modules.trainer_data import datamodule_of
from lit_linearizer.operators import LatentOperator, LinearCombination, OperatorBank, ProductOperator

__all__ = ["StyleTransferLitModule"]


class StyleTransferLitModule(LinearizerLitModule):
    """``f_s(x) = g^-1(A_s g(x))`` for every style s; style algebra at inference (``self.model``).

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
        pretrained.check_perceptual(perceptual)
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
        check_operator_features(self.operator[0], self.image_shape)
        for style in self.styles:
            psnr, ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
            self.val_metrics.add_metrics({f"psnr/{style}": psnr, f"ssim/{style}": ssim})
        self.attach_model(StyleTransferModel(self.network, self.operator, self.image_shape))

    # -- the plain model's API, also on the module (docs/style_transfer.md) ------------------------
    @property
    def bank(self) -> OperatorBank:
        return self.operator

    def style_operator(self, style: str | int) -> LatentOperator:
        return self.model.style_operator(style)

    def interpolated_operator(self, first: str | int, second: str | int, alpha: float) -> LinearCombination:
        return self.model.interpolated_operator(first, second, alpha)

    def mixed_operator(self, weights: Mapping[str, float]) -> LinearCombination:
        return self.model.mixed_operator(weights)

    def composed_operator(self, styles: Sequence[str | int]) -> ProductOperator:
        return self.model.composed_operator(styles)

    def stylizer(self, operator: LatentOperator | str | int, image_shape: Sequence[int] | None = None) -> Linearizer:
        return self.model.stylizer(operator, image_shape)

    def stylize(self, images: Tensor, style: LatentOperator | str | int) -> Tensor:
        return self.model.stylize(images, style)

    def interpolate_styles(self, images: Tensor, first: str | int, second: str | int, steps: int) -> Tensor:
        return self.model.interpolate_styles(images, first, second, steps)

    def compose_styles(self, images: Tensor, styles: Sequence[str | int]) -> Tensor:
        return self.model.compose_styles(images, styles)

    # -- training -----------------------------------------------------------------------------------
    def model_step(self, batch):
        targets = batch["target"]
        if targets.dim() != 5 or targets.shape[1] != len(self.styles):
            raise ConfigError(
                f"batches carry {tuple(targets.shape[1:2])} targets per image but the model has "
                f"{len(self.styles)} styles {self.styles}"
            )
        outputs = self.model.stylize_all(batch["image"])
        per_style = (outputs - targets).pow(2).mean(dim=(0, 2, 3, 4))
        terms = {f"mse/{style}": per_style[i] for i, style in enumerate(self.styles)}
        terms["mse"] = per_style.mean()
        loss = terms["mse"]
        if self.perceptual_loss is not None:
            terms["lpips"] = self.perceptual_loss(outputs.flatten(0, 1), targets.flatten(0, 1))
            loss = loss + self.hparams.perceptual_weight * terms["lpips"]
        terms["loss"] = loss
        return terms

    # -- metrics ------------------------------------------------------------------------------------
    def setup_metrics(self) -> None:
        datamodule = datamodule_of(self)
        data_styles = getattr(datamodule, "styles", None)
        if data_styles is not None and list(data_styles) != self.styles:
            raise ConfigError(
                f"the data's styles {list(data_styles)} differ from the model's {self.styles} (same order)"
            )
        settings, skipped = self.metric_settings, self.pretrained.skipped
        net, backbone = settings.get("lpips_net", "alex"), settings.get("lpips_backbone_weights")
        # MSE always; LPIPS added when built.
        self.pretrained.setup_perceptual_loss(self.hparams.perceptual, self.device)
        # Per-style LPIPS: built once each; if the weights are missing, one notice for all.
        for style in self.styles:
            name = f"lpips/{style}"
            if name in self.pretrained.metrics or name in skipped:
                continue
            reason = next(iter(v for k, v in skipped.items() if k.startswith("lpips/")), None)
            if reason is not None:
                skipped[name] = reason
            else:
                self.add_pretrained_metric(name, lambda: pretrained.lpips_metric(net, backbone))
        if settings.get("baselines", True) and not self.reference_metrics:
            train = getattr(datamodule, "train_dataset", None)
            val = getattr(datamodule, "val_dataset", None)
            if train is not None and val is not None and hasattr(train, "stacks") and hasattr(val, "targets"):
                baselines = diagnostics.colour_baselines(train.stacks, val.images, val.targets, self.styles)
                self.reference_metrics = baselines

    def evaluation_step(self, batch, batch_idx):
        outputs = to_unit_range(self.model.stylize_all(batch["image"]))
        targets = to_unit_range(batch["target"])
        for i, style in enumerate(self.styles):
            self.val_metrics[f"psnr/{style}"].update(outputs[:, i], targets[:, i])
            self.val_metrics[f"ssim/{style}"].update(outputs[:, i], targets[:, i])
            metric = self.pretrained.metrics.get(f"lpips/{style}")
            if metric is not None:
                metric.update(outputs[:, i], targets[:, i])

    def derived_metrics(self, values):
        means = {}
        for name in ("psnr", "ssim", "lpips"):
            per_style = [values[f"{name}/{s}"] for s in self.styles if f"{name}/{s}" in values]
            if per_style:
                means[f"{name}_mean"] = torch.stack([torch.as_tensor(v, device=self.device) for v in per_style]).mean()
        return means

    # -- grids and the final report -----------------------------------------------------------------
    def _grid_images(self) -> tuple[Tensor, Tensor] | None:
        """Validation contents and targets for the grids: one crop (the centre) per held-out photo first."""
        datamodule = datamodule_of(self)
        val = getattr(datamodule, "val_dataset", None)
        if val is None or not hasattr(val, "targets") or len(val) == 0:
            return None
        per_photo = getattr(datamodule, "val_crops_per_image", 1)
        order = list(range(0, len(val), per_photo)) + [i for i in range(len(val)) if i % per_photo]
        chosen = torch.tensor(order[: self.hparams.num_grid_images])
        return val.images[chosen].to(self.device), val.targets[chosen].to(self.device)

    def sample_grids(self) -> dict[str, Tensor]:
        chosen = self._grid_images()
        if chosen is None:
            return {}
        return grids.sample_grids(self.model, *chosen, interpolation_steps=self.hparams.interpolation_steps)

    @torch.no_grad()
    def final_report(self) -> dict[str, float]:
        """How exact the style algebra is with the trained float32 weights, on validation images."""
        chosen = self._grid_images()
        if chosen is None or len(self.styles) < 2:
            return {}
        return diagnostics.algebra_errors(self.model, chosen[0])
