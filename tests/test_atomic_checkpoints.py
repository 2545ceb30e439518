"""Checkpoints under faults: atomic on any filesystem, no temp files left, full disks, kills, periodic last.ckpt.

The run dir sits on a tmpfs mounted by the test (root only; skipped elsewhere), the system temp dir on
another filesystem: the case where Lightning's own save (temp file in $TMPDIR, then a move that is a
copy) left a truncated last.ckpt and an orphaned temp file on every kill.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_linearizer.callbacks import AtomicCheckpointIO, RunCheckpoint
from lit_linearizer.callbacks.atomic_checkpoint import atomic_save, is_temp_file, remove_stale_temp_files, temp_path
from lit_linearizer.checkpoints import load_module, read_checkpoint
from lit_linearizer.errors import CheckpointError, TrainingDivergedError
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP, cli_env


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` at ``path`` for the duration (a filesystem of its own); skips the test if mount fails."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()[:100]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if is_temp_file(p)] if directory.is_dir() else []


# -- the writer --------------------------------------------------------------------------------------
def test_atomic_save_on_another_filesystem_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    with mounted_tmpfs(tmp_path / "disk", "16m") as disk:
        target = disk / "checkpoints" / "last.ckpt"
        for value in range(3):
            atomic_save({"state_dict": {"w": torch.full((1000,), float(value))}}, target)
            assert torch.equal(torch.load(target)["state_dict"]["w"], torch.full((1000,), float(value)))
        assert _temp_files(target.parent) == [] and _files(system_tmp) == []


def test_full_filesystem_keeps_the_previous_checkpoint_and_no_partial_file(tmp_path):
    with mounted_tmpfs(tmp_path / "small", "1m") as disk:
        target = disk / "last.ckpt"
        atomic_save({"state_dict": {"w": torch.ones(10_000)}}, target)  # 40 kB: fits
        before = target.read_bytes()
        with pytest.raises(CheckpointError, match=r"No space left on device .*previous file is intact") as error:
            atomic_save({"state_dict": {"w": torch.ones(1_000_000)}}, target)  # 4 MB: does not
        assert "\n" not in str(error.value)
        assert target.read_bytes() == before and _temp_files(disk) == []
        fresh = disk / "epoch001.ckpt"  # a new name on a full disk: nothing at all under it
        with pytest.raises(CheckpointError, match="no file was left under that name"):
            atomic_save({"state_dict": {"w": torch.ones(1_000_000)}}, fresh)
        assert not fresh.exists() and [p.name for p in _files(disk)] == ["last.ckpt"]


def test_full_filesystem_through_the_trainer(tmp_path):
    """trainer.save_checkpoint on a full disk: a one-line CheckpointError, the earlier checkpoint intact."""
    with mounted_tmpfs(tmp_path / "small", "1m") as disk:
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                            default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(BoringModel())
        trainer.save_checkpoint(disk / "last.ckpt")
        good = (disk / "last.ckpt").read_bytes()
        (disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 3 * len(good) // 2))
        with pytest.raises(CheckpointError, match="No space left on device"):
            trainer.save_checkpoint(disk / "last.ckpt")
        assert (disk / "last.ckpt").read_bytes() == good and _temp_files(disk) == []


def test_an_interrupted_write_removes_its_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.zeros(3)}}, target)

    def interrupted(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"state_dict": {"w": torch.ones(3)}}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target)["state_dict"]["w"], torch.zeros(3)) and _temp_files(tmp_path) == []


def test_nonfinite_weights_are_not_saved(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"NaN/inf at step 7 .*e\.g\. w"):
        atomic_save({"global_step": 7, "state_dict": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "x.ckpt")
    assert _files(tmp_path) == []


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_path(tmp_path / "last.ckpt")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
    live = temp_path(tmp_path / "epoch1.ckpt")
    live = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{os.getppid()}-"))  # a process that runs
    other_host = tmp_path / ".last.ckpt.tmp-elsewhere-123-abcd"
    for path in (stale, live, other_host):
        path.write_bytes(b"partial")
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([stale, other_host])
    assert sorted(p.name for p in _files(tmp_path)) == sorted(["last.ckpt", live.name])


# -- periodic last.ckpt --------------------------------------------------------------------------------
class _LastCheckpointSteps(Callback):
    """Records, at the start of every training batch, the step stored in last.ckpt (None if there is none)."""

    def __init__(self, directory: Path):
        self.path = directory / "last.ckpt"
        self.seen: list[int | None] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(torch.load(self.path, weights_only=False)["global_step"] if self.path.is_file() else None)


@pytest.mark.parametrize("checkpoint_class", [ModelCheckpoint, RunCheckpoint])
def test_periodic_last_checkpoint_does_not_wait_for_the_monitored_metric(tmp_path, checkpoint_class):
    directory = tmp_path / "checkpoints"
    checkpoint = checkpoint_class(dirpath=directory, monitor="val/loss", save_last=True, every_n_train_steps=1)
    recorder = _LastCheckpointSteps(directory)
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder, checkpoint],
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel())
    if checkpoint_class is ModelCheckpoint:  # Lightning's: deferred to a validation that never comes
        assert recorder.seen == [None, None, None, None]
    else:
        assert recorder.seen == [None, 1, 2, 3]
        assert torch.load(directory / "last.ckpt", weights_only=False)["global_step"] == 4
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_last_checkpoint_is_written_at_the_end_of_training(tmp_path):
    """every_n_train_steps=3, max_steps=5: last.ckpt at step 3, then at the final step 5."""
    directory = tmp_path / "checkpoints"
    checkpoint = RunCheckpoint(dirpath=directory, monitor=None, save_last=True, every_n_train_steps=3)
    trainer = L.Trainer(max_steps=5, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoint], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel())
    assert torch.load(directory / "last.ckpt", weights_only=False)["global_step"] == 5


def test_checkpoints_keep_model_checkpoint_state_key():
    ours = RunCheckpoint(monitor="val/loss", every_n_train_steps=5)
    assert ours.state_key == ModelCheckpoint(monitor="val/loss", every_n_train_steps=5).state_key


# -- SIGKILL at random moments -----------------------------------------------------------------------
FAULT_RUN = [
    "experiment=mnist_one_step", *TINY_ONE_STEP, "trainer.max_epochs=1000", "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=2", "trainer.num_sanity_val_steps=0",
    "logger=csv", "data.batch_size=16", "callbacks.model_checkpoint.every_n_train_steps=1",
    "+callbacks.ballast._target_=tests.helpers.CheckpointBallast", "+callbacks.ballast.megabytes=24",
]  # fmt: skip


def _final_checkpoints(directory: Path) -> list[Path]:
    return sorted((p for p in directory.glob("*.ckpt") if not is_temp_file(p)), key=lambda p: p.stat().st_mtime)


def _wait_for(condition, timeout: float, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def _wait_for_new_checkpoint(process: subprocess.Popen, log: Path, checkpoints: Path, after: float) -> None:
    """Until ``process`` has written a checkpoint newer than ``after`` (an mtime): it resumed and trained."""

    def written() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"training exited with {process.returncode}: {log.read_text()[-3000:]}")
        files = _final_checkpoints(checkpoints) if checkpoints.is_dir() else []
        return bool(files) and files[-1].stat().st_mtime > after

    assert _wait_for(written, timeout=300, poll=0.05), "no new checkpoint within 300 s"


def run_with_kills(tmp_path: Path, session_dirs, kills: int, seed: int = 0) -> dict[str, int]:
    """Train, SIGKILL, check, resume from the newest checkpoint, ``kills`` times; then finish. Returns counts."""
    rng = random.Random(seed)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    env = {**cli_env(tmp_path, session_dirs), "TMPDIR": str(system_tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # fmt: skip
    counts = {"kills": 0, "killed_mid_write": 0, "stale_temp_removed": 0, "loaded": 0, "resumed": 0}
    with mounted_tmpfs(tmp_path / "disk", "400m") as disk:
        run_dir, log = disk / "run", tmp_path / "train.log"
        checkpoints = run_dir / "checkpoints"
        newest, newest_step = None, -1
        for attempt in range(kills + 1):
            args = [*FAULT_RUN, f"hydra.run.dir={run_dir}"] + ([f"ckpt_path={newest}"] if newest else [])
            if attempt == kills:  # the last run finishes: three more steps
                args = [a for a in args if not a.startswith("trainer.max_epochs")]
                args.append(f"trainer.max_steps={newest_step + 3}")
            stale_before = set(_temp_files(checkpoints))
            with open(log, "w") as output:
                process = subprocess.Popen([sys.executable, "-m", "lit_linearizer", "train", *args], env=env,
                                           stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
            if attempt == kills:
                assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
                counts["resumed"] += newest is not None
                break
            _wait_for_new_checkpoint(process, log, checkpoints, newest.stat().st_mtime if newest else 0.0)
            counts["resumed"] += newest is not None
            # The run started and wrote: a killed predecessor's temp files are gone.
            assert not (stale_before & set(_temp_files(checkpoints))), "a stale temp file survived the restart"
            counts["stale_temp_removed"] += len(stale_before)
            if attempt % 2:  # kill inside a write: as soon as a temp file shows up
                _wait_for(lambda: bool(_temp_files(checkpoints)), timeout=5, poll=0.0005)
            else:  # kill at a random moment
                time.sleep(rng.uniform(0.0, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            counts["kills"] += 1
            counts["killed_mid_write"] += bool(_temp_files(checkpoints))
            # Every file under a checkpoint's name is whole, and the newest loads as a model.
            files = _final_checkpoints(checkpoints)
            assert files, "a kill left no checkpoint"
            for path in files:
                read_checkpoint(path)
            newest = files[-1]
            load_module(newest)
            counts["loaded"] += 1
            step = read_checkpoint(newest, mmap=True)["global_step"]
            assert step >= newest_step, f"the newest checkpoint went back from step {newest_step} to {step}"
            newest_step = step
        assert _temp_files(checkpoints) == [], "temp files left after the final run"
        assert _files(system_tmp) == [], "files left in the system temp dir"
        assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == newest_step + 3
    return counts


def test_sigkill_during_training_never_loses_the_checkpoint(tmp_path, session_dirs):
    """The default suite's lean version: two kills (one at a random moment, one inside a write), then resume."""
    counts = run_with_kills(tmp_path, session_dirs, kills=2, seed=1)
    assert counts["kills"] == counts["loaded"] == 2 and counts["resumed"] == 2


@pytest.mark.slow
def test_twenty_sigkills_at_random_moments(tmp_path, session_dirs, capsys):
    counts = run_with_kills(tmp_path, session_dirs, kills=20, seed=14)
    with capsys.disabled():
        print(f"\nfault test: {counts}")
    assert counts["kills"] == counts["loaded"] == 20 and counts["resumed"] == 20


def test_the_run_config_writes_last_ckpt_every_step_before_any_validation(compose_cfg):
    """The project's own callback config, as a user overrides it: `every_n_train_steps=1` with the default
    `monitor=val/loss` writes last.ckpt from step 1 on, long before validation (none runs here)."""
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "data.image_size=8",
                       "trainer.max_steps=3", "trainer.check_val_every_n_epoch=5",
                       "callbacks.model_checkpoint.every_n_train_steps=1"])  # fmt: skip
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    assert isinstance(checkpoint, RunCheckpoint) and checkpoint.monitor == "val/loss"
    recorder = _LastCheckpointSteps(Path(checkpoint.dirpath))
    trainer = instantiate(cfg.trainer, callbacks=[recorder, checkpoint], logger=False)
    trainer.fit(instantiate(cfg.model, _recursive_=False), datamodule=instantiate(cfg.data))
    assert recorder.seen == [None, 1, 2]
    assert torch.load(Path(checkpoint.dirpath) / "last.ckpt", weights_only=False)["global_step"] == 3
