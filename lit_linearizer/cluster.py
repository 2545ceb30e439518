"""SLURM plumbing: allocation checks, stop signals that only set a flag, and requeueing a job.

Signals. SLURM warns a job before it ends (``--signal=USR1@90``; submitit's sweeps use USR2) and
sends SIGTERM when it stops one. A handler here only *records* the signal: no I/O, no collective,
nothing that could block or deadlock. The training loop reads the record at a step boundary,
where every DDP rank takes part in the same collective to agree on stopping
(``callbacks.PreemptionCheckpoint``). `linearizer train` installs the handlers as soon as its
command is parsed, before the slow imports, and keeps them to the end of the process, so a
signal that arrives while it loads, or during the evaluation after fit, is recorded instead of
killing it. A training run inside a longer-lived process holds them only while it runs
(``hold_stop_handlers``/``release_stop_handlers``).

Requeueing. A run stopped by a requeue signal (USR1/USR2) leaves a resumable state and exits with
``REQUEUE_EXIT_CODE`` (75, ``EX_TEMPFAIL``: "try again"). Who puts the job back in the queue:
``scripts/slurm/train.sbatch`` sets ``LINEARIZER_REQUEUE=exit`` and requeues itself on that exit
status (it also handles signals that reach only its shell); anywhere else (a sweep launched by
submitit, your own batch script) rank zero calls ``scontrol requeue`` once the run has stopped.
SIGTERM stops the run with a resumable state too (exit 143) but never requeues: it is what
``scancel`` sends, and SLURM requeues preempted jobs itself when its preemption mode says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import Iterable, Mapping

from lit_linearizer.errors import ConfigError

__all__ = [
    "REQUEUE_EXIT_CODE",
    "REQUEUE_SIGNALS",
    "STOP_EXIT_CODE",
    "check_slurm_allocation",
    "hold_stop_handlers",
    "install_stop_handlers",
    "received_signals",
    "release_stop_handlers",
    "requeue_by_this_process",
    "requeue_slurm_job",
    "requeue_wanted",
    "slurm_job_id",
    "stop_handlers",
    "stop_requested",
]

REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")  # SLURM's usual --signal (USR1) and submitit's (USR2)
REQUEUE_EXIT_CODE = 75  # stopped on a requeue signal with a resumable state: run me again
STOP_EXIT_CODE = 143  # stopped on SIGTERM with a resumable state (128 + 15, what a shell reports)

_received: list[int] = []  # signal numbers in the order they arrived (appended by the handler only)
_requeue_signums: set[int] = set()
_previous: dict[int, object] = {}  # the handlers ours replaced, restored when the last holder releases them
_holders = 0
_permanent = False


def _record(signum, frame) -> None:
    _received.append(signum)


def _install(requeue_signals: Iterable[str]) -> None:
    signums = {getattr(signal, name) for name in requeue_signals}
    _requeue_signums.update(signums)
    for signum in sorted({*signums, signal.SIGTERM}):
        # Again each time, on purpose: a launcher (submitit) may have put its own handler in between.
        previous = signal.signal(signum, _record)
        if previous is not _record:
            _previous.setdefault(signum, previous)


def hold_stop_handlers(requeue_signals: Iterable[str] = REQUEUE_SIGNALS) -> None:
    """Record SIGTERM and ``requeue_signals`` instead of dying of them, until the matching ``release_stop_handlers``
    (calls nest; main thread only): a training inside a longer-lived process (a test session, a notebook) gives
    the process its handlers back when it ends."""
    global _holders
    if threading.current_thread() is not threading.main_thread():
        return
    _install(requeue_signals)
    _holders += 1


def install_stop_handlers(requeue_signals: Iterable[str] = REQUEUE_SIGNALS) -> None:
    """``hold_stop_handlers`` for the rest of the process (the `linearizer train` command). Idempotent."""
    global _permanent
    if not _permanent:
        hold_stop_handlers(requeue_signals)
        _permanent = threading.current_thread() is threading.main_thread()


def release_stop_handlers() -> None:
    """End one ``hold_stop_handlers``; the last one restores the previous handlers and forgets the signals."""
    global _holders
    if threading.current_thread() is not threading.main_thread() or _holders == 0:
        return
    _holders -= 1
    if _holders == 0 and _previous:
        for signum, handler in _previous.items():
            signal.signal(signum, handler)
        _previous.clear()
        _received.clear()


@contextlib.contextmanager
def stop_handlers(requeue_signals: Iterable[str] = REQUEUE_SIGNALS):
    """``hold_stop_handlers`` for the duration of a ``with`` block."""
    hold_stop_handlers(requeue_signals)
    try:
        yield
    finally:
        release_stop_handlers()


def received_signals() -> list[str]:
    """Names of the signals recorded so far, in order."""
    return [signal.Signals(s).name for s in _received]


def stop_requested() -> bool:
    """Did this process receive a stop or requeue signal?"""
    return bool(_received)


def requeue_wanted() -> bool:
    """Did this process receive a requeue signal (as opposed to SIGTERM only)?"""
    return any(s in _requeue_signums for s in _received)


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else the job id."""
    env = os.environ if environ is None else environ
    array_job = env.get("SLURM_ARRAY_JOB_ID")
    if array_job and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_by_this_process(environ: Mapping[str, str] | None = None) -> bool:
    """True under SLURM unless the batch script requeues on the exit status (``LINEARIZER_REQUEUE=exit``)."""
    env = os.environ if environ is None else environ
    return bool(slurm_job_id(env)) and env.get("LINEARIZER_REQUEUE", "self") != "exit"


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job; returns a one-line outcome for the log."""
    job = slurm_job_id()
    if not job:
        return "not running under SLURM: nothing to requeue"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scontrol requeue {job} failed: {error}"
    if result.returncode:
        return f"scontrol requeue {job} failed: {' '.join(result.stderr.split())}"
    return f"requeued SLURM job {job}"


def check_slurm_allocation(devices, num_nodes, environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError when running under ``srun`` with a mismatched trainer configuration.

    Lightning starts one process per SLURM task; if ``trainer.devices`` differs from
    ``--ntasks-per-node`` (or ``trainer.num_nodes`` from ``--nodes``) the job hangs at the first
    collective or silently uses part of the allocation. Fail at start-up instead, in one line.
    """
    env = os.environ if environ is None else environ
    if "SLURM_STEP_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return  # not inside srun (e.g. an interactive allocation): Lightning spawns its own processes
    tasks_per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    problems = []
    if tasks_per_node.isdigit() and isinstance(devices, int) and devices != int(tasks_per_node):
        problems.append(f"trainer.devices={devices} but --ntasks-per-node={tasks_per_node}")
    if nodes and nodes.isdigit() and int(num_nodes or 1) != int(nodes):
        problems.append(f"trainer.num_nodes={num_nodes} but --nodes={nodes}")
    if problems:
        raise ConfigError(
            f"the trainer does not match the SLURM allocation: {'; '.join(problems)}; "
            "they must be equal (scripts/slurm/train.sbatch passes them through)"
        )
