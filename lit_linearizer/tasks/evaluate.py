"""`linearizer eval`: the validation metrics of any checkpoint, written to metrics.json."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_linearizer.checkpoints import module_from_checkpoint, read_checkpoint, run_config
from lit_linearizer.errors import ConfigError
from lit_linearizer.tasks.reporting import format_summary, write_json
from lit_linearizer.tasks.train import evaluate_fitted

__all__ = ["evaluate"]


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
    if cfg.get("metrics"):
        settings = OmegaConf.to_container(cfg.metrics, resolve=True)
        module.metric_settings.update({k: v for k, v in settings.items() if v is not None})
    datamodule = instantiate(_fit_image_size(data_cfg, module.image_shape))
    output_dir = Path(cfg.paths.output_dir)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(output_dir))
    metrics = evaluate_fitted(trainer, module, datamodule)
    if trainer.is_global_zero:
        payload = {"task": "eval", "checkpoint": str(cfg.ckpt_path), "metrics": metrics}
        write_json(output_dir / "metrics.json", {**payload, "skipped_metrics": module.skipped_metrics})
        print(format_summary(f"eval of {cfg.ckpt_path}", metrics, module.skipped_metrics, output_dir))
    return metrics
