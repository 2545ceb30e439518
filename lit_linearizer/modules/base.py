"""The LightningModule every application shares: g and A from config, steps, logging, optimizers, EMA, noise streams.

An application (``lit_linearizer/applications/<name>/module.py``) implements ``model_step`` (its losses,
"loss" is optimised) and ``evaluation_step`` (updates ``self.val_metrics`` and ``self.pretrained``), and
optionally ``setup_metrics``, ``derived_metrics``, ``sample_grids`` and ``final_report``. The base computes,
logs (``val/<name>``; ``eval/<name>`` in the final evaluation, see ``metric_namespace``) and resets every
metric. Its callbacks come with it: EMA of the weights, SampleGridWriter (PNG and W&B grids),
CheckpointMetadata (what checkpoints say, resume) and MetricNotes (skipped metrics and metric facts to the loggers).

Steps: a value is logged at the number of optimizer steps taken before it was measured (``logging_step``),
so the validation metrics, sample grids and checkpoint of one moment share one step (Lightning alone logs
validation one step earlier), and the training loss of a step sits at the step its weights come from.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection

from lit_linearizer.callbacks import CheckpointMetadata, ExponentialMovingAverage, MetricNotes, SampleGridWriter
from lit_linearizer.callbacks.atomic_checkpoint import nonfinite_tensors
from lit_linearizer.config import to_plain
from lit_linearizer.errors import ConfigError, TrainingDivergedError
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
        skip_nonfinite_loss: skip a batch whose loss is NaN/inf (on every rank) instead of stopping. Skips are
            counted (``train/skipped_batches``); the run stops after ``max_consecutive_skips`` in a row, or at
            once when the weights themselves are NaN/inf (skipping cannot recover from that).
        max_consecutive_skips: how many batches in a row ``skip_nonfinite_loss`` may skip.
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
        max_consecutive_skips: int = 10,
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
        # Also out of the tree: diagnostics an application rebuilds at each validation (their references change).
        self.diagnostics: dict[str, Metric] = {}
        self.reference_metrics: dict[str, float] = {}  # constants logged beside the metrics they calibrate
        self.noise = NoiseStreams(seed)
        self._compiled_model_step = None
        self.skipped_batches = 0  # batches skipped for a non-finite loss, in this process's training
        self._skip_streak: list[tuple[int, int]] = []  # (step, batch index) of the current run of skipped batches
        self.run_config: dict | None = None  # the resolved config (set by the train task), for checkpoints
        self.metric_namespace = "val"  # validation logs val/<name>; the tasks' final evaluation sets "eval"
        self.evaluated_step: int | None = None  # the training step of a checkpoint evaluated outside training

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
    def metric_info(self) -> dict[str, str]:
        """Facts the numbers are read against (e.g. the digit classifier's weights hash): metrics.json, loggers."""
        return self.pretrained.info

    @property
    def logging_step(self) -> int:
        """The step this moment's metrics, grids and checkpoint are logged at: the optimizer steps taken so far,
        or ``evaluated_step`` (a checkpoint's step, set by `linearizer eval`)."""
        return self.global_step if self.evaluated_step is None else int(self.evaluated_step)

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

    def training_step(self, batch, batch_idx):
        if self.hparams.compile and self._compiled_model_step is None:
            self._compiled_model_step = CompiledStep(self, self.hparams.compile_mode, notice=_notice)
        losses = (self._compiled_model_step or self.model_step)(batch)
        loss = losses["loss"]
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            if self.hparams.skip_nonfinite_loss:
                self._skip_batch(loss, batch_idx)
                return None
            raise TrainingDivergedError(
                f"loss became {loss.item()} at step {self.global_step} "
                f"({', '.join(f'{k}={v.item():.3g}' for k, v in losses.items())}); "
                "lower the learning rate, enable gradient clipping, or set model.skip_nonfinite_loss=true"
            )
        self._skip_streak.clear()
        if self.hparams.skip_nonfinite_loss:
            self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False, prog_bar=True)
        self.train_loss(loss)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=False, prog_bar=True)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=False)
        return loss

    # -- non-finite losses and weights --------------------------------------------------------------
    def _nonfinite_weights(self) -> list[str]:
        return nonfinite_tensors(dict(self.named_parameters()))

    def _skip_batch(self, loss: Tensor, batch_idx: int) -> None:
        """Skip a batch with a non-finite loss, or stop: weights NaN/inf, or too many skips in a row."""
        self.skipped_batches += 1
        self._skip_streak.append((self.global_step, batch_idx))
        streak = self._skip_streak
        (first_step, first_batch), (last_step, last_batch) = streak[0], streak[-1]
        if len(streak) == 1:
            where = f"step {first_step} (epoch {self.current_epoch}, batch {first_batch})"
        else:
            where = f"steps {first_step}-{last_step} (epoch {self.current_epoch}, batches {first_batch}-{last_batch})"
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False, prog_bar=True)
        broken = self._nonfinite_weights()
        if broken:
            raise TrainingDivergedError(
                f"the weights are NaN/inf ({len(broken)} tensors, e.g. {broken[0]}) at {where}: skipping batches "
                "cannot recover; lower model.optimizer.lr (or keep trainer.gradient_clip_val on) and resume from a "
                "checkpoint written before the divergence"
            )
        limit = int(self.hparams.get("max_consecutive_skips", 10))
        if len(streak) >= limit:
            raise TrainingDivergedError(
                f"{len(streak)} batches in a row had a non-finite loss, at {where}, {self.skipped_batches} skipped in "
                f"all: stopping; lower model.optimizer.lr, or raise model.max_consecutive_skips={limit}"
            )
        _notice(
            f"non-finite loss ({loss.item()}) at {where}: batch skipped "
            f"({len(streak)} in a row of at most {limit}; {self.skipped_batches} in all)"
        )

    def on_validation_start(self) -> None:
        self.pretrained.to(self.device)
        broken = self._nonfinite_weights()
        if broken:
            raise TrainingDivergedError(
                f"the weights are NaN/inf at step {self.global_step} ({len(broken)} tensors, e.g. {broken[0]}); "
                "the run diverged: lower model.optimizer.lr and resume from an earlier checkpoint"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # On every rank (the weights agree across ranks): no checkpoint of a diverged model, and no rank left waiting.
        for key in ("state_dict", "current_model_state"):  # the (EMA) weights and the raw weights beside them
            broken = nonfinite_tensors(checkpoint.get(key) or {})
            if broken:
                raise TrainingDivergedError(
                    f"not saving a checkpoint at step {self.global_step}: the weights are NaN/inf ({len(broken)} "
                    f"tensors, e.g. {broken[0]}); the run diverged: lower model.optimizer.lr and resume from an "
                    "earlier checkpoint"
                )

    def validation_step(self, batch, batch_idx):
        losses = self.model_step(batch)  # under the trainer's precision, as in training
        self.val_loss(losses["loss"])
        self.log(f"{self.metric_namespace}/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        with self.full_precision():
            self.evaluation_step(batch, batch_idx)

    def full_precision(self):
        """Autocast off: bf16-mixed speeds up the loss, but metrics measure exact algebra (one step against T
        steps, inversion) whose pseudo-inverses and collapse solve linear systems bf16 cannot."""
        return torch.autocast(self.device.type, enabled=False)

    def on_validation_epoch_end(self) -> None:
        # compute() synchronises across ranks: called on every rank, values logged as they are. A metric that
        # computes a dict of values logs each under its own key.
        metrics = [*self.val_metrics.items(), *self.pretrained.metrics.items(), *self.diagnostics.items()]
        values = {}
        for name, metric in metrics:
            value = metric.compute()
            values.update(value if isinstance(value, dict) else {name: value})
        for _, metric in metrics:
            metric.reset()
        values.update(self.derived_metrics(values))
        for name, value in {**self.reference_metrics, **values}.items():
            value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            self.log(f"{self.metric_namespace}/{name}", value, sync_dist=False, rank_zero_only=False)
        # Lightning logs validation at the step before; a logged "step" is the step its loggers use (and the
        # one ModelCheckpoint names files with). on_train_batch_start drops it once training moves on.
        self.log("step", float(self.logging_step), sync_dist=False, rank_zero_only=False)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.trainer.callback_metrics.pop("step", None)  # the last validation's step, not this batch's

    def configure_callbacks(self):
        # EMA on Lightning's WeightAveraging: validation swaps the average in, checkpoints store it as the
        # state_dict (and the raw weights beside it), and fit ends on the average. The grid writer comes
        # before it, so it draws at the end of a validation epoch with the weights the metrics measured (the
        # average), before EMA swaps the raw weights back.
        decay = self.hparams.ema_decay
        ema = [ExponentialMovingAverage(decay)] if decay else []
        return [SampleGridWriter(self.hparams.sample_every_n_epochs), *ema, CheckpointMetadata(), MetricNotes()]

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
