"""Checkpoints that are whole or absent: atomic writes on any filesystem, no stale temp files, periodic ``last.ckpt``.

Lightning's own save serialises into memory, writes a temp file in the *system* temp dir and
``shutil.move``s it. When the run dir is on another filesystem (a cluster's scratch disk, a
tmpfs) that move is a copy that first truncates the old file: a kill or a full disk in the middle
leaves the only checkpoint unreadable, and every kill orphans a temp file. Here a checkpoint is
written next to its final name (``.<name>.tmp-<host>-<pid>-<token>``, same directory, so the
same filesystem), flushed and fsynced, then ``os.replace``d over the final name and the directory
fsynced: a reader sees the old file or the new one, never part of one. A failed write removes its
temp file and leaves the old checkpoint as it was; a killed process's temp file is removed at the
next start (``RunCheckpoint.setup``) or at the next write into that directory.

``AtomicCheckpointIO`` is the Lightning ``CheckpointIO`` plugin, so every ``trainer.save_checkpoint``
(``ModelCheckpoint``'s, the preemption callback's, a user's) goes through it. It also refuses to
write a checkpoint whose weights are NaN/inf: a diverged model is not saved as if it were fine.
``RunCheckpoint`` is Lightning's ``ModelCheckpoint`` with two changes: ``last.ckpt`` is written
every ``every_n_train_steps`` steps even while the monitored metric does not exist yet (Lightning
defers it to the first validation, so a kill before it lost everything), and at the end of
training when the last one is older than the final step; and it installs the plugin if the
trainer has plain ``TorchCheckpointIO``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_linearizer.errors import CheckpointError, TrainingDivergedError

__all__ = [
    "AtomicCheckpointIO",
    "RunCheckpoint",
    "atomic_save",
    "is_temp_file",
    "nonfinite_tensors",
    "remove_stale_temp_files",
]

log = logging.getLogger(__name__)

_TEMP = ".tmp-"


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def temp_path(final: Path) -> Path:
    """Where ``final`` is written before it is renamed: hidden, beside it, named after the writing process."""
    return final.parent / f".{final.name}{_TEMP}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_file(path: Path) -> bool:
    return path.name.startswith(".") and _TEMP in path.name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Remove the temp files of checkpoint writes that never finished (their process was killed).

    A temp file written by a process that still runs on this host is kept (it is being written now);
    any other is stale: the run that wrote it was killed or moved to another node. Returns what was removed.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    host = _host()
    for path in directory.iterdir():
        if not is_temp_file(path):
            continue
        writer = path.name.rpartition(_TEMP)[2].rpartition("-")[0]  # "<host>-<pid>"
        writer_host, _, pid = writer.rpartition("-")
        if writer_host == host and pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
            continue  # being written right now
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        log.warning("removed %d unfinished checkpoint temp file(s) in %s (a killed run's)", len(removed), directory)
    return removed


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` that hold NaN or inf."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def _check_finite(checkpoint: Mapping[str, Any], path: Path) -> None:
    for key in ("state_dict", "current_model_state"):  # the (EMA) weights, and the raw weights beside them
        state = checkpoint.get(key)
        bad = nonfinite_tensors(state) if isinstance(state, Mapping) else []
        if bad:
            step = checkpoint.get("global_step", "?")
            raise TrainingDivergedError(
                f"not writing checkpoint {path}: the model's weights are NaN/inf at step {step} ({len(bad)} "
                f"tensors, e.g. {bad[0]}); the run diverged: lower model.optimizer.lr or keep gradient clipping on, "
                "and resume from an earlier checkpoint"
            )


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened or synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(checkpoint: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically: temp file beside it, flush, fsync, ``os.replace``, fsync the directory.

    On any failure (a full disk, a write error, an interrupt) the temp file is removed and ``path`` keeps
    what it held before; OSErrors become a one-line CheckpointError. Non-finite weights are refused.
    """
    path = Path(path)
    _check_finite(checkpoint, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    try:
        with open(temp, "xb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        cause: BaseException | None = error  # torch's zip writer reports a failed write as a RuntimeError
        while isinstance(cause, RuntimeError):
            cause = cause.__cause__ or cause.__context__
        if not isinstance(cause, OSError):
            cause = None
        if cause is not None:
            reason = cause.strerror or str(cause)
            kept = "the previous file is intact" if path.exists() else "no file was left under that name"
            raise CheckpointError(
                f"could not write checkpoint {path}: {reason} ({kept}); free space or pick another "
                "hydra.run.dir, then resume from the newest checkpoint"
            ) from error
        raise
    _fsync_directory(path.parent)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes (``atomic_save``); remote URLs go to the parent."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        directory = path.parent.resolve()
        if directory not in self._cleaned:
            remove_stale_temp_files(directory)
            self._cleaned.add(directory)
        atomic_save(checkpoint, path)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` does not wait for the monitored metric (see the module docstring).

    Arguments are ``ModelCheckpoint``'s. Checkpoints keep ModelCheckpoint's state key, so runs saved
    before this class existed resume with their best/last paths.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_ckpt_step: int | None = None

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint" + repr(
            dict(
                monitor=self.monitor,
                mode=self.mode,
                every_n_train_steps=self._every_n_train_steps,
                every_n_epochs=self._every_n_epochs,
                train_time_interval=self._train_time_interval,
            )
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and stage == "fit" and self.dirpath and _is_local_file_protocol(str(self.dirpath)):
            remove_stale_temp_files(self.dirpath)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_ckpt_step = trainer.global_step

    def _save_last_now(self, trainer: L.Trainer) -> None:
        """Write last.ckpt at this step without marking the step saved: a top-k save deferred to the
        next validation (the monitored metric does not exist yet) still happens then."""
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_step

    def _may_save(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (
            self.save_last is True
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
            and self._last_ckpt_step != trainer.global_step
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and self._may_save(trainer):
            self._save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.global_step > 0 and self._may_save(trainer):
            self._save_last_now(trainer)  # the last one is older than the final step
