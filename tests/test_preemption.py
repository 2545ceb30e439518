"""Stop signals, the agreed stop and what a rerun resumes from (in-process; the real-SLURM suite is tests/cluster/)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from lit_linearizer import cluster
from lit_linearizer.randomness import NoiseStreams
from lit_linearizer.tasks.train import _continue_wandb_run, resume_checkpoint, train
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP


def test_stop_handlers_record_signals_nest_and_give_the_process_its_handlers_back():
    before = signal.getsignal(signal.SIGUSR1)
    with cluster.stop_handlers():
        with cluster.stop_handlers():
            os.kill(os.getpid(), signal.SIGUSR1)  # recorded, not fatal
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert cluster.received_signals() == ["SIGUSR1", "SIGTERM"]  # the inner block kept them
        assert cluster.stop_requested() and cluster.requeue_wanted()
    assert signal.getsignal(signal.SIGUSR1) is before and not cluster.stop_requested()
    with cluster.stop_handlers():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert cluster.stop_requested() and not cluster.requeue_wanted()  # SIGTERM stops, it does not requeue


def test_slurm_job_id_and_who_requeues():
    assert cluster.slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert cluster.slurm_job_id({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "1"}) == "8_1"
    assert cluster.slurm_job_id({}) is None
    assert cluster.requeue_by_this_process({"SLURM_JOB_ID": "7"})
    assert not cluster.requeue_by_this_process({"SLURM_JOB_ID": "7", "LINEARIZER_REQUEUE": "exit"})  # train.sbatch
    assert not cluster.requeue_by_this_process({})


def test_each_rank_resumes_its_own_noise_stream():
    ranks = [NoiseStreams(seed=1) for _ in range(2)]
    for rank, noise in enumerate(ranks):
        noise.start(torch.device("cpu"), rank)
        torch.rand(3, generator=noise.generator)
    states = [noise.state() for noise in ranks]
    expected = [torch.rand(5, generator=noise.generator) for noise in ranks]
    for rank in range(2):
        restored = NoiseStreams(seed=1)
        restored.restore(states)
        restored.start(torch.device("cpu"), rank)
        assert torch.equal(torch.rand(5, generator=restored.generator), expected[rank])
    # An old checkpoint's single state is rank zero's: rank one must not replay it.
    legacy = NoiseStreams(seed=1)
    legacy.restore(states[0])
    legacy.start(torch.device("cpu"), 1)
    assert not torch.equal(legacy.generator.get_state(), states[0]["state"])


def test_rerun_resumes_from_the_newest_checkpoint_of_an_unfinished_run(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=mnist_one_step", "ckpt_path=/elsewhere/given.ckpt"])
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    checkpoints.mkdir(parents=True)
    assert resume_checkpoint(cfg, run) == "/elsewhere/given.ckpt"  # nothing in the run dir yet
    (checkpoints / "interrupted.ckpt").write_text("x")
    os.utime(checkpoints / "interrupted.ckpt", ns=(1, 1))
    (checkpoints / "last.ckpt").write_text("x")  # written after the interrupted state (a later segment)
    assert resume_checkpoint(cfg, run) == str(checkpoints / "last.ckpt")
    os.utime(checkpoints / "last.ckpt", ns=(0, 0))
    assert resume_checkpoint(cfg, run) == str(checkpoints / "interrupted.ckpt")
    (run / "metrics.json").write_text("{}")  # finished: not resumed
    assert resume_checkpoint(cfg, run) == "/elsewhere/given.ckpt"


def test_wandb_run_id_is_kept_by_the_run_dir_before_any_checkpoint(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=mnist_one_step", "logger=wandb"])
    _continue_wandb_run(cfg, None, tmp_path)
    first = cfg.logger.wandb.id
    assert first and (tmp_path / "wandb_run_id").read_text().strip() == first
    again = compose_cfg(["experiment=mnist_one_step", "logger=wandb"])
    _continue_wandb_run(again, None, tmp_path)  # a requeued job stopped before its first checkpoint
    assert again.logger.wandb.id == first and again.logger.wandb.resume == "allow"


class SignalInEvaluation(Callback):
    """SIGUSR1 to this process during the evaluation after fit (trainer.validate), once."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "validate" and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_signal_in_the_evaluation_after_fit_stops_and_a_rerun_resumes_from_last_ckpt(compose_cfg, tmp_path):
    overrides = ["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "model.num_grid_samples=4"]
    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        cfg.callbacks.signal_in_evaluation = {"_target_": f"{__name__}.SignalInEvaluation"}
    with pytest.raises(SystemExit) as stop:
        train(cfg)
    assert stop.value.code == cluster.REQUEUE_EXIT_CODE
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()  # fit had ended: last.ckpt is its state
    assert signal.getsignal(signal.SIGUSR1) is not cluster._record  # the process has its handlers back

    rerun = compose_cfg(overrides)
    metrics = train(rerun)  # resumes from last.ckpt: nothing left to fit, evaluates
    assert metrics["psnr_one_vs_multi"] > 80
    assert (run / "metrics.json").is_file()
