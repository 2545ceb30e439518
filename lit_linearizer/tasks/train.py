"""`linearizer train`: fit a model from a Hydra config, evaluate it, write metrics.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from lit_linearizer.callbacks import INTERRUPTED_CHECKPOINT
from lit_linearizer.checkpoints import read_checkpoint
from lit_linearizer.cluster import check_slurm_allocation
from lit_linearizer.errors import ConfigError
from lit_linearizer.loggers import finish_wandb
from lit_linearizer.tasks.preflight import check_resume
from lit_linearizer.tasks.reporting import (
    format_summary,
    launch_record,
    resolved_config,
    write_json,
    write_resolved_config,
)

__all__ = ["EVALUATION_NAMESPACE", "build_trainer", "evaluate_fitted", "resume_checkpoint", "train"]

# The final evaluation (after `linearizer train`, and `linearizer eval`) logs eval/<name>; validation val/<name>.
EVALUATION_NAMESPACE = "eval"

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """Trainer with the configured callbacks and loggers (none when ``logger`` is empty)."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not loggers:  # Lightning refuses a LearningRateMonitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def _metrics_of(results: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    merged: dict[str, float] = {}
    for result in results:
        merged.update({k.removeprefix(prefix): float(v) for k, v in result.items() if k.startswith(prefix)})
    return merged


def evaluate_fitted(trainer: L.Trainer, model, datamodule, namespace: str = EVALUATION_NAMESPACE) -> dict[str, Any]:
    """The validation metrics of the fitted (EMA) weights and the module's final report, logged once, as
    ``<namespace>/<name>`` at the module's ``logging_step`` (the step of the last validation and checkpoint)."""
    previous, model.metric_namespace = model.metric_namespace, namespace
    try:
        results = trainer.validate(model, datamodule=datamodule, verbose=False)
    finally:
        model.metric_namespace = previous
    metrics = _metrics_of(results, f"{namespace}/")
    report = model.final_report() if trainer.is_global_zero else {}
    metrics.update(report)
    if report:
        for logger in trainer.loggers:
            logger.log_metrics({f"{namespace}/{k}": v for k, v in report.items()}, step=model.logging_step)
    return metrics


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path`` if given; else the interrupted-run checkpoint of this run dir, if any.

    A requeued SLURM job reruns the same command in the same directory: it finds the
    checkpoint its predecessor left and continues from there.
    """
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    interrupted = output_dir / "checkpoints" / INTERRUPTED_CHECKPOINT
    if interrupted.is_file():
        log.warning("resuming from %s (left by an interrupted run in this directory)", interrupted)
        return str(interrupted)
    return None


def _continue_wandb_run(cfg: DictConfig, ckpt_path: str | None) -> None:
    """Point the W&B logger at the run stored in the checkpoint, so a resumed run continues it."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if ckpt_path is None or wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = read_checkpoint(ckpt_path)["lit_linearizer"].get("wandb_run_id")
    if run_id:
        with open_dict(cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Seed, build, fit, evaluate. Returns the final metrics (what a sweep optimises)."""
    started = time.time()
    check_slurm_allocation(cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1))
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    if ckpt_path and ckpt_path != cfg.get("ckpt_path"):  # an explicit ckpt_path was checked before the imports
        check_resume(cfg, ckpt_path)
    _continue_wandb_run(cfg, ckpt_path)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False)
    model.run_config = resolved_config(cfg)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        write_resolved_config(cfg, output_dir)
    for logger in trainer.loggers:
        # The W&B config: the resolved config and how the run was launched (Hydra overrides, launcher, SLURM).
        logger.log_hyperparams({**model.run_config, "launch": launch_record()})

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        # Lightning stopped after a batch (SIGTERM or a preemption signal); PreemptionCheckpoint saved.
        checkpoint = output_dir / "checkpoints" / INTERRUPTED_CHECKPOINT
        step = trainer.global_step
        print(f"interrupted at step {step}; resume with ckpt_path={checkpoint} (or rerun in {output_dir})")
        finish_wandb(trainer.loggers, 143)
        raise SystemExit(143) from None
    _check_trained(trainer)
    metrics = evaluate_fitted(trainer, model, datamodule) if cfg.get("evaluate_after_fit", True) else {}
    _write_outputs(trainer, cfg, model, metrics, output_dir, time.time() - started)
    finish_wandb(trainer.loggers)  # now, not at exit: a later run in this process (a local sweep) gets its own
    return metrics


def _check_trained(trainer: L.Trainer) -> None:
    """A fit without a single training batch is an error, not a run to report metrics of."""
    if trainer.num_training_batches == 0:
        raise ConfigError(
            "nothing was trained: the training loader has no batches (Lightning: `Trainer.fit` stopped: No training "
            "batches); lower data.batch_size, add data, or raise trainer.limit_train_batches"
        )


@rank_zero_only
def _write_outputs(trainer, cfg, model, metrics, output_dir: Path, wall_time: float) -> None:
    checkpoint = trainer.checkpoint_callback
    payload = {
        "task": cfg.task_name,
        "metrics": metrics,
        "skipped_metrics": model.skipped_metrics,
        "metric_info": model.metric_info,
        "metrics_namespace": EVALUATION_NAMESPACE,
        "perceptual_loss": getattr(model, "perceptual_name", None),
        "best_checkpoint": getattr(checkpoint, "best_model_path", None) or None,
        "last_checkpoint": getattr(checkpoint, "last_model_path", None) or None,
        "global_step": trainer.global_step,
        "wall_time_s": round(wall_time, 1),
    }
    write_json(output_dir / "metrics.json", payload)
    print(format_summary(f"{cfg.task_name}: final metrics (EMA weights)", metrics, model.skipped_metrics, output_dir))
    print(f"samples: {output_dir / 'samples'}\nmetrics: {output_dir / 'metrics.json'}\nwall time: {wall_time:.0f} s")
