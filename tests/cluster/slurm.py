"""Driving a real SLURM from tests: submit, watch a job's segments in its output file, signal it, read results.

Everything goes through the ordinary commands (sbatch, scontrol, scancel) as a cluster user would type
them. A job's output file (``--open-mode=append``) holds every segment of a requeued job; the lines that
``scripts/slurm/train.sbatch`` and `linearizer train` print there tell what happened in each.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import TINY_ONE_STEP

REPO_ROOT = Path(__file__).resolve().parents[2]
SBATCH_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"
TOOLS = Path(os.environ.get("LINEARIZER_SLURM_TOOLS", REPO_ROOT.parent / "shared" / "tools" / "slurm"))

# A tiny one-step model: seconds per epoch on 2 CPU ranks.
TINY = [
    "experiment=mnist_one_step",
    "data.batch_size=16",
    *TINY_ONE_STEP,
    "model.ema_decay=0.99",
    "trainer.deterministic=true",
]


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def job_info(job: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (empty once SLURM has forgotten the job)."""
    result = run(["scontrol", "show", "job", "-o", job], check=False)
    if result.returncode:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"no {what} within {timeout:.0f} s")


def sbatch(args: list[str], overrides: list[str], env: dict[str, str], cwd: Path, script: Path = SBATCH_SCRIPT) -> str:
    result = run(["sbatch", "--parsable", *args, str(script), *overrides], env=env, cwd=cwd)
    return result.stdout.strip().split(";")[0]


_SEGMENT = re.compile(r"^\[train\.sbatch (\d\d:\d\d:\d\d)\] job (\S+) \(restart (\d+)\)", re.M)


@dataclass
class Segment:
    """One run of a job between requeues, as its output file tells it."""

    restart: int
    text: str
    started: str
    events: list[str] = field(default_factory=list)

    @property
    def requeued(self) -> bool:
        return "] requeued job " in self.text

    @property
    def finished(self) -> bool:
        return "srun exited with status 0" in self.text

    @property
    def saved_step(self) -> int | None:
        match = re.search(r"interrupted at step (\d+) \([^)]*\); saved ", self.text)
        return int(match.group(1)) if match else None

    @property
    def resumed_from(self) -> str | None:
        match = re.search(r"resuming from (\S+) ", self.text)
        return match.group(1) if match else None


def segments(output: Path) -> list[Segment]:
    text = output.read_text(errors="replace") if output.is_file() else ""
    starts = list(_SEGMENT.finditer(text))
    return [
        Segment(int(m.group(3)), text[m.start(): starts[i + 1].start() if i + 1 < len(starts) else len(text)],
                m.group(1))
        for i, m in enumerate(starts)
    ]


def ranks_started(segment: Segment) -> int:
    """How many ranks of a segment have started `linearizer train` (Lightning prints the seed on each)."""
    return len(set(re.findall(r"\[rank: (\d+)\] Seed set to", segment.text)))


def training_started(segment: Segment) -> bool:
    return "Epoch " in segment.text


def wandb_run_ids(run_dir: Path) -> list[str]:
    """The run id in every W&B offline run of a run dir, read back from its transaction log (``run-<id>.wandb``)
    with W&B's own record definitions: the log is LevelDB's format (32 KiB blocks, 7-byte chunk headers) after
    a 7-byte ``:W&B`` header, each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    ids = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
        pos, block, chunks, pending = 7, 32768, [], b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # block trailer
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
            chunk, pos = data[pos + 7: pos + 7 + length], pos + 7 + length
            if kind == 0:
                break
            if kind in (1, 2):  # FULL, FIRST
                pending = b""
            pending += chunk
            if kind in (1, 4):  # FULL, LAST
                chunks.append(pending)
        records = [wandb_internal_pb2.Record.FromString(c) for c in chunks]
        runs = [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"]
        assert len(runs) == 1, f"{path}: {len(runs)} run records"
        ids.append(runs[0])
    return ids
