"""Writing run outputs: the resolved config, metrics.json, single images, and the summary printed at the end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lit_linearizer.images import refuse_nonfinite, save_pngs

__all__ = [
    "format_summary",
    "launch_record",
    "resolved_config",
    "write_grids",
    "write_images",
    "write_json",
    "write_resolved_config",
]

# What the scheduler says about the job (recorded beside Hydra's launcher settings).
SLURM_VARIABLES = (
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME", "SLURM_JOB_PARTITION",
    "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_RESTART_COUNT", "SLURM_SUBMIT_DIR",
)


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


def launch_record() -> dict[str, Any]:
    """How this run was launched, for the W&B config: Hydra's command-line overrides (``overrides``; those of
    ``hydra.*`` as ``hydra_overrides``), the config group choices, run or multirun and the job number, the
    launcher's settings, and SLURM's job variables when there are any. {} outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    record: dict[str, Any] = {}
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        record = {
            "overrides": list(hydra.overrides.task),
            "hydra_overrides": list(hydra.overrides.hydra),
            "choices": {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra/")},
            "mode": getattr(hydra.mode, "name", hydra.mode),
            "job_num": hydra.job.get("num"),
            "output_dir": hydra.runtime.output_dir,
        }
        try:
            record["launcher"] = OmegaConf.to_container(hydra.launcher, resolve=True)
            record["sweep_dir"] = hydra.sweep.dir if record["mode"] == "MULTIRUN" else None
        except Exception:  # an interpolation that only resolves in the launching process
            record["launcher"] = OmegaConf.to_container(hydra.launcher, resolve=False)
    slurm = {k: os.environ[k] for k in SLURM_VARIABLES if k in os.environ}
    if slurm:
        record["slurm"] = slurm
    return record


def write_images(batches: Iterable[torch.Tensor], directory: Path, total: int | None = None) -> int:
    """Write batches of images in [0, 1] as single PNGs ``<directory>/000000.png ...`` (torch-fidelity, clean-fid
    and pytorch-fid read the folder as is), with a progress bar; one batch in memory at a time."""
    digits = max(6, len(str(max(0, (total or 1) - 1))))
    written = 0
    with tqdm(total=total, desc=f"writing {directory.name}/", unit="img") as bar:
        for batch in batches:
            written += save_pngs(batch, directory, written, digits=digits)
            bar.update(len(batch))
    print(f"wrote {written} images to {directory}")
    return written


def write_resolved_config(cfg: DictConfig, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(resolved_config(cfg)))
    return path


def write_grids(grids: Mapping[str, torch.Tensor], output_dir: Path) -> dict[str, Path]:
    """Save image grids ``(C, H, W)`` (floats in [0, 1], or uint8 pixels) as ``<output_dir>/<name>.png`` and say
    where; NaN/inf in a float grid is an error."""
    from PIL import Image
    from torchvision.utils import save_image

    for name, grid in grids.items():  # all checked before any is written: no black PNG that looks like a result
        refuse_nonfinite(grid, name)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, grid in grids.items():
        written[name] = output_dir / f"{name}.png"
        if grid.dtype == torch.uint8:
            Image.fromarray(grid.permute(1, 2, 0).squeeze(-1).cpu().numpy()).save(written[name])
        else:
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
