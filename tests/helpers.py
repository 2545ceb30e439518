"""Test-only Lightning callbacks, importable by subprocess runs through Hydra (`+callbacks.x._target_=...`)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    """Send a real signal to this process once, after optimizer step ``step`` (to test preemption)."""

    def __init__(self, step: int, signal_name: str = "SIGTERM"):
        self.step = step
        self.signum = getattr(signal, signal_name)
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.sent and trainer.global_step == self.step and trainer.is_global_zero:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class RecordBatches(Callback):
    """Append (step, sample indices, a noise fingerprint) of every training batch to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        generator = pl_module.noise_generator
        fingerprint = float(generator.get_state().float().sum()) if generator is not None else None
        with open(self.path, "a") as handle:
            handle.write(f"{trainer.global_step} {batch_idx} {batch['index'][:4].tolist()} {fingerprint}\n")


class CheckpointBallast(Callback):
    """Add ``megabytes`` of random bytes to every checkpoint: longer writes, so that kills land inside them."""

    def __init__(self, megabytes: float = 16):
        import torch

        self.blob = torch.randint(0, 256, (int(megabytes * 2**20),), dtype=torch.uint8)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["test_ballast"] = self.blob
