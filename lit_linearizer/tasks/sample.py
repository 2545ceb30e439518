"""`linearizer sample`: sample grids from a checkpoint, or N single images, through its application's command adapter.

    linearizer sample ckpt_path=... n=64                           # <output dir>/samples_one_step.png (a grid)
    linearizer sample ckpt_path=... n=50000 format=png             # <output dir>/samples_one_step/000000.png ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from lit_linearizer.applications import idempotent, one_step, style_transfer
from lit_linearizer.applications.idempotent import cli as idempotent_cli
from lit_linearizer.applications.one_step import cli as one_step_cli
from lit_linearizer.applications.style_transfer import cli as style_transfer_cli
from lit_linearizer.checkpoints import module_from_checkpoint, read_checkpoint, run_config
from lit_linearizer.errors import ConfigError
from lit_linearizer.tasks.inputs import CommandInputs
from lit_linearizer.tasks.reporting import write_grids, write_images

__all__ = ["FORMATS", "SAMPLERS", "STREAMS", "resolve_device", "sample"]

FORMATS = ("grid", "png")

# The LightningModule of each application -> its adapter of `linearizer sample` (applications/<name>/cli.py).
SAMPLERS: dict[type, Callable[..., dict[str, torch.Tensor]]] = {
    one_step.OneStepLitModule: one_step_cli.sample,
    idempotent.IdempotentLitModule: idempotent_cli.sample,
    style_transfer.StyleTransferLitModule: style_transfer_cli.sample,
}
# ... and its adapter of `format=png`: (name, batches of single images in [0, 1]), generated one batch at a time.
STREAMS: dict[type, Callable[..., tuple[str, Iterator[torch.Tensor]]]] = {
    one_step.OneStepLitModule: one_step_cli.sample_batches,
    idempotent.IdempotentLitModule: idempotent_cli.sample_batches,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Grids (``format=grid``): name -> PNG file; single images (``format=png``): name -> their folder."""
    image_format = cfg.get("format") or "grid"
    if image_format not in FORMATS:
        raise ConfigError(f"format={image_format!r} is not one of {FORMATS}")
    checkpoint = read_checkpoint(cfg.ckpt_path)
    module = module_from_checkpoint(checkpoint, cfg.ckpt_path, resolve_device(cfg.device))
    adapters = SAMPLERS if image_format == "grid" else STREAMS
    adapter = next((fn for cls, fn in adapters.items() if isinstance(module, cls)), None)
    if adapter is None:
        what = "`linearizer sample`" if image_format == "grid" else "format=png (single generated images)"
        raise ConfigError(f"{type(module).__name__} does not support {what}")
    options = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key not in ("ckpt_path", "device", "paths", "task_name", "data", "hydra", "format")
    }
    # Applications that transform inputs (source=data) need the data: `+data=<name>`, else the
    # data config stored in the checkpoint (None for older checkpoints).
    data = cfg.get("data")
    data = OmegaConf.to_container(data, resolve=True) if data else (run_config(checkpoint) or {}).get("data")
    inputs = CommandInputs(data)
    if image_format == "png":
        name, batches = adapter(module.model, inputs, **options)
        directory = Path(cfg.paths.output_dir) / name
        write_images(batches, directory, total=int(cfg.n))
        return {name: directory}
    return write_grids(adapter(module.model, inputs, **options), Path(cfg.paths.output_dir))
