"""The `linearizer` command as a user runs it: subprocesses, real argv, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY_ONE_STEP, cli_env

CLI = [sys.executable, "-m", "lit_linearizer"]
FAST_CLI = [
    "experiment=mnist_one_step",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "logger=csv",
    "data.batch_size=16",
    *TINY_ONE_STEP,
]


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, session_dirs):
    """One tiny training run through the CLI, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    env = cli_env(tmp, session_dirs)
    result = run(["train", *FAST_CLI, f"hydra.run.dir={tmp / 'run'}"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, env, result


def test_train_prints_run_dir_and_metrics(trained_run):
    tmp, _, result = trained_run
    run_dir = tmp / "run"
    assert f"run dir: {run_dir}" in result.stdout
    assert "psnr_one_vs_multi" in result.stdout and "skipped:" in result.stdout
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.json").is_file()
    assert (run_dir / "csv").is_dir()  # logger=csv wrote its metrics


def test_sample_one_step_and_multi_step(trained_run):
    tmp, env, _ = trained_run
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    for steps, name in [(1, "samples_one_step.png"), (8, "samples_8_step_rk4.png")]:
        out = tmp / f"sample{steps}"
        args = ["sample", f"ckpt_path={ckpt}", "n=4", f"steps={steps}", "device=cpu", f"hydra.run.dir={out}"]
        result = run(args, env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / name).is_file()


def test_eval_writes_metrics(trained_run):
    tmp, env, _ = trained_run
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    out = tmp / "eval"
    result = run(["eval", f"ckpt_path={ckpt}", "trainer.limit_val_batches=1", f"hydra.run.dir={out}"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["metrics"]["psnr_one_vs_multi"] > 80


def test_unknown_config_key_is_one_line_with_hint(tmp_path, session_dirs):
    started = time.time()
    result = run(["train", "experiment=mnist_one_step", "model.lerning_rate=1"], cli_env(tmp_path, session_dirs))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "lerning_rate" in lines[0]
    assert "--cfg job" in lines[0] and "+model.lerning_rate=1" in lines[0]
    assert time.time() - started < 60
    result = run(["train", "experiment=no_such_preset"], cli_env(tmp_path, session_dirs))
    assert result.returncode == 2 and "no_such_preset" in result.stderr


def test_eval_with_a_named_data_config(trained_run):
    """`eval data=mnist` (the fix the missing-data message suggests) composes and runs."""
    tmp, env, _ = trained_run
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    out = tmp / "eval-mnist"
    args = ["eval", f"ckpt_path={ckpt}", "data=mnist", "trainer.limit_val_batches=1", f"hydra.run.dir={out}"]
    result = run(args, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["psnr_one_vs_multi"] > 80


def test_declared_trainer_keys_need_no_plus(compose_cfg):
    from lit_linearizer.cli import _normalise

    cfg = compose_cfg(["trainer.max_steps=10", "trainer.limit_train_batches=0.5", "trainer.val_check_interval=20",
                       "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.5"])  # fmt: skip
    assert (cfg.trainer.max_steps, cfg.trainer.limit_train_batches, cfg.trainer.val_check_interval) == (10, 0.5, 20)
    # Command lines written for the old config (a `+` on a key that is now declared) still work.
    assert _normalise(["+trainer.max_steps=3", "+trainer.foo=1", "+model.x=2"]) == [
        "++trainer.max_steps=3", "+trainer.foo=1", "+model.x=2"
    ]


def test_corrupt_checkpoint_is_one_line(tmp_path, session_dirs):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    result = run(["sample", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'out'}"], cli_env(tmp_path, session_dirs))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: checkpoint")
    assert "Traceback" not in result.stderr


def test_unknown_command(tmp_path, session_dirs):
    result = run(["trian"], cli_env(tmp_path, session_dirs))
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr


def test_fetch_weights_offline_fails_fast_in_one_line(no_network, capsys):
    from lit_linearizer.cli import main

    started = time.time()
    with pytest.raises(SystemExit) as info:
        main(["fetch-weights"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: download failed") and "internet" in err[0]
    assert time.time() - started < 10


def test_bad_value_caught_while_hydra_builds_objects_is_one_line(tmp_path, session_dirs):
    result = run(["train", "experiment=mnist_one_step", "data.source=kaggle", f"hydra.run.dir={tmp_path / 'x'}"],
                 cli_env(tmp_path, session_dirs))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data.source='kaggle' is not one of ('embedded', 'torchvision', 'auto')"
    )
