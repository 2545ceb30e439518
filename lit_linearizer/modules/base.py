"""The LightningModule every application shares.

It owns: building g and A from config, the optimizer and scheduler (``_partial_`` configs),
EMA of the weights (Lightning's WeightAveraging with a warmed-up decay, used for validation and sampling and
saved in checkpoints), namespaced logging (``train/...``, ``val/...``), sample-grid logging
(PNG files and W&B), metrics that need pretrained weights (built when the weights exist,
otherwise skipped with a notice), a non-finite-loss guard, and checkpoint metadata.

An application subclass implements only its math:

    def model_step(self, batch) -> dict[str, Tensor]          # losses; "loss" is optimised
    def evaluation_step(self, batch, batch_idx) -> None         # update its metric objects
    def evaluation_metrics(self) -> dict[str, Tensor]           # computed values to log
    def sample_grids(self) -> dict[str, Tensor]                 # image grids to save/log
and, optionally, ``setup_metrics`` (build metric objects) and ``final_report``.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.utils import save_image

import lit_linearizer
from lit_linearizer.callbacks.ema import ExponentialMovingAverage
from lit_linearizer.errors import ConfigError, MetricWeightsError
from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.metrics.digit_classifier import DigitFeatures, load_or_train_classifier
from lit_linearizer.metrics import pretrained
from lit_linearizer.metrics.pretrained import WeightsUnavailable
from lit_linearizer.randomness import per_sample_normal, per_sample_uniform

log = logging.getLogger(__name__)

NETWORK_MODES = ("conditional", "shared", "separate")
PERCEPTUAL_CHOICES = ("auto", "lpips", "mse")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so checkpoints load with ``weights_only=True``."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def to_unit_range(images: Tensor) -> Tensor:
    """Model images in [-1, 1] -> [0, 1], clamped (metrics and PNGs expect it)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


class LinearizerLitModule(L.LightningModule):
    """Shared base. See the module docstring for what subclasses implement.

    Args:
        image_shape: (C, H, W) of the data.
        network: config of an InvertibleNetwork (``_target_`` and its arguments, no ``in_shape``).
        operator: config of the latent operator (or operator bank).
        optimizer: ``_partial_`` optimizer config; the module passes its parameters.
        scheduler: optional ``_partial_`` LR scheduler config, with ``interval`` (``step`` or
            ``epoch``); if the scheduler accepts ``total_steps`` it gets the run's total.
        network_mode: ``conditional`` (one network, g_x = g(.; 1), g_y = g(.; 0)), ``shared``
            (one unconditional g for both) or ``separate`` (two networks).
        ema_decay: EMA decay of the weights, warmed up (see schedules.warmup_ema); None disables EMA.
        metrics: ``strict`` (missing metric weights are an error, not a skip), ``lpips_net``,
            ``lpips_backbone_weights``, ``inception_weights`` (paths for offline clusters) and
            application-specific settings.
        sample_every_n_epochs: how often validation writes sample grids.
        skip_nonfinite_loss: skip a batch whose loss is NaN/inf (on every rank) instead of
            stopping the run.
        compile: ``torch.compile`` the training step (``compile_mode`` as torch.compile's
            ``mode``). The step function is compiled, not the modules, so parameter names and
            checkpoints are the same with and without it.
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
            self.hparams[key] = _plain(value)
        if network_mode not in NETWORK_MODES:
            raise ConfigError(f"model.network_mode={network_mode!r} is not one of {NETWORK_MODES}")
        self.image_shape = tuple(int(s) for s in image_shape)
        network = _plain(network)
        if network_mode == "separate":
            self.network_x = instantiate(network, in_shape=self.image_shape, conditional=False)
            self.network_y = instantiate(network, in_shape=self.image_shape, conditional=False)
        else:
            self.network = instantiate(network, in_shape=self.image_shape, conditional=network_mode == "conditional")
        self.operator = instantiate(_plain(operator))
        self.metric_settings = dict(_plain(metrics) or {})
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        # Metrics with pretrained networks are kept out of the module tree (a plain dict): their
        # weights must not enter checkpoints, the EMA copy or the optimizer.
        self.pretrained_metrics: dict[str, Metric] = {}
        self.frozen_networks: dict[str, torch.nn.Module] = {}  # e.g. the LPIPS loss, for the same reason
        self.perceptual_name = "mse"
        self.skipped_metrics: dict[str, str] = {}
        # Constants logged beside the metrics they calibrate (e.g. the real-vs-real FID floor).
        self.reference_metrics: dict[str, float] = {}
        self.noise_generator: torch.Generator | None = None
        self._restored_noise_state: dict | None = None
        self._compiled_model_step = None
        # The resolved run config (set by the train task), stored in checkpoints for `linearizer eval`.
        self.run_config: dict | None = None

    # -- the Linearizer -----------------------------------------------------------------------
    @property
    def g_x(self) -> InvertibleModule:
        if self.hparams.network_mode == "separate":
            return self.network_x
        return self.network.bind(1.0)

    @property
    def g_y(self) -> InvertibleModule:
        if self.hparams.network_mode == "separate":
            return self.network_y
        return self.network.bind(0.0)

    def linearizer(self, operator=None) -> Linearizer:
        """``g_y^-1(A g_x(.))`` with this module's networks (and ``operator`` instead of A if given)."""
        return Linearizer(self.g_x, self.operator if operator is None else operator, self.g_y, self.image_shape)

    # -- hooks for applications ---------------------------------------------------------------
    def model_step(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def evaluation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        """Update evaluation metrics (validation runs it with EMA weights)."""

    def evaluation_metrics(self) -> dict[str, Tensor | float]:
        """Computed evaluation metrics (keys without the ``val/`` prefix); called on every rank."""
        return {}

    def sample_grids(self) -> dict[str, Tensor]:
        """Image grids in [0, 1] to save as PNG and log to W&B (called on rank zero)."""
        return {}

    def sample_for_cli(self, **options) -> dict[str, Tensor]:
        """Grids for ``linearizer sample`` (options from conf/sample.yaml)."""
        raise NotImplementedError(f"{type(self).__name__} does not support `linearizer sample`")

    def setup_metrics(self) -> None:
        """Build metric objects that need data or pretrained weights (see ``add_pretrained_metric``)."""

    def final_report(self) -> dict[str, float]:
        """Diagnostics computed once after training (e.g. linear probes)."""
        return {}

    # -- metrics that need pretrained weights ---------------------------------------------------
    def add_pretrained_metric(self, name: str, build: Callable[[], Any]) -> Any | None:
        """Build a metric (or loss) that needs pretrained weights; skip it with a notice if they are missing.

        Built once: later calls (setup runs for fit, then for validate) return the same object.
        """
        if name in self.pretrained_metrics:
            return self.pretrained_metrics[name]
        if name in self.skipped_metrics:
            return None
        try:
            metric = build()
        except WeightsUnavailable as missing:
            if self.metric_settings.get("strict", False):
                raise MetricWeightsError(f"{name}: {missing} (metrics.strict=true)") from None
            self.skipped_metrics[name] = str(missing)
            self._notice(f"{name} skipped: {missing}")
            return None
        if isinstance(metric, Metric):
            self.pretrained_metrics[name] = metric.to(self.device)
        return metric

    def add_digit_fid(self) -> None:
        """Register ``fid_mnist_classifier`` (see metrics/digit_classifier.py) with its floor and accuracy.

        The classifier trains on the datamodule's training split (once, cached, on rank zero);
        the real-vs-real FID of the two splits and the classifier's test accuracy go into
        ``reference_metrics``, logged beside the FID.
        """
        if "fid_mnist_classifier" in self.pretrained_metrics:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            self.skipped_metrics["fid_mnist_classifier"] = "no datamodule to train the digit classifier on"
            return
        if getattr(datamodule, "train_dataset", None) is None:
            datamodule.setup("validate")
        train, val = datamodule.train_dataset, datamodule.val_dataset
        cache_dir = self.metric_settings.get("cache_dir", ".cache")

        def load():
            return load_or_train_classifier(train.images, train.labels, val.images, val.labels, cache_dir)

        if self.trainer.world_size > 1:  # train (and cache) once, on rank zero
            if self.trainer.is_global_zero:
                load()
            self.trainer.strategy.barrier()
        classifier, accuracy = load()
        features = DigitFeatures(classifier)
        floor = FrechetInceptionDistance(feature=features, normalize=True, input_img_size=(1, 32, 32))
        floor.update(to_unit_range(train.images), real=True)
        floor.update(to_unit_range(val.images), real=False)
        self.reference_metrics = {
            "mnist_classifier_accuracy": accuracy,
            "fid_mnist_classifier_floor": float(floor.compute()),
        }
        self._notice(
            f"fid_mnist_classifier: digit-classifier features (test accuracy {accuracy:.3f}); "
            f"real-vs-real floor {self.reference_metrics['fid_mnist_classifier_floor']:.3f}"
        )
        metric = FrechetInceptionDistance(feature=DigitFeatures(classifier), normalize=True, input_img_size=(1, 32, 32))
        self.pretrained_metrics["fid_mnist_classifier"] = metric.to(self.device)

    @property
    def perceptual_loss(self) -> torch.nn.Module | None:
        """The frozen LPIPS training loss, or None (see ``setup_perceptual_loss``)."""
        return self.frozen_networks.get("perceptual_loss")

    def setup_perceptual_loss(self, mode: str) -> None:
        """LPIPS as a training loss: ``lpips`` (required), ``auto`` (if its weights exist) or ``mse`` (none).

        The run says which it uses (``perceptual_name``, printed and written to metrics.json).
        """
        if mode not in PERCEPTUAL_CHOICES:
            raise ConfigError(f"model.perceptual={mode!r} is not one of {PERCEPTUAL_CHOICES}")
        if mode != "mse" and self.perceptual_loss is None:
            net = self.metric_settings.get("lpips_net", "alex")
            build = lambda: pretrained.LPIPSLoss(net, self.metric_settings.get("lpips_backbone_weights"))  # noqa: E731
            loss = build() if mode == "lpips" else self.add_pretrained_metric("lpips_loss", build)
            if loss is not None:
                self.frozen_networks["perceptual_loss"] = loss.to(self.device)
                self.perceptual_name = f"lpips-{net}"
        self._notice(f"perceptual loss: {self.perceptual_name}")

    def _move_frozen_networks(self) -> None:
        for module in [*self.pretrained_metrics.values(), *self.frozen_networks.values()]:
            module.to(self.device)

    @rank_zero_only
    def _notice(self, message: str) -> None:
        log.warning(message)

    # -- Lightning ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.setup_metrics()

    def on_fit_start(self) -> None:
        # Created here, after the model moved to its device; restored when resuming.
        generator = torch.Generator(device=self.device)
        restored = self._restored_noise_state
        if restored is not None and restored["device_type"] == self.device.type:
            generator.set_state(restored["state"])
        else:
            generator.manual_seed(self.hparams.seed * 7919 + self.global_rank)
        self.noise_generator = generator
        self._move_frozen_networks()

    def on_train_start(self) -> None:
        # Exact resume: a scheduler that asks for trainer.estimated_stepping_batches makes Lightning
        # build the train loader before the checkpoint is restored, and it then never hands the
        # loader its saved position (lightning 2.6). Hand it over here, once, if it is pending.
        fit_loop = self.trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None):
            fit_loop._load_combined_loader_states()

    def on_validation_start(self) -> None:
        self._move_frozen_networks()

    def training_step(self, batch, batch_idx):
        if self.hparams.compile and self._compiled_model_step is None:
            self._compiled_model_step = torch.compile(self.model_step, mode=self.hparams.compile_mode)
        losses = (self._compiled_model_step or self.model_step)(batch)
        loss = losses["loss"]
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            if self.hparams.skip_nonfinite_loss:
                self._notice(f"non-finite loss at step {self.global_step}: batch skipped")
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
        """A context that turns autocast off: ``trainer.precision=bf16-mixed`` speeds up the loss,
        but the metrics measure exact algebra (one step against T steps, inversion), and the
        pseudo-inverse and collapse solve linear systems that bf16 cannot, so they run in float32."""
        return torch.autocast(self.device.type, enabled=False)

    def on_validation_epoch_end(self) -> None:
        for name, value in {**self.reference_metrics, **self.evaluation_metrics()}.items():
            value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            # Already synchronised across ranks by torchmetrics: log as is, no second reduction.
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
        every = max(1, int(self.hparams.sample_every_n_epochs))
        if not self.trainer.sanity_checking and ((self.current_epoch + 1) % every == 0 or self._is_last_epoch()):
            self.write_sample_grids()

    def _is_last_epoch(self) -> bool:
        trainer = self.trainer
        return trainer.max_epochs is not None and trainer.max_epochs > 0 and self.current_epoch + 1 >= trainer.max_epochs

    @torch.no_grad()
    def write_sample_grids(self, directory: str | Path | None = None) -> dict[str, Path]:
        """Save ``sample_grids()`` under ``<run dir>/samples`` and log them to W&B (rank zero only)."""
        if not self.trainer.is_global_zero:
            return {}
        directory = Path(directory or Path(self.trainer.default_root_dir) / "samples")
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        with self.full_precision():
            grids = self.sample_grids()
        for name, grid in grids.items():
            path = directory / f"{name}.png"
            save_image(grid, path)
            save_image(grid, directory / f"{name}_step{self.global_step:06d}.png")
            written[name] = path
            for logger in self.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"samples/{name}", images=[grid], step=self.global_step)
        return written

    def configure_callbacks(self):
        # EMA on Lightning's WeightAveraging: validation swaps the average in, checkpoints store it
        # as the state_dict (and the raw weights beside it), and fit ends on the average.
        decay = self.hparams.ema_decay
        return [ExponentialMovingAverage(decay)] if decay else []

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        scheduler_cfg = self.hparams.scheduler
        if not scheduler_cfg:
            return optimizer
        scheduler_cfg = dict(scheduler_cfg)
        interval = scheduler_cfg.pop("interval", "step")
        factory = instantiate(scheduler_cfg)
        kwargs = {}
        if "total_steps" in inspect.signature(factory).parameters:
            total = self.trainer.estimated_stepping_batches
            if interval == "epoch":
                total = self.trainer.max_epochs
            if total is None or not math.isfinite(total):
                raise ConfigError("the LR schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
            kwargs["total_steps"] = int(total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": factory(optimizer, **kwargs), "interval": interval}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cls = type(self)
        generator = self.noise_generator
        checkpoint["lit_linearizer"] = {
            "module_class": f"{cls.__module__}.{cls.__qualname__}",
            "version": lit_linearizer.__version__,
            "run_config": self.run_config,
            "wandb_run_id": next((lg.version for lg in self.loggers if isinstance(lg, WandbLogger)), None),
            "noise_generator": None
            if generator is None
            else {"device_type": generator.device.type, "state": generator.get_state()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_noise_state = checkpoint.get("lit_linearizer", {}).get("noise_generator")

    # -- randomness -------------------------------------------------------------------------------
    def normal(self, batch: Mapping[str, Tensor], shape: Sequence[int], stream: int) -> Tensor:
        """Standard normal noise ``(B, *shape)`` for a batch.

        Training draws from the module's checkpointed generator. Evaluation draws per sample,
        from (seed, stream, sample index), so metrics do not depend on batching or world size.
        """
        return self._draw(batch, shape, stream, torch.randn, per_sample_normal)

    def uniform(self, batch: Mapping[str, Tensor], stream: int, shape: Sequence[int] = ()) -> Tensor:
        """U(0, 1) values ``(B, *shape)`` (one per sample by default), drawn like ``normal``."""
        return self._draw(batch, shape, stream, torch.rand, per_sample_uniform)

    def _draw(self, batch, shape, stream, sample, per_sample) -> Tensor:
        like = batch["image"]
        if self.training and self.noise_generator is not None:
            generator = self.noise_generator
            values = sample((like.shape[0], *shape), generator=generator, dtype=like.dtype, device=generator.device)
            return values.to(like.device)
        return per_sample(batch["index"], shape, self._stream_seed(stream), like.dtype, like.device)

    def _stream_seed(self, stream: int) -> int:
        return (self.hparams.seed + 1) * 1009 + stream
