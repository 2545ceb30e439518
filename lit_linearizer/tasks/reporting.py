"""Writing run outputs: the resolved config, metrics.json, and the summary printed at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from lit_linearizer.errors import CheckpointError

__all__ = [
    "format_summary",
    "refuse_nonfinite",
    "resolved_config",
    "write_grids",
    "write_json",
    "write_resolved_config",
]


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; "inf" says PSNR of identical images
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=True) + "\n")
    return path


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain containers, interpolations resolved, Hydra's own node left out."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}


def write_resolved_config(cfg: DictConfig, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(resolved_config(cfg)))
    return path


def refuse_nonfinite(images: torch.Tensor, name: str) -> None:
    """A one-line CheckpointError if generated ``images`` hold NaN/inf: check float images before they become
    pixels (a NaN turns into a black uint8 pixel, and a black PNG looks like a result)."""
    bad = int((~torch.isfinite(images)).sum()) if images.is_floating_point() else 0
    if bad:
        raise CheckpointError(
            f"the model generated NaN/inf values ({bad} of {images.numel()} in {name}); nothing was written: its "
            "weights are broken (a run that diverged); sample from a checkpoint written before the divergence"
        )


def write_grids(grids: Mapping[str, torch.Tensor], output_dir: Path) -> dict[str, Path]:
    """Save image grids (values in [0, 1]) as ``<output_dir>/<name>.png`` and say where; NaN/inf is an error."""
    from torchvision.utils import save_image

    for name, grid in grids.items():  # all checked before any is written: no black PNG that looks like a result
        refuse_nonfinite(grid, name)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, grid in grids.items():
        written[name] = output_dir / f"{name}.png"
        save_image(grid, written[name])
        print(f"wrote {written[name]}")
    return written


def format_summary(title: str, metrics: Mapping[str, Any], skipped: Mapping[str, str], run_dir: Path) -> str:
    lines = [f"== {title} ==", f"run dir: {run_dir}"]
    for name in sorted(metrics):
        value = _jsonable(metrics[name])
        lines.append(f"  {name:<40} {value:.4f}" if isinstance(value, float) else f"  {name:<40} {value}")
    for name, reason in sorted(skipped.items()):
        lines.append(f"  {name:<40} skipped: {reason}")
    return "\n".join(lines)
