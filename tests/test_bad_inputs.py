"""Every bad input a user can type is one line on stderr, exit status 2, within 10 s, and writes nothing.

Each row runs the real `linearizer` command in a subprocess. The line must name the key or the file
(``expect``) and say what to do; the run directory must not exist afterwards: the error came before
Hydra made it, before any training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lit_linearizer.tasks.reporting import resolved_config
from tests.conftest import TINY_ONE_STEP, cli_env, compose_config

CLI = [sys.executable, "-m", "lit_linearizer"]
TINY = ["experiment=mnist_one_step", *TINY_ONE_STEP, "logger=csv"]
# A guard against hangs (a network wait, training started by mistake), not a speed claim: the measured times
# (0.3-8 s on a loaded 2-core machine, most about 1 s) are reported in issue 14's closing note; a loaded machine
# (CI beside other jobs) needs the margin.
LIMIT_S = 30.0


@pytest.fixture(scope="module")
def files(tmp_path_factory, session_dirs) -> dict[str, Path]:
    """A lit-linearizer checkpoint (no training needed: the files are what matters), broken variants of it,
    a file that is not weights, and a read-only directory."""
    base = tmp_path_factory.mktemp("bad-inputs")
    os.environ.setdefault("LINEARIZER_CACHE_DIR", str(session_dirs["cache"]))
    cfg = compose_config(base, TINY)
    torch.manual_seed(0)
    module = instantiate(cfg.model, _recursive_=False)
    checkpoint = {
        "global_step": 5,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "lit_linearizer": {"module_class": f"{type(module).__module__}.{type(module).__qualname__}",
                           "version": "0.1.0", "run_config": resolved_config(cfg), "wandb_run_id": None,
                           "noise_generator": None},  # fmt: skip
    }
    run = base / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(checkpoint, run / "last.ckpt")
    data = (run / "last.ckpt").read_bytes()
    (base / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    broken = {**checkpoint, "state_dict": {k: v.clone() for k, v in checkpoint["state_dict"].items()}}
    next(v for v in broken["state_dict"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(broken, base / "nan.ckpt")
    # Finite weights that generate NaN: a run that exploded without a NaN weight (the load-time check passes).
    exploded = {**checkpoint, "state_dict": {k: v * 1e10 if v.is_floating_point() and v.dim() > 1 else v
                                             for k, v in checkpoint["state_dict"].items()}}  # fmt: skip
    torch.save(exploded, base / "exploded.ckpt")
    (base / "notes.txt").write_text("these are not weights\n")
    readonly = base / "readonly"
    readonly.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], capture_output=True
    ).returncode == 0
    if not mounted:
        readonly.chmod(0o555)  # enough for a user who is not root
    yield {"ckpt": run / "last.ckpt", "run": base / "run", "truncated": base / "truncated.ckpt",
           "nan": base / "nan.ckpt", "exploded": base / "exploded.ckpt", "notes": base / "notes.txt",
           "readonly": readonly}  # fmt: skip
    if mounted:
        subprocess.run(["umount", "-l", str(readonly)], check=False)


# (id, command line with {placeholders}, extra environment, what the line must contain)
ROWS = [
    ("batch_size=abc", "train data.batch_size=abc", {}, ["data.batch_size='abc'", "positive integer"]),
    ("lr=fast", "train model.optimizer.lr=fast", {}, ["model.optimizer.lr='fast'", "e.g. model.optimizer.lr="]),
    ("batch_size=0", "train data.batch_size=0", {}, ["data.batch_size=0", "positive integer"]),
    ("negative lr", "train model.optimizer.lr=-1e-3", {}, ["model.optimizer.lr=-0.001", "positive number"]),
    ("max_steps=-5", "train trainer.max_steps=-5", {}, ["trainer.max_steps=-5", "-1 (no limit)"]),
    ("max_epochs=0", "train trainer.max_epochs=0", {}, ["trainer.max_epochs=0", "0 would train nothing"]),
    ("limit_train_batches=0", "train trainer.limit_train_batches=0", {}, ["trainer.limit_train_batches=0"]),
    ("sampler.steps=0", "train model.sampler.steps=0", {}, ["model.sampler.steps=0", "positive integer"]),
    ("ema_decay=1.5", "train model.ema_decay=1.5", {}, ["model.ema_decay=1.5", "[0, 1)"]),
    ("image_size=31", "train data.image_size=31", {}, ["data.image_size=31", "use e.g. data.image_size=32"]),
    ("celeba conditioner=conv", "train experiment=celeba_one_step model.network.conditioner=conv", {},
     ["model.network.conditioner_kwargs.levels", "~model.network.conditioner_kwargs.levels"]),
    ("unknown key", "train model.lerning_rate=1", {}, ["model.lerning_rate", "+model.lerning_rate=1"]),
    ("misspelt key", "train model.optimzer.lr=1", {}, ["did you mean model.optimizer.lr?"]),
    ("unknown preset", "train experiment=nope", {}, ["experiment=nope", "choose one of", "mnist_one_step"]),
    ("trainer=gpu without a GPU", "train trainer=gpu", {}, ["trainer=gpu", "use trainer=cpu"]),
    ("resume, changed model", "train {tiny} ckpt_path={ckpt} model.network.hidden_channels=16", {},
     ["{ckpt}", "model.network.hidden_channels is 8 there, 16 here", "without ckpt_path"]),
    ("resume, truncated ckpt", "train {tiny} ckpt_path={truncated}", {}, ["{truncated}", "unreadable"]),
    ("resume, missing ckpt", "train {tiny} ckpt_path={run}/nope.ckpt", {}, ["{run}/nope.ckpt", "does not exist"]),
    ("resume, a directory", "train {tiny} ckpt_path={run}", {}, ["{run} is a directory", "ckpt_path={ckpt}"]),
    ("sample without ckpt_path", "sample", {}, ["ckpt_path is required", "ckpt_path=<"]),
    ("style without input", "style ckpt_path={ckpt}", {}, ["input is required", "input=<photo"]),
    ("style, missing photo", "style ckpt_path={ckpt} input={run}/photo.jpg", {},
     ["input image {run}/photo.jpg does not exist", "input=<"]),
    ("sample n=0", "sample ckpt_path={ckpt} n=0", {}, ["n=0", "positive integer", "e.g. n=64"]),
    ("sample n=-1", "sample ckpt_path={ckpt} n=-1", {}, ["n=-1", "positive integer"]),
    ("sample n=abc", "sample ckpt_path={ckpt} n=abc", {}, ["n='abc'", "positive integer"]),
    ("sample steps=0", "sample ckpt_path={ckpt} steps=0", {}, ["steps=0", "e.g. steps=1"]),
    ("sample method=foo", "sample ckpt_path={ckpt} method=foo", {}, ["method='foo'", "euler, rk4"]),
    ("sample device=cuda", "sample ckpt_path={ckpt} device=cuda", {}, ["device=cuda", "device=cpu"]),
    ("sample a directory", "sample ckpt_path={run}", {}, ["{run} is a directory", "ckpt_path={ckpt}"]),
    ("sample a NaN checkpoint", "sample ckpt_path={nan}", {}, ["{nan}", "NaN/inf", "earlier checkpoint"]),
    ("eval a truncated ckpt", "eval ckpt_path={truncated}", {}, ["{truncated}", "unreadable"]),
    ("eval bad inception weights", "eval ckpt_path={ckpt} metrics.inception_weights={notes}", {},
     ["metrics.inception_weights={notes}", "not a PyTorch weights file"]),
    ("train bad inception weights", "train model.metrics.inception_weights={notes}", {},
     ["model.metrics.inception_weights={notes}", "not a PyTorch weights file"]),
    ("WANDB_MODE=online without a key", "train", {"WANDB_MODE": "online", "WANDB_API_KEY": None},
     ["WANDB_MODE=online", "wandb login"]),
    ("WANDB_MODE=online, no network", "train", {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40,
                                               "WANDB_BASE_URL": "http://127.0.0.1:9"}, ["unreachable", "logger=csv"]),
    ("read-only output dir", "train hydra.run.dir={readonly}/run", {}, ["{readonly}/run", "cannot be written"]),
]  # fmt: skip


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_exit_2_fast_and_writes_nothing(row, files, tmp_path, session_dirs):
    name, command, extra_env, expect = row
    if name == "trainer=gpu without a GPU" or name == "sample device=cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    values = {key: str(path) for key, path in files.items()} | {"tiny": " ".join(TINY)}
    args = command.format(**values).split()
    out = tmp_path / "out"
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={out}")
    env = cli_env(tmp_path, session_dirs) | {"OMP_NUM_THREADS": "1"}
    for key, value in extra_env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    started = time.monotonic()
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    line = _one_line_error(result)
    if os.environ.get("BAD_INPUTS_TABLE"):  # a file to collect the table the user sees (the closing note)
        with open(os.environ["BAD_INPUTS_TABLE"], "a") as table:
            table.write(f"| {name} | `linearizer {command}` | {result.returncode} | {elapsed:.1f} s | `{line}` |\n")
    for fragment in expect:
        assert fragment.format(**values) in line, line
    assert elapsed < LIMIT_S, f"{elapsed:.1f} s: {line}"
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert not (tmp_path / "outputs").exists()


def test_the_table_covers_every_command():
    assert {row[1].split()[0] for row in ROWS} == {"train", "sample", "eval", "style"}


def test_sample_of_a_model_that_generates_nan_writes_no_black_png(files, tmp_path, session_dirs):
    """Finite weights, NaN samples: an error naming the cause, exit 2, and no PNG (it used to be all black)."""
    out = tmp_path / "out"
    result = subprocess.run([*CLI, "sample", f"ckpt_path={files['exploded']}", "n=4", f"hydra.run.dir={out}"],
                            env=cli_env(tmp_path, session_dirs) | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    line = _one_line_error(result)
    assert "generated NaN/inf values" in line and "nothing was written" in line, line
    assert not list(tmp_path.rglob("*.png"))
