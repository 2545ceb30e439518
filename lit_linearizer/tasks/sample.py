"""`linearizer sample`: sample grids from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from lit_linearizer.checkpoints import load_module, read_checkpoint, run_config
from lit_linearizer.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def sample(cfg: DictConfig) -> dict[str, Path]:
    module = load_module(cfg.ckpt_path, resolve_device(cfg.device))
    options = {k: v for k, v in cfg.items() if k not in ("ckpt_path", "device", "paths", "task_name", "data")}
    # Applications that transform inputs (source=data) need the data: `+data=<name>`, else the
    # data config stored in the checkpoint (None for older checkpoints).
    data = cfg.get("data")
    options["data_config"] = (
        OmegaConf.to_container(data, resolve=True) if data else (run_config(read_checkpoint(cfg.ckpt_path)) or {}).get("data")
    )
    grids = module.sample_for_cli(**options)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, grid in grids.items():
        path = output_dir / f"{name}.png"
        save_image(grid, path)
        written[name] = path
        print(f"wrote {path}")
    return written
