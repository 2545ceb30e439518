"""Writing a module's sample grids after validation: PNG files under the run directory and W&B images."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import save_image

__all__ = ["SampleGridWriter"]


class SampleGridWriter(Callback):
    """Saves ``pl_module.sample_grids()`` (name -> image grid in [0, 1]) and logs it to W&B (``samples/<name>``).

    Each grid goes to ``<run dir>/samples/<name>.png`` (the latest) and ``<name>_step<step>.png``, ``step``
    being the module's ``logging_step`` (the trainer's global step in training). W&B gets that PNG file itself,
    at that step: the logged image is the file on disk, pixel for pixel (``wandb.Image`` of a float tensor
    would cast [0, 1] straight to uint8, all black).
    It runs after every ``every_n_epochs``-th validation and after the last epoch's, never in the
    sanity check, on rank zero only, without gradients and with autocast off (``pl_module.full_precision()``).
    The module brings this callback itself (``LinearizerLitModule.configure_callbacks``).
    """

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = max(1, int(every_n_epochs))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._due(trainer) and not self._written(trainer, pl_module):
            self.write(trainer, pl_module)

    @staticmethod
    def _written(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """The grids of this step are on disk already: the evaluation after training draws with the weights
        the last validation drew with (a new callback then: the module brings new ones to every trainer call)."""
        step = int(getattr(pl_module, "logging_step", trainer.global_step))
        return any((Path(trainer.default_root_dir) / "samples").glob(f"*_step{step:06d}.png"))

    def _due(self, trainer: L.Trainer) -> bool:
        epoch, last = trainer.current_epoch, trainer.max_epochs
        return (epoch + 1) % self.every_n_epochs == 0 or (last is not None and last > 0 and epoch + 1 >= last)

    @torch.no_grad()
    def write(
        self, trainer: L.Trainer, pl_module: L.LightningModule, directory: str | Path | None = None
    ) -> dict[str, Path]:
        """Draw and save the grids now; returns name -> path of the latest PNG (nothing on other ranks)."""
        if not trainer.is_global_zero:
            return {}
        directory = Path(directory or Path(trainer.default_root_dir) / "samples")
        directory.mkdir(parents=True, exist_ok=True)
        with pl_module.full_precision():
            grids = pl_module.sample_grids()
        step = int(getattr(pl_module, "logging_step", trainer.global_step))
        written = {}
        for name, grid in grids.items():
            path = directory / f"{name}.png"
            at_step = directory / f"{name}_step{step:06d}.png"
            save_image(grid, at_step)
            shutil.copyfile(at_step, path)
            written[name] = path
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"samples/{name}", images=[str(at_step)], step=step)
        return written
