"""`linearizer train`: fit a model from a Hydra config, evaluate it, write metrics.json."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from lit_linearizer.callbacks import INTERRUPTED_CHECKPOINT, PreemptionCheckpoint
from lit_linearizer.checkpoints import read_checkpoint
from lit_linearizer.cluster import (
    REQUEUE_EXIT_CODE,
    STOP_EXIT_CODE,
    check_slurm_allocation,
    received_signals,
    requeue_by_this_process,
    requeue_slurm_job,
    requeue_wanted,
    stop_handlers,
)
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


def _checkpoint_dirs(cfg: DictConfig, output_dir: Path) -> list[Path]:
    callbacks = cfg.get("callbacks") or {}
    configured = [(callbacks.get(name) or {}).get("dirpath") for name in ("preemption_checkpoint", "model_checkpoint")]
    return list(dict.fromkeys(Path(d) for d in [*configured, output_dir / "checkpoints"] if d))


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """Where to resume from: the newest state this run dir holds, if its run has not finished; else ``ckpt_path``.

    A requeued SLURM job reruns the same command in the same directory and continues from what its
    predecessor left: ``interrupted.ckpt`` (written when it was stopped) or ``last.ckpt`` (written during
    fit; the only one left when the job was stopped after fit, in the evaluation, or killed without
    warning), whichever is newer. A finished run (its ``metrics.json`` written) is not resumed.
    """
    candidates = [d / name for d in _checkpoint_dirs(cfg, output_dir) for name in (INTERRUPTED_CHECKPOINT, "last.ckpt")]
    candidates = [p for p in candidates if p.is_file()]
    if candidates and not (output_dir / "metrics.json").is_file():
        newest = max(candidates, key=lambda p: p.stat().st_mtime_ns)
        log.warning("resuming from %s (left by an unfinished run in this directory)", newest)
        return str(newest)
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    return None


def _continue_wandb_run(cfg: DictConfig, ckpt_path: str | None, output_dir: Path) -> None:
    """One W&B run per run directory, over every requeue: the id in the checkpoint resumed from, else the id this
    run dir recorded when it first started (a job stopped before its first checkpoint), else a new one."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    id_file = output_dir / "wandb_run_id"
    run_id = read_checkpoint(ckpt_path)["lit_linearizer"].get("wandb_run_id") if ckpt_path else None
    if not run_id and id_file.is_file():
        run_id = id_file.read_text().strip()
    run_id = run_id or secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        wandb_cfg.id = run_id
        wandb_cfg.resume = "allow"


def _stopped(trainer: L.Trainer, preemption: PreemptionCheckpoint | None, output_dir: Path) -> NoReturn:
    """After an agreed stop (every rank is here): close W&B, wait for every rank, requeue if asked, exit."""
    requeue = requeue_wanted()
    code = REQUEUE_EXIT_CODE if requeue else STOP_EXIT_CODE
    saved = preemption.saved if preemption is not None else None
    signals = ", ".join(received_signals()) or "a signal on another rank"
    state = f"saved {saved}" if saved else "nothing new to save"
    if trainer.is_global_zero:
        print(f"interrupted at step {trainer.global_step} ({signals}); {state}; rerun in {output_dir} to resume")
        for logger in trainer.loggers:  # W&B's offline files complete before the job goes
            if isinstance(logger, WandbLogger):
                logger.experiment.finish(exit_code=code)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:  # no rank exits (srun --kill-on-bad-exit) while another still writes
            torch.distributed.barrier()
        except RuntimeError as error:  # a rank is gone already (the job is being killed): nothing left to wait for
            log.warning("barrier before exit failed: %s", " ".join(str(error).split())[:200])
    if not trainer.is_global_zero:
        # Rank zero's status is the run's. A non-zero status here would make `srun --kill-on-bad-exit` kill rank
        # zero while it is still exiting.
        raise SystemExit(0)
    if requeue and requeue_by_this_process():
        print(requeue_slurm_job())
    raise SystemExit(code)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Seed, build, fit, evaluate. Returns the final metrics (what a sweep optimises)."""
    with stop_handlers():  # signals are recorded, not fatal, to the end (`linearizer train` installed them already)
        return _train(cfg, started=time.time())


def _train(cfg: DictConfig, started: float) -> dict[str, Any]:
    check_slurm_allocation(cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1))
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    if ckpt_path and ckpt_path != cfg.get("ckpt_path"):  # an explicit ckpt_path was checked before the imports
        check_resume(cfg, ckpt_path)
    _continue_wandb_run(cfg, ckpt_path, output_dir)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False)
    model.run_config = resolved_config(cfg)
    trainer = build_trainer(cfg)
    preemption = next((c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None)
    if preemption is not None:
        preemption.started = started
    if trainer.is_global_zero:
        write_resolved_config(cfg, output_dir)
    for logger in trainer.loggers:
        # The W&B config: the resolved config and how the run was launched (Hydra overrides, launcher, SLURM).
        logger.log_hyperparams({**model.run_config, "launch": launch_record()})

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        _check_trained(trainer)
        metrics = evaluate_fitted(trainer, model, datamodule) if cfg.get("evaluate_after_fit", True) else {}
    except SIGTERMException:
        # Every rank agreed to stop (PreemptionCheckpoint): during fit it saved interrupted.ckpt.
        _stopped(trainer, preemption, output_dir)
    wall_time = preemption.wall_time_s() if preemption is not None else time.time() - started
    _write_outputs(trainer, cfg, model, metrics, output_dir, wall_time)
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
        "wall_time_s": round(wall_time, 1),  # every segment of a requeued run, each up to its checkpoint
    }
    write_json(output_dir / "metrics.json", payload)
    for directory in _checkpoint_dirs(cfg, output_dir):  # finished: the interrupted state is spent
        (directory / INTERRUPTED_CHECKPOINT).unlink(missing_ok=True)
    print(format_summary(f"{cfg.task_name}: final metrics (EMA weights)", metrics, model.skipped_metrics, output_dir))
    print(f"samples: {output_dir / 'samples'}\nmetrics: {output_dir / 'metrics.json'}\nwall time: {wall_time:.0f} s")
