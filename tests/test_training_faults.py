"""Runs that go wrong say so: non-finite losses and weights, runs that train nothing, W&B without network."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from datamodules import MNISTDataModule, StyleDataModule
from lit_linearizer.errors import ConfigError, TrainingDivergedError
from lit_linearizer.tasks import preflight
from lit_linearizer.tasks.train import _check_trained
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP, cli_env


def _tiny_run(compose_cfg, tmp_path, *extra):
    cfg = compose_cfg(["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "data.image_size=8",
                       "trainer.limit_train_batches=8", "trainer.limit_val_batches=0", *extra])  # fmt: skip
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False)
    return cfg, model, instantiate(cfg.data)


def _trainer(cfg, *callbacks, **overrides):
    return instantiate(cfg.trainer, callbacks=list(callbacks), logger=False, enable_checkpointing=False, **overrides)


def _nonfinite_at(model, batches: set[int]) -> None:
    """Make the loss of these training batches NaN (the step function is the module's own otherwise)."""
    step = model.model_step
    calls = {"n": 0}

    def model_step(batch):
        losses = step(batch)
        if model.training:
            if calls["n"] in batches:
                losses = {**losses, "loss": losses["loss"] * float("nan")}
            calls["n"] += 1
        return losses

    model.model_step = model_step


def test_skipped_batches_are_counted_and_training_goes_on(compose_cfg, tmp_path):
    cfg, model, data = _tiny_run(compose_cfg, tmp_path, "model.skip_nonfinite_loss=true")
    _nonfinite_at(model, {2, 3})
    trainer = _trainer(cfg)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 8 and model.skipped_batches == 2
    assert float(trainer.callback_metrics["train/skipped_batches"]) == 2


def test_too_many_skips_in_a_row_stop_with_the_step_numbers(compose_cfg, tmp_path):
    cfg, model, data = _tiny_run(compose_cfg, tmp_path, "model.skip_nonfinite_loss=true",
                                 "model.max_consecutive_skips=3")  # fmt: skip
    _nonfinite_at(model, {0, 2, 3, 4, 5})
    trainer = _trainer(cfg)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit(model, datamodule=data)
    message = str(info.value)
    assert "\n" not in message
    assert ("3 batches in a row had a non-finite loss, at steps 2-4 (epoch 0, batches 2-4), 4 skipped in all: "
            "stopping") in message
    assert "model.max_consecutive_skips=3" in message


class _BreakWeights(Callback):
    def __init__(self, step: int = 2):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def test_nonfinite_weights_stop_at_once_and_are_never_checkpointed(compose_cfg, tmp_path):
    cfg, model, data = _tiny_run(compose_cfg, tmp_path, "model.skip_nonfinite_loss=true")
    trainer = _trainer(cfg, _BreakWeights())
    with pytest.raises(TrainingDivergedError, match=r"the weights are NaN/inf \(.*\) at step 2 \(epoch 0, batch 2\):"):
        trainer.fit(model, datamodule=data)
    assert model.skipped_batches == 1  # not ten: skipping cannot fix broken weights
    with pytest.raises(TrainingDivergedError, match="not saving a checkpoint at step 2"):
        trainer.save_checkpoint(tmp_path / "broken.ckpt")
    assert not (tmp_path / "broken.ckpt").exists()


def test_validation_of_broken_weights_is_an_error_not_a_linalg_crash(compose_cfg, tmp_path):
    """The weights break in the epoch's last step: the next thing that runs is validation."""
    cfg, model, data = _tiny_run(compose_cfg, tmp_path, "trainer.limit_val_batches=1", "trainer.limit_train_batches=3",
                                 "trainer.check_val_every_n_epoch=1")
    trainer = _trainer(cfg, _BreakWeights(step=3))
    with pytest.raises(TrainingDivergedError, match="the weights are NaN/inf at step 3"):
        trainer.fit(model, datamodule=data)


# -- runs that train nothing -----------------------------------------------------------------------------
def test_a_batch_larger_than_the_training_split_is_an_error(session_dirs):
    data = MNISTDataModule(data_dir=str(session_dirs["data"]), batch_size=5000, image_size=8)
    with pytest.raises(ConfigError, match=r"data\.batch_size=5000 is larger than the training split \(4000 images\)"):
        data.setup("fit")
    data.setup("validate")  # evaluation does not need a full training batch


def test_too_few_style_crops_is_an_error(tmp_path):
    folder = tmp_path / "pairs"
    from PIL import Image

    for name in "abc":
        for sub in ("content", "same"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), (10, 20, 30)).save(folder / sub / f"{name}.png")
    data = StyleDataModule(styles=["same"], source="folder", root=str(folder), image_size=16, val_names=["c"],
                           crops_per_image=1, batch_size=4)  # fmt: skip
    match = r"\(2 crops: 2 training photos x data\.crops_per_image=1\).*raise data\.crops"
    with pytest.raises(ConfigError, match=match):
        data.setup("fit")


def test_a_fit_without_training_batches_is_an_error():
    with pytest.raises(ConfigError, match="nothing was trained"):
        _check_trained(SimpleNamespace(num_training_batches=0))
    _check_trained(SimpleNamespace(num_training_batches=3))


def test_train_with_an_oversized_batch_exits_2_without_results(tmp_path, session_dirs):
    run_dir = tmp_path / "run"
    args = ["experiment=mnist_one_step", *TINY_ONE_STEP, "logger=csv", "data.batch_size=5000",
            f"hydra.run.dir={run_dir}"]
    env = cli_env(tmp_path, session_dirs) | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lit_linearizer", "train", *args], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.batch_size=5000 is larger than the training split")
    assert "Traceback" not in result.stderr
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "metrics.json").exists()
    assert not list(run_dir.rglob("*.png"))


# -- W&B without network -----------------------------------------------------------------------------------
def test_wandb_key_without_network_falls_back_to_offline_in_seconds(compose_cfg, monkeypatch):
    cfg = compose_cfg(["experiment=mnist_one_step", "logger=wandb"])
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    notices = []
    started = time.monotonic()
    preflight.choose_wandb_mode(cfg, notices.append)
    assert time.monotonic() - started < 5
    assert os.environ["WANDB_MODE"] == "offline"
    assert len(notices) == 1 and "127.0.0.1:9 is unreachable" in notices[0] and "offline" in notices[0]


def test_wandb_server_that_accepts_but_never_answers_falls_back_in_seconds(compose_cfg, monkeypatch):
    """A firewall or captive proxy that takes the connection and says nothing: W&B's client waited ~100 s."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # the kernel accepts the connection; nobody ever reads or answers
    cfg = compose_cfg(["experiment=mnist_one_step", "logger=wandb"])
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    notices = []
    started = time.monotonic()
    try:
        preflight.choose_wandb_mode(cfg, notices.append)
    finally:
        server.close()
    assert time.monotonic() - started < 5
    assert os.environ["WANDB_MODE"] == "offline"
    assert len(notices) == 1 and "offline" in notices[0], notices


def test_wandb_that_answers_is_left_alone(compose_cfg, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):  # any status is an answer: the server is there
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = compose_cfg(["experiment=mnist_one_step", "logger=wandb"])
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        preflight.choose_wandb_mode(cfg, pytest.fail)
    finally:
        server.shutdown()
        server.server_close()
    assert os.environ["WANDB_MODE"] == "online"


def test_resume_differences_name_the_keys():
    saved = {"_target_": "lit_linearizer.modules.one_step.OneStepLitModule", "image_shape": [1, 8, 8],
             "network": {"num_steps": 1, "hidden_channels": 8}, "optimizer": {"lr": 1e-3}}  # fmt: skip
    current = {"_target_": "lit_linearizer.applications.one_step.module.OneStepLitModule", "image_shape": [1, 8, 8],
               "network": {"num_steps": 2, "hidden_channels": 8}, "optimizer": {"lr": 3e-4}}  # fmt: skip
    # The moved class path is the same class; the learning rate may change on resume; the network may not.
    assert preflight.model_differences(saved, current) == [("model.network.num_steps", 1, 2)]

