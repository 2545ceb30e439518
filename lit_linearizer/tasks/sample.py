"""`linearizer sample`: sample grids from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from lit_linearizer.checkpoints import module_from_checkpoint, read_checkpoint, run_config
from lit_linearizer.errors import ConfigError
from lit_linearizer.tasks.reporting import write_grids


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def sample(cfg: DictConfig) -> dict[str, Path]:
    checkpoint = read_checkpoint(cfg.ckpt_path)
    module = module_from_checkpoint(checkpoint, cfg.ckpt_path, resolve_device(cfg.device))
    options = {k: v for k, v in cfg.items() if k not in ("ckpt_path", "device", "paths", "task_name", "data")}
    # Applications that transform inputs (source=data) need the data: `+data=<name>`, else the
    # data config stored in the checkpoint (None for older checkpoints).
    data = cfg.get("data")
    options["data_config"] = OmegaConf.to_container(data, resolve=True) if data else (run_config(checkpoint) or {}).get("data")
    return write_grids(module.sample_for_cli(**options), Path(cfg.paths.output_dir))
