"""`linearizer eval`: the validation metrics of any checkpoint, written to metrics.json."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_linearizer.checkpoints import module_from_checkpoint, read_checkpoint, run_config
from lit_linearizer.errors import ConfigError
from lit_linearizer.tasks.reporting import format_summary, write_json
from lit_linearizer.tasks.train import evaluate_fitted

__all__ = ["evaluate"]


def evaluate(cfg: DictConfig) -> dict:
    checkpoint = read_checkpoint(cfg.ckpt_path)
    data_cfg = cfg.get("data") or (run_config(checkpoint) or {}).get("data")
    if not data_cfg:
        raise ConfigError(
            "the checkpoint does not say which data it was trained on; pass data=<name> (e.g. data=mnist)"
        )
    module = module_from_checkpoint(checkpoint, cfg.ckpt_path)
    if cfg.get("metrics"):
        module.metric_settings.update(OmegaConf.to_container(cfg.metrics, resolve=True))
    datamodule = instantiate(data_cfg)
    output_dir = Path(cfg.paths.output_dir)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(output_dir))
    metrics = evaluate_fitted(trainer, module, datamodule)
    if trainer.is_global_zero:
        payload = {"task": "eval", "checkpoint": str(cfg.ckpt_path), "metrics": metrics}
        write_json(output_dir / "metrics.json", {**payload, "skipped_metrics": module.skipped_metrics})
        print(format_summary(f"eval of {cfg.ckpt_path}", metrics, module.skipped_metrics, output_dir))
    return metrics
