"""The module's own callbacks: grids to PNG files and W&B, and the checkpoint metadata."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

import lit_linearizer
from lit_linearizer.callbacks import CheckpointMetadata, SampleGridWriter
from lit_linearizer.randomness import NoiseStreams


class _Module:
    """The two things SampleGridWriter asks of a module."""

    def __init__(self):
        self.calls = 0

    def full_precision(self):
        return nullcontext()

    def sample_grids(self):
        self.calls += 1
        assert not torch.is_grad_enabled()  # drawn without gradients
        return {"samples": torch.rand(3, 10, 14), "other": torch.zeros(3, 6, 6)}


class _RecordingWandb(WandbLogger):
    def __init__(self):  # no W&B run: only what the writer calls
        self.logged = []

    def log_image(self, key, images, step=None, **kwargs):
        self.logged.append((key, step, images[0]))


def _trainer(tmp_path, **overrides):
    values = dict(sanity_checking=False, current_epoch=0, max_epochs=10, is_global_zero=True,
                  default_root_dir=str(tmp_path), global_step=42, loggers=[])  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


def test_grid_writer_saves_pngs_and_logs_the_files_to_wandb(tmp_path):
    wandb = _RecordingWandb()
    module, writer = _Module(), SampleGridWriter(every_n_epochs=1)
    writer.on_validation_epoch_end(_trainer(tmp_path, loggers=[wandb]), module)
    samples = tmp_path / "samples"
    assert Image.open(samples / "samples.png").size == (14, 10)
    assert (samples / "samples_step000042.png").is_file() and (samples / "other.png").is_file()
    # W&B gets the PNG on disk itself (a float tensor would be cast to uint8: all black), at the same step.
    assert wandb.logged == [("samples/samples", 42, str(samples / "samples_step000042.png")),
                            ("samples/other", 42, str(samples / "other_step000042.png"))]  # fmt: skip
    assert (samples / "samples.png").read_bytes() == (samples / "samples_step000042.png").read_bytes()
    # The evaluation after training (same step, same weights) does not draw them again.
    writer.on_validation_epoch_end(_trainer(tmp_path, loggers=[wandb]), module)
    assert module.calls == 1 and len(wandb.logged) == 2


def test_grid_writer_schedule(tmp_path):
    module, writer = _Module(), SampleGridWriter(every_n_epochs=4)
    for epoch in range(10):  # epochs 4 and 8 (1-based) and the last one
        writer.on_validation_epoch_end(_trainer(tmp_path, current_epoch=epoch, global_step=10 * epoch), module)
    assert module.calls == 3
    writer.on_validation_epoch_end(_trainer(tmp_path, sanity_checking=True, current_epoch=3, global_step=1), module)
    writer.on_validation_epoch_end(_trainer(tmp_path, is_global_zero=False, current_epoch=3, global_step=1), module)
    assert module.calls == 3  # never in the sanity check, never on other ranks
    assert writer.write(_trainer(tmp_path, is_global_zero=False), module) == {}


def test_checkpoint_metadata_round_trip():
    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.noise, self.run_config = NoiseStreams(seed=3), {"seed": 3}

    module = Module()
    module.noise.start(torch.device("cpu"), rank=0)
    checkpoint = {}
    trainer = SimpleNamespace(loggers=[], world_size=1)
    CheckpointMetadata().on_save_checkpoint(trainer, module, checkpoint)
    metadata = checkpoint["lit_linearizer"]
    assert metadata["module_class"] == f"{Module.__module__}.{Module.__qualname__}"
    assert metadata["version"] == lit_linearizer.__version__ and metadata["run_config"] == {"seed": 3}
    assert metadata["wandb_run_id"] is None
    first = torch.rand(4, generator=module.noise.generator)
    restored = Module()
    CheckpointMetadata().on_load_checkpoint(trainer, restored, checkpoint)
    restored.noise.start(torch.device("cpu"), rank=0)
    assert torch.equal(torch.rand(4, generator=restored.noise.generator), first)  # the stream continues
