"""Preemption, requeue, resume and sweeps on a real SLURM (``make test-cluster``; root; ~27 min on 2 cores).

Every job is submitted as docs/cluster.md says, with the CPU-node options only, and signalled the ways a
cluster does: the time-limit signal (SLURM's own ``--signal``, brought forward by shortening the job's time
limit), ``scancel --signal=USR1`` (tasks only), ``scancel -b`` (batch shell only) and ``scancel --full``.
Each test prints its scenario table (``-rP`` shows it).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_linearizer.checkpoints import read_checkpoint
from tests.cluster.slurm import (
    REPO_ROOT,
    TINY,
    Segment,
    job_info,
    ranks_started,
    run,
    sbatch,
    segments,
    training_started,
    wait_until,
    wandb_run_ids,
)
from tests.test_resume import assert_same_training_state

pytestmark = pytest.mark.cluster

CPU_NODE = ["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=30"]  # docs/cluster.md
EPOCH_STEPS = 100
EPOCHS = 30  # 3000 steps: room for 20 preemptions when an idle machine trains 3x faster (run 2 ran out)
STEPS = EPOCH_STEPS * EPOCHS
RUN = [
    *TINY,
    "logger=wandb",
    f"trainer.max_epochs={EPOCHS}",
    f"+trainer.limit_train_batches={EPOCH_STEPS}",
    "+trainer.limit_val_batches=2",
    "trainer.check_val_every_n_epoch=1",
]
SIGNALS = {  # how a user (or SLURM) sends each form
    "time-limit": None,  # --signal=B:USR1@90 of the batch script, from SLURM itself
    "scancel": ["--signal=USR1"],
    "scancel -b": ["-b", "--signal=USR1"],
    "scancel --full": ["--full", "--signal=USR1"],
}


def submit(jobs, job_env, tmp_path, overrides, name) -> tuple[str, Path]:
    output = tmp_path / f"{name}-%j.out"
    job = sbatch([*CPU_NODE, f"--job-name={name}", f"--output={output}"], overrides, job_env, cwd=tmp_path)
    jobs.append(job)
    return job, tmp_path / f"{name}-{job}.out"


def run_dir(job_env, job) -> Path:
    return Path(job_env["LINEARIZER_LOG_DIR"]) / "slurm" / job


def signal_job(job: str, form: str) -> None:
    if form == "time-limit":  # the job's end moves to 2 min after its start: SLURM sends B:USR1 90 s before it
        run(["scontrol", "update", f"JobId={job}", "TimeLimit=2"])
    else:
        run(["scancel", *SIGNALS[form], job])


def wait_finished(output: Path, job: str, timeout: float) -> list[Segment]:
    def done():
        segs = segments(output)
        if segs and segs[-1].finished:
            return segs
        state = job_info(job).get("JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), f"job {job} {state}:\n{tail(output)}"
        return None

    return wait_until(done, timeout, f"end of job {job}", interval=2)


def tail(output: Path, n: int = 4000) -> str:
    text = output.read_text(errors="replace") if output.is_file() else ""
    return re.sub(r"[^\n]*it/s[^\n]*\n", "", text)[-n:]


def phase(segment: Segment) -> str:
    """Where a signal found a segment, from what it printed."""
    if segment.saved_step is not None:
        return f"training, saved step {segment.saved_step}"
    if "nothing new to save" in segment.text:
        return "after fit (evaluation)" if "`Trainer.fit` stopped" in segment.text else "before training"
    died = re.search(r"srun exited with status (\d+)", segment.text)
    if not ranks_started(segment):
        return f"startup, before Python's handler (srun status {died.group(1) if died else '?'})"
    return f"startup (srun status {died.group(1) if died else '?'})"


def clock(segment: Segment, pattern: str) -> str | None:
    match = re.search(r"\[(?:train\.sbatch |\d{4}-\d\d-\d\d )(\d\d:\d\d:\d\d)[^\]]*\][^\n]*" + pattern, segment.text)
    return match.group(1) if match else None


def seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    t = [sum(int(x) * f for x, f in zip(v.split(":"), (3600, 60, 1))) for v in (a, b)]
    return (t[1] - t[0]) % 86400


def test_twenty_preemptions_in_a_row_each_resume_and_the_run_equals_an_uninterrupted_one(
    slurm_cluster, job_env, jobs, tmp_path
):
    """A 2-rank CPU job preempted 20 times at random moments (five of each signal form) is requeued and resumed
    every time and ends with the weights, EMA, optimizer state and noise streams of an uninterrupted job,
    bit for bit, in one W&B run."""
    seed = int(os.environ.get("LINEARIZER_CLUSTER_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    reference, reference_out = submit(jobs, job_env, tmp_path, RUN, "reference")
    job, output = submit(jobs, job_env, tmp_path, RUN, "preempted")
    forms = [form for form in SIGNALS for _ in range(5)]
    rng.shuffle(forms)
    rows = []
    for i, form in enumerate(forms):
        seen = wait_until(lambda i=i: len(segments(output)) > i and time.monotonic(), 240, f"segment {i} of {job}")
        progress = max([s.saved_step or 0 for s in segments(output)] + [0])
        # Random moments: every other signal a few seconds into training (found by the progress bar), the others
        # over the segment's first 35 s, mostly in the startup (15-50 s here, by load). Near the end of the run only
        # the early ones, so that 20 preemptions fit in before it finishes.
        if i % 2 == 0 and progress < 0.4 * STEPS:
            seen = wait_until(lambda i=i: training_started(segments(output)[i]) and time.monotonic(), 240,
                              f"training in segment {i} of {job}")
            delay, anchor = rng.uniform(0.5, 10), "training began"
        else:
            anchor = "the segment began"
            delay = rng.uniform(1, 35) if progress < 0.4 * STEPS else rng.uniform(1, 8)
        time.sleep(max(0.0, seen + delay - time.monotonic()))
        assert not segments(output)[i].finished, f"the run finished after {i} preemptions (seed {seed})"
        signal_job(job, form)
        wait_until(lambda i=i: segments(output)[i].requeued, 150, f"requeue {i} of {job} ({form}):\n{tail(output)}")
        if form == "time-limit":
            run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"])
        wait_until(lambda i=i: len(segments(output)) > i + 1, 120, f"restart {i + 1} of {job}")
        segment, following = segments(output)[i: i + 2]
        signalled = clock(segment, r"received SIG") or clock(segment, r"stopping \(signals")
        requeued = clock(segment, "requeued job")
        rows.append((i + 1, form, f"{delay:.1f} s after {anchor}", phase(segment), seconds(signalled, requeued),
                     seconds(requeued, following.started)))

    final = wait_finished(output, job, 900)
    reference_segments = wait_finished(reference_out, reference, 900)
    table = ["| # | signal | sent | found the run | signal to requeue (s) "
             "| requeue to restart (s) | the restart resumed from |", "|---|---|---|---|---|---|---|"]
    resumed = [Path(s.resumed_from).name if s.resumed_from else "- (%s)" % (
        "died before Python's handler" if not ranks_started(s) else "nothing saved yet") for s in final[1:]]
    table += [f"| {' | '.join(str(c) for c in (*row, resumed[n]))} |" for n, row in enumerate(rows)]
    print(f"\njob {job} (seed {seed}), reference job {reference}; {len(final)} segments\n" + "\n".join(table))

    # The reference: one segment, both ranks, finished.
    assert len(reference_segments) == 1 and ranks_started(reference_segments[0]) == 2
    # The preempted job: a requeue after every signal, then one segment that finished.
    assert len(final) == len(forms) + 1 and all(s.requeued for s in final[:-1]) and final[-1].finished
    # Each segment resumed from the newest state its predecessors left: the interrupted state right after a save.
    for before, segment in zip(final, final[1:]):
        if not ranks_started(segment):  # the signal killed its tasks before Python's handler: it resumed nothing
            continue
        if before.saved_step is not None:
            assert (segment.resumed_from or "").endswith("interrupted.ckpt"), segment.text[-2000:]
        if any(s.saved_step is not None for s in final[: segment.restart]):
            assert segment.resumed_from, segment.text[-2000:]
    assert any(phase(s).startswith("training") for s in final) and any("before" in phase(s) for s in final)

    a_dir, b_dir = run_dir(job_env, reference), run_dir(job_env, job)
    a = read_checkpoint(a_dir / "checkpoints" / "last.ckpt")
    b = read_checkpoint(b_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == STEPS
    assert_same_training_state(a, b)
    metrics = json.loads((b_dir / "metrics.json").read_text())
    assert metrics["global_step"] == STEPS and not (b_dir / "checkpoints" / "interrupted.ckpt").exists()
    # wall_time_s counts the earlier segments too: more than the last segment's own wall time.
    last_segment = seconds(final[-1].started, clock(final[-1], "srun exited"))
    assert metrics["wall_time_s"] > last_segment + 5, (metrics["wall_time_s"], last_segment)
    # One W&B run over every segment that got as far as starting W&B.
    ids = wandb_run_ids(b_dir)
    assert len(ids) >= sum(s.saved_step is not None for s in final) + 1 and len(set(ids)) == 1, ids
    assert ids[0] == (b_dir / "wandb_run_id").read_text().strip()


def test_signal_before_fit_and_in_the_evaluation_after_fit(slurm_cluster, job_env, jobs, tmp_path):
    """Stopped mid-training (scancel -b), then before fit (scancel, tasks only), then in the evaluation after fit
    (scancel --full): each time requeued; the before-fit stop keeps the interrupted state, the stop after fit
    resumes from last.ckpt and only evaluates."""
    overrides = [*TINY, "logger=wandb", "trainer.max_epochs=3", "+trainer.limit_train_batches=60",
                 "+trainer.limit_val_batches=25", "trainer.check_val_every_n_epoch=100"]
    job, output = submit(jobs, job_env, tmp_path, overrides, "phases")
    directory = run_dir(job_env, job)

    def segment(k):
        segs = segments(output)
        return segs[k] if len(segs) > k else None

    wait_until(lambda: segment(0) and "Epoch 1:" in segment(0).text, 300, "epoch 1")
    signal_job(job, "scancel -b")
    wait_until(lambda: segment(1), 180, f"restart 1:\n{tail(output)}")
    step = segment(0).saved_step
    assert step and step > 60

    wait_until(lambda: ranks_started(segment(1)) == 2, 180, "Python up in segment 1")  # its handler installed
    signal_job(job, "scancel")
    wait_until(lambda: segment(2), 180, f"restart 2:\n{tail(output)}")
    assert phase(segment(1)) == "before training", segment(1).text[-3000:]
    assert read_checkpoint(directory / "checkpoints" / "interrupted.ckpt")["global_step"] == step  # kept

    wait_until(lambda: "`Trainer.fit` stopped" in segment(2).text, 600, f"end of fit:\n{tail(output)}")
    signal_job(job, "scancel --full")
    wait_until(lambda: segment(3), 180, f"restart 3:\n{tail(output)}")
    assert phase(segment(2)) == "after fit (evaluation)", segment(2).text[-3000:]
    assert not (directory / "metrics.json").exists()

    final = wait_finished(output, job, 600)
    assert final[1].resumed_from.endswith("interrupted.ckpt") and final[2].resumed_from.endswith("interrupted.ckpt")
    assert final[3].resumed_from.endswith("last.ckpt") and final[3].finished
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["global_step"] == 3 * 60 and metrics["metrics"]["psnr_one_vs_multi"] > 80
    assert len(set(wandb_run_ids(directory))) == 1
    print(f"\njob {job}: " + "; ".join(f"segment {s.restart}: {phase(s)}" for s in final[:-1]))


def test_two_point_sweep_with_the_slurm_launcher_requeues_each_point(slurm_cluster, job_env, tmp_path):
    """The documented sweep command: one array task per point, in its own run dir; each task is preempted once
    with submitit's signal (USR2), requeues itself alone and resumes."""
    overrides = ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=30",
                 *TINY, "logger=csv", "trainer.max_epochs=3", "+trainer.limit_train_batches=150",
                 "+trainer.limit_val_batches=2", "model.optimizer.lr=1e-3,3e-3"]
    command = [str(REPO_ROOT / ".venv" / "bin" / "linearizer"), "train", *overrides]
    if not Path(command[0]).exists():
        command[0:1] = [sys.executable, "-m", "lit_linearizer"]
    launcher = subprocess.Popen(command, env=job_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    tasks: list[str] = []
    try:
        sweeps = Path(job_env["LINEARIZER_LOG_DIR"]) / "mnist_one_step" / "multiruns"
        def array_tasks():  # submitit's folder per array task: <sweep dir>/.submitit/<array job>_<task>/
            return sorted(p.name for p in sweeps.glob("*/.submitit/*") if re.fullmatch(r"\d+_\d+", p.name))

        tasks[:] = wait_until(lambda: len(array_tasks()) == 2 and array_tasks(), 240, "the array's two tasks")
        sweep_dir = next(sweeps.glob(f"*/.submitit/{tasks[0]}")).parents[1]
        for task in tasks:  # preempt each task once it trains
            err = sweep_dir / ".submitit" / task / f"{task}_0_log.err"
            # Lightning's model summary comes right before the first step (no progress bar without a terminal).
            wait_until(lambda err=err: err.is_file() and "Total params" in err.read_text(errors="replace"), 300,
                       f"training in {task}")
            time.sleep(3)
            run(["scancel", "--signal=USR2", task])
        assert launcher.wait(timeout=900) == 0, launcher.stdout.read()[-4000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGTERM)
        for task in tasks:
            subprocess.run(["scancel", task], capture_output=True, timeout=60)
    rows = []
    for n, lr in (("0", 0.001), ("1", 0.003)):
        run_path = sweep_dir / n
        payload = json.loads((run_path / "metrics.json").read_text())
        config = (run_path / "config.yaml").read_text()
        assert f"lr: {lr}" in config and payload["global_step"] == 450
        assert not (run_path / "checkpoints" / "interrupted.ckpt").exists()
    for task in tasks:
        text = "".join(p.read_text(errors="replace") for p in (sweep_dir / ".submitit" / task).glob("*_log.*"))
        assert "interrupted at step" in text and "requeued SLURM job " + task in text and "resuming from" in text
        restarts = job_info(task).get("Restarts")
        rows.append((task, re.search(r"interrupted at step (\d+)", text).group(1), restarts))
        assert restarts == "1", f"{task} restarted {restarts} times"
    print(f"\nsweep {sweep_dir}: " + "; ".join(f"task {t} stopped at step {s}, restarts {r}" for t, s, r in rows))
