"""`linearizer eval`: the validation metrics of any checkpoint, written to metrics.json (and W&B on request).

    linearizer eval ckpt_path=.../last.ckpt                       # metrics.json
    linearizer eval ckpt_path=.../last.ckpt wandb=same            # also into the W&B run that trained it
    linearizer eval ckpt_path=.../last.ckpt wandb=new             # also into a new W&B run
    linearizer eval ckpt_path=.../last.ckpt export_images=true    # also the images behind every FID, as PNGs

Metrics are logged as ``eval/<name>`` at the checkpoint's training step, like the evaluation at the end of
`linearizer train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_linearizer.checkpoints import module_from_checkpoint, read_checkpoint, run_config
from lit_linearizer.config import wandb_offline
from lit_linearizer.errors import ConfigError
from lit_linearizer.loggers import WandbLogger, finish_wandb
from lit_linearizer.tasks.reporting import format_summary, launch_record, resolved_config, write_json
from lit_linearizer.tasks.train import EVALUATION_NAMESPACE, evaluate_fitted

__all__ = ["WANDB_CHOICES", "evaluate"]

WANDB_CHOICES = ("same", "new")
FID_IMAGES = "fid_images"


def _wandb_logger(cfg: DictConfig, checkpoint: dict[str, Any], output_dir: Path) -> WandbLogger | None:
    """The W&B logger of ``wandb=same`` (the run id the checkpoint stores) or ``wandb=new``; None without ``wandb``."""
    choice = cfg.get("wandb")
    if not choice:
        return None
    if choice not in WANDB_CHOICES:
        raise ConfigError(f"wandb={choice!r} is not one of {WANDB_CHOICES} (or null: no W&B)")
    trained = dict(((run_config(checkpoint) or {}).get("logger") or {}).get("wandb") or {})
    run_id = None
    if choice == "same":
        run_id = checkpoint["lit_linearizer"].get("wandb_run_id")
        if not run_id:
            raise ConfigError(
                f"wandb=same: checkpoint {cfg.ckpt_path} stores no W&B run id (trained without W&B); use wandb=new"
            )
    return WandbLogger(
        project=trained.get("project") or "lit-linearizer",
        name=trained.get("name") if choice == "same" else f"eval-{trained.get('name') or 'checkpoint'}",
        save_dir=str(output_dir),
        offline=wandb_offline(),
        id=run_id,
        group=trained.get("group") or None,
        tags=list(trained.get("tags") or []),
        job_type="eval",
    )


def _fit_image_size(data_cfg, image_shape) -> dict:
    """The data config with the checkpoint model's image size (``data=<name>`` brings the preset's default size)."""
    data = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    shape = [int(s) for s in image_shape]
    if data.get("image_shape") is None or list(data["image_shape"]) == shape:
        return data
    explicit = any(o.split("=", 1)[0].lstrip("+") == "data.image_size" for o in HydraConfig.get().overrides.task)
    if explicit or shape[1] != shape[2] or "image_size" not in data or data["image_shape"][0] != shape[0]:
        raise ConfigError(
            f"data.image_shape={list(data['image_shape'])} but the checkpoint's model takes {shape} images; "
            f"pass data.image_size={shape[1]} (or leave it unset)"
        )
    print(f"data.image_size={data['image_size']} -> {shape[1]}: the checkpoint's model takes {shape} images")
    return {**data, "image_size": shape[1], "image_shape": shape}


def evaluate(cfg: DictConfig) -> dict:
    checkpoint = read_checkpoint(cfg.ckpt_path)
    data_cfg = cfg.get("data") or (run_config(checkpoint) or {}).get("data")
    if not data_cfg:
        raise ConfigError(
            "the checkpoint does not say which data it was trained on; pass data=<name> (e.g. data=mnist)"
        )
    module = module_from_checkpoint(checkpoint, cfg.ckpt_path)
    module.evaluated_step = int(checkpoint.get("global_step", 0))  # logged at the checkpoint's step
    if cfg.get("metrics"):
        settings = OmegaConf.to_container(cfg.metrics, resolve=True)
        module.metric_settings.update({k: v for k, v in settings.items() if v is not None})
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("export_images"):
        module.pretrained.export_images(output_dir / FID_IMAGES)
    datamodule = instantiate(_fit_image_size(data_cfg, module.image_shape))
    logger = _wandb_logger(cfg, checkpoint, output_dir)
    trainer = instantiate(cfg.trainer, logger=[logger] if logger else False, callbacks=[],
                          default_root_dir=str(output_dir))  # fmt: skip
    exit_code = 1
    try:
        if logger is not None:
            evaluation = {"ckpt_path": str(cfg.ckpt_path), "step": module.evaluated_step, **launch_record()}
            # A new run gets the training config too; the training run keeps its own and gets this beside it.
            trained = {} if cfg.get("wandb") == "same" else dict(run_config(checkpoint) or {})
            logger.log_hyperparams({**trained, "evaluation": {**evaluation, "config": resolved_config(cfg)}})
        metrics = evaluate_fitted(trainer, module, datamodule, EVALUATION_NAMESPACE)
        if trainer.is_global_zero:
            payload = {
                "task": "eval",
                "checkpoint": str(cfg.ckpt_path),
                "global_step": module.evaluated_step,
                "metrics": metrics,
                "metrics_namespace": EVALUATION_NAMESPACE,
                "skipped_metrics": module.skipped_metrics,
                "metric_info": module.metric_info,
            }
            if module.pretrained.export_dir is not None:
                payload["exported_images"] = str(module.pretrained.export_dir)
            if logger is not None:
                payload["wandb_run_id"] = logger.version
            write_json(output_dir / "metrics.json", payload)
            print(format_summary(f"eval of {cfg.ckpt_path}", metrics, module.skipped_metrics, output_dir))
            if module.pretrained.export_dir is not None:
                print(f"images behind the FIDs: {module.pretrained.export_dir}/real, .../generated")
        exit_code = 0
    finally:
        finish_wandb(trainer.loggers, exit_code)
    return metrics
