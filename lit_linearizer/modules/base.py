"""The LightningModule every application shares: g and A from config, steps, logging, optimizers, EMA, noise streams.

An application (``lit_linearizer/applications/<name>/module.py``) implements ``model_step`` (its losses,
"loss" is optimised) and ``evaluation_step`` (updates ``self.val_metrics`` and ``self.pretrained``), and
optionally ``setup_metrics``, ``derived_metrics``, ``sample_grids`` and ``final_report``. The base computes,
logs (``val/<name>``) and resets every metric. Its callbacks come with it: EMA of the weights,
SampleGridWriter (PNG and W&B grids) and CheckpointMetadata (what checkpoints say, resume).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from lit_linearizer.callbacks import CheckpointMetadata, ExponentialMovingAverage, SampleGridWriter
from lit_linearizer.config import to_plain
from lit_linearizer.errors import ConfigError
from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.metrics.pretrained import PretrainedMetrics
from lit_linearizer.modules.compiled_step import CompiledStep
from lit_linearizer.randomness import NoiseStreams
from lit_linearizer.schedules import lr_scheduler

__all__ = ["NETWORK_MODES", "LinearizerLitModule"]

NETWORK_MODES = ("conditional", "shared", "separate")

_notice = rank_zero_only(logging.getLogger(__name__).warning)  # one line per notice, from rank zero


class LinearizerLitModule(L.LightningModule):
    """Shared base; see the module docstring for what applications implement.

    Args:
        image_shape: (C, H, W) of the data.
        network: config of an InvertibleNetwork (``_target_`` and its arguments, no ``in_shape``).
        operator: config of the latent operator (or operator bank).
        optimizer: ``_partial_`` optimizer config; the module passes its parameters.
        scheduler: optional ``_partial_`` LR scheduler config with ``interval`` (see schedules.lr_scheduler).
        network_mode: ``conditional`` (one network, g_x = g(.; 1), g_y = g(.; 0)), ``shared``
            (one unconditional g for both) or ``separate`` (two networks).
        ema_decay: EMA decay of the weights, warmed up (see schedules.warmup_ema); None disables EMA.
        metrics: ``strict`` (missing metric weights are an error, not a skip), ``lpips_net``, paths of
            weights for offline clusters (``lpips_backbone_weights``, ``inception_weights``), and more per application.
        sample_every_n_epochs: how often validation writes sample grids (and after the last epoch).
        skip_nonfinite_loss: skip a batch whose loss is NaN/inf (on every rank) instead of stopping.
        compile: ``torch.compile`` the training step function, not the modules (checkpoints do not change),
            as one graph from the second step on (modules/compiled_step.py); ``compile_mode`` is torch.compile's
            ``mode``.
        seed: seed of the evaluation noise and the training noise generator.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        network: Mapping,
        operator: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        network_mode: str = "conditional",
        ema_decay: float | None = 0.999,
        metrics: Mapping | None = None,
        sample_every_n_epochs: int = 1,
        skip_nonfinite_loss: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        for key, value in list(self.hparams.items()):
            self.hparams[key] = to_plain(value)
        if network_mode not in NETWORK_MODES:
            raise ConfigError(f"model.network_mode={network_mode!r} is not one of {NETWORK_MODES}")
        self.image_shape = tuple(int(s) for s in image_shape)
        network = to_plain(network)
        if network_mode == "separate":
            self.network_x = instantiate(network, in_shape=self.image_shape, conditional=False)
            self.network_y = instantiate(network, in_shape=self.image_shape, conditional=False)
        else:
            self.network = instantiate(network, in_shape=self.image_shape, conditional=network_mode == "conditional")
        self.operator = instantiate(to_plain(operator))
        self.metric_settings = dict(to_plain(metrics) or {})
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_metrics = MetricCollection({}, compute_groups=False)  # applications add theirs and update them
        # Out of the module tree: the weights of pretrained networks must not enter checkpoints, EMA or the optimizer.
        self.pretrained = PretrainedMetrics(self.metric_settings, notice=_notice)
        self.reference_metrics: dict[str, float] = {}  # constants logged beside the metrics they calibrate
        self.noise = NoiseStreams(seed)
        self._compiled_model_step = None
        self.run_config: dict | None = None  # the resolved config (set by the train task), for checkpoints

    # -- the Linearizer and the application's plain model ---------------------------------------------
    @property
    def g_x(self) -> InvertibleModule:
        return self.network_x if self.hparams.network_mode == "separate" else self.network.bind(1.0)

    @property
    def g_y(self) -> InvertibleModule:
        return self.network_y if self.hparams.network_mode == "separate" else self.network.bind(0.0)

    def linearizer(self, operator=None) -> Linearizer:
        """``g_y^-1(A g_x(.))`` with this module's networks (and ``operator`` instead of A if given)."""
        return Linearizer(self.g_x, self.operator if operator is None else operator, self.g_y, self.image_shape)

    @property
    def model(self) -> nn.Module:
        """The application's plain model (``applications/<name>/model.py``), built on this module's g and A."""
        return self.__dict__["_model"]

    def attach_model(self, model: nn.Module) -> None:
        # Kept beside the module tree, not in it: the model holds the same g and A, registered here already
        # under the names checkpoints use (network.*, operator.*); registering them again would add keys.
        self.__dict__["_model"] = model

    # -- hooks for applications ---------------------------------------------------------------------
    def model_step(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The losses of a batch; ``"loss"`` is optimised, the others are logged."""
        raise NotImplementedError

    def evaluation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        """Update the validation metrics (validation runs it with EMA weights and autocast off)."""

    def setup_metrics(self) -> None:
        """Build metrics that need data or pretrained weights (``self.pretrained.add``, ``add_digit_fid``)."""

    def derived_metrics(self, values: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """Values computed from the computed metrics or read off the model (keys without ``val/``)."""
        return {}

    def sample_grids(self) -> dict[str, Tensor]:
        """Image grids in [0, 1] for SampleGridWriter (rank zero, no gradients, autocast off)."""
        return {}

    def final_report(self) -> dict[str, float]:
        """Diagnostics computed once after training (e.g. linear probes)."""
        return {}

    def add_pretrained_metric(self, name: str, build) -> Any | None:
        """Build a metric (or loss) that needs pretrained weights, or skip it with a notice (see also
        modules/trainer_data.py for the metrics built on the trainer's data)."""
        return self.pretrained.add(name, build, self.device)

    @property
    def skipped_metrics(self) -> dict[str, str]:
        return self.pretrained.skipped

    @property
    def perceptual_loss(self) -> nn.Module | None:
        return self.pretrained.perceptual_loss

    @property
    def perceptual_name(self) -> str:
        return self.pretrained.perceptual_name

    # -- Lightning ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.setup_metrics()

    def on_fit_start(self) -> None:
        self.noise.start(self.device, self.global_rank)  # here: after the model moved to its device
        self.pretrained.to(self.device)

    def on_validation_start(self) -> None:
        self.pretrained.to(self.device)

    def training_step(self, batch, batch_idx):
        if self.hparams.compile and self._compiled_model_step is None:
            self._compiled_model_step = CompiledStep(self, self.hparams.compile_mode, notice=_notice)
        losses = (self._compiled_model_step or self.model_step)(batch)
        loss = losses["loss"]
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            if self.hparams.skip_nonfinite_loss:
                _notice(f"non-finite loss at step {self.global_step}: batch skipped")
                return None
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.global_step} "
                f"({', '.join(f'{k}={v.item():.3g}' for k, v in losses.items())}); "
                "lower the learning rate, enable gradient clipping, or set model.skip_nonfinite_loss=true"
            )
        self.train_loss(loss)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        losses = self.model_step(batch)  # under the trainer's precision, as in training
        self.val_loss(losses["loss"])
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        with self.full_precision():
            self.evaluation_step(batch, batch_idx)

    def full_precision(self):
        """Autocast off: bf16-mixed speeds up the loss, but metrics measure exact algebra (one step against T
        steps, inversion) whose pseudo-inverses and collapse solve linear systems bf16 cannot."""
        return torch.autocast(self.device.type, enabled=False)

    def on_validation_epoch_end(self) -> None:
        # compute() synchronises across ranks: called on every rank, values logged as they are.
        metrics = [*self.val_metrics.items(), *self.pretrained.metrics.items()]
        values = {name: metric.compute() for name, metric in metrics}
        for _, metric in metrics:
            metric.reset()
        values.update(self.derived_metrics(values))
        for name, value in {**self.reference_metrics, **values}.items():
            value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)

    def configure_callbacks(self):
        # EMA on Lightning's WeightAveraging: validation swaps the average in, checkpoints store it as the
        # state_dict (and the raw weights beside it), and fit ends on the average. The grid writer comes
        # after it, so it draws with the weights EMA swaps back at the end of a validation epoch.
        decay = self.hparams.ema_decay
        ema = [ExponentialMovingAverage(decay)] if decay else []
        return [*ema, SampleGridWriter(self.hparams.sample_every_n_epochs), CheckpointMetadata()]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        if not self.hparams.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler(self.hparams.scheduler, optimizer, self.trainer)}

    # -- randomness: training noise from a checkpointed generator, evaluation noise per sample -----------------
    @property
    def noise_generator(self) -> torch.Generator | None:
        return self.noise.generator

    def normal(self, batch: Mapping[str, Tensor], shape: Sequence[int], stream: int) -> Tensor:
        """Standard normal ``(B, *shape)``: the generator's in training; in evaluation a function of (seed,
        stream, sample index), so metrics do not depend on batching or world size (randomness.NoiseStreams)."""
        return self.noise.normal(batch, shape, stream, self.training)

    def uniform(self, batch: Mapping[str, Tensor], stream: int, shape: Sequence[int] = ()) -> Tensor:
        """U(0, 1) values ``(B, *shape)`` (one per sample by default), drawn like ``normal``."""
        return self.noise.uniform(batch, shape, stream, self.training)

    def _stream_seed(self, stream: int) -> int:
        return self.noise.stream_seed(stream)
