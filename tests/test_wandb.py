"""What a W&B user sees, read back from the offline run files with wandb's own reader (`wandb leet inspect`).

Images equal the PNG grids on disk; W&B's step is the training step (one step per moment: images, metrics,
checkpoint), also after a resume; keys follow train/, val/, eval/; skipped metrics and Hydra's overrides are
in the run; `linearizer eval` logs into the run it evaluates or a new one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_linearizer.tasks.evaluate import evaluate
from lit_linearizer.tasks.train import train
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP, compose_config
from tests.helpers import SignalAtStep

RUN = [
    "experiment=mnist_one_step",
    *FAST_OVERRIDES,
    *TINY_ONE_STEP,
    "logger=wandb",
    "trainer.max_epochs=2",
    "trainer.check_val_every_n_epoch=1",
]


def inspect(run_dir: Path) -> tuple[list[dict], dict]:
    """The history rows and the ``--summary`` object of the one offline W&B run under ``run_dir``."""
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)]
    records = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [r["history"]["item"] for r in map(json.loads, records.splitlines()) if r["type"] == "history"]
    summary = subprocess.run([*command[:-1], "--summary", str(offline)], capture_output=True, text=True, check=True,
                             timeout=120).stdout  # fmt: skip
    return rows, json.loads(summary)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, session_dirs):
    """One tiny training run with the W&B logger (offline), 2 epochs of 3 steps, validation after each."""
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _offline(monkeypatch, tmp, session_dirs)
        cfg = compose_config(tmp, RUN)
        metrics = train(cfg)
    return tmp, cfg, metrics


def _offline(monkeypatch, tmp: Path, session_dirs) -> None:
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "TORCH_HOME", "MPLCONFIGDIR"):
        monkeypatch.setenv(name, str(tmp / "env" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("LINEARIZER_CACHE_DIR", str(session_dirs["cache"]))
    monkeypatch.setenv("LINEARIZER_DATA_DIR", str(session_dirs["data"]))


def test_logged_images_are_the_png_grids_on_disk(wandb_run):
    tmp, _, _ = wandb_run
    run_dir = tmp / "run"
    rows, _ = inspect(run_dir)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    checked = 0
    for row in rows:
        for key in [k for k in row if k.startswith("samples/") and k.endswith(".filenames")]:
            name = key.removeprefix("samples/").removesuffix(".filenames")
            (media,) = row[key]
            logged = _pixels(offline / "files" / media)
            on_disk = _pixels(run_dir / "samples" / f"{name}_step{row['trainer/global_step']:06d}.png")
            assert logged.max() > 1, f"{media} is black"  # the old float-to-uint8 cast gave only 0 and 1
            np.testing.assert_array_equal(logged, on_disk)
            checked += 1
    assert checked == 8  # one_step, 8_step, inversion, interpolation after each of the two validations


def test_one_step_per_moment_and_lightning_hydra_keys(wandb_run):
    tmp, _, metrics = wandb_run
    run_dir = tmp / "run"
    rows, summary = inspect(run_dir)
    assert all(row["_step"] == row["trainer/global_step"] for row in rows)  # W&B step = training step
    keys = {k for row in rows for k in row}
    assert "train/loss" in keys and not keys & {"train/loss_step", "train/loss_epoch"}
    assert not any(k.startswith("final/") for k in keys)
    # Validation, images and the checkpoint of one moment share the step: after 3 and after 6 optimizer steps.
    val_steps = [row["_step"] for row in rows if "val/loss" in row]
    image_steps = [row["_step"] for row in rows if "samples/one_step.filenames" in row]
    assert val_steps == image_steps == [3, 6]
    assert (run_dir / "checkpoints" / "epoch001-step000006.ckpt").is_file()
    # The final evaluation: once, as eval/*, at the last step, equal to metrics.json; no second val/ point.
    eval_rows = [row for row in rows if "eval/loss" in row]
    assert [row["_step"] for row in eval_rows] == [6]
    assert eval_rows[0]["eval/psnr_inversion"] == pytest.approx(metrics["psnr_inversion"])
    assert eval_rows[0]["eval/probe_accuracy_latent"] == pytest.approx(metrics["probe_accuracy_latent"])
    # Skipped metrics with their reasons: W&B summary and config, metrics.json.
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert payload["skipped_metrics"]["fid_inception"]
    for name, reason in payload["skipped_metrics"].items():
        assert summary["summary"][f"skipped/{name}"] == reason
    assert summary["config"]["skipped_metrics"] == payload["skipped_metrics"]
    # How the run was launched: Hydra's overrides and choices, the launcher.
    launch = summary["config"]["launch"]
    assert launch["overrides"] == RUN and launch["choices"]["experiment"] == "mnist_one_step"
    assert "_target_" in launch["launcher"]
    assert summary["state"] == "finished"


def test_eval_logs_into_the_run_it_evaluates_or_a_new_one(wandb_run, tmp_path, session_dirs, monkeypatch):
    tmp, _, _ = wandb_run
    _offline(monkeypatch, tmp_path, session_dirs)
    _, trained = inspect(tmp / "run")
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    base = [f"ckpt_path={ckpt}", "+trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
    for choice in ("same", "new"):
        cfg = compose_config(tmp_path / choice, [*base, f"wandb={choice}"], "eval")
        metrics = evaluate(cfg)
        rows, summary = inspect(tmp_path / choice / "run")
        assert (summary["run_id"] == trained["run_id"]) == (choice == "same")
        eval_rows = [row for row in rows if "eval/loss" in row]
        assert [(row["_step"], row["trainer/global_step"]) for row in eval_rows] == [(6, 6)]  # the checkpoint's step
        assert eval_rows[0]["eval/psnr_one_vs_multi"] == pytest.approx(metrics["psnr_one_vs_multi"])
        assert summary["config"]["evaluation"]["ckpt_path"] == str(ckpt)
        assert ("model" in summary["config"]) == (choice == "new")  # the training config, for a new run
        assert summary["summary"]["skipped/fid_inception"]
        payload = json.loads((tmp_path / choice / "run" / "metrics.json").read_text())
        assert payload["global_step"] == 6 and payload["wandb_run_id"] == summary["run_id"]


def test_resumed_run_continues_the_wandb_step(tmp_path, monkeypatch, session_dirs):
    _offline(monkeypatch, tmp_path, session_dirs)
    run = [*RUN, "trainer.check_val_every_n_epoch=2"]  # 3 steps per epoch, validation after step 6
    killer = [f"+callbacks.kill._target_={SignalAtStep.__module__}.SignalAtStep", "+callbacks.kill.step=4"]
    with pytest.raises(SystemExit):
        train(compose_config(tmp_path, [*run, *killer]))  # SIGTERM after step 4: interrupted.ckpt
    train(compose_config(tmp_path, run))  # resumes from it, into the same W&B run
    first, second = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    runs = []
    for offline in (first, second):
        records = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
                                 capture_output=True, text=True, check=True, timeout=120).stdout  # fmt: skip
        records = [json.loads(line) for line in records.splitlines()]
        run_id = next(r["run"]["run_id"] for r in records if r["type"] == "run")
        runs.append((run_id, [r["history"]["item"] for r in records if r["type"] == "history"]))
    (first_id, before), (second_id, after) = runs
    assert first_id == second_id  # the same W&B run
    # Losses at the steps they start from. The signal after step 4 stops the run at the next step boundary that
    # every rank agrees on (issue 13): the first run logs steps 0..k-1, and the resumed one continues at k.
    stopped = len(before)
    assert [row["_step"] for row in before] == list(range(stopped)) and stopped in (4, 5)
    assert [row["_step"] for row in after] == list(range(stopped, 7))  # the last row: validation and eval at 6
    assert all(row["_step"] == row["trainer/global_step"] for row in before + after)
