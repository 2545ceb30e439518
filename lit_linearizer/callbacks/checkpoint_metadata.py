"""Checkpoint metadata and resume: what a checkpoint says about its run, and picking a run up where it stopped."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

import lit_linearizer

__all__ = ["CheckpointMetadata"]


def _gather_states(trainer: L.Trainer, state: dict | None) -> list[dict | None]:
    """Every rank's generator state, in rank order (a collective: Lightning dumps checkpoints on every rank)."""
    if trainer.world_size == 1 or state is None:
        return [state]
    gathered = trainer.strategy.all_gather(state["state"].to(trainer.strategy.root_device))  # NCCL: device tensors
    # clone(): a row of the gathered tensor is a view at an offset, which Generator.set_state misreads after a load
    return [{"device_type": state["device_type"], "state": row.cpu().clone()} for row in gathered]


class CheckpointMetadata(Callback):
    """Writes ``checkpoint["lit_linearizer"]`` and restores the module's training-noise stream on resume.

    The metadata: ``module_class`` (the import path `linearizer sample/eval` rebuild the module from;
    moved classes resolve through ``lit_linearizer.checkpoints.MOVED``), ``version``, ``run_config``
    (the resolved config, for `linearizer eval`), ``wandb_run_id`` (a resumed run continues the W&B
    run) and ``noise_generators`` (the state of the module's training-noise generator on every rank, in rank
    order: each rank draws its own noise, so each resumes its own stream; ``noise_generator`` is rank zero's,
    as older checkpoints had it). The module brings this callback itself (``LinearizerLitModule.configure_callbacks``).
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        cls = type(pl_module)
        checkpoint["lit_linearizer"] = {
            "module_class": f"{cls.__module__}.{cls.__qualname__}",
            "version": lit_linearizer.__version__,
            "run_config": getattr(pl_module, "run_config", None),
            "wandb_run_id": next((lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)), None),
            "noise_generator": pl_module.noise.state(),
            "noise_generators": _gather_states(trainer, pl_module.noise.state()),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        metadata = checkpoint.get("lit_linearizer", {})
        pl_module.noise.restore(metadata.get("noise_generators") or metadata.get("noise_generator"))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Exact resume: a scheduler that asks for trainer.estimated_stepping_batches makes Lightning
        # build the train loader before the checkpoint is restored, and it then never hands the
        # loader its saved position (lightning 2.6). Hand it over here, once, if it is pending.
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None):
            fit_loop._load_combined_loader_states()
