"""SLURM from inside a job: which job this is, and asking SLURM to requeue it (no Lightning import).

A job that will run out of time asks to be requeued once it has saved: ``scontrol requeue`` puts
it back in the queue (it must be requeueable: ``#SBATCH --requeue``), and the new run resumes
from the saved checkpoint. This is the command Lightning's own SLURM handler runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: Set by ``maugpt sweep-cell`` for its commands: the runner requeues the array task itself, so
#: the fit it runs must not ask a second time.
RUNNER_REQUEUES = "MAUGPT_RUNNER_REQUEUES"


def job_id() -> str | None:
    """This SLURM job (``<array job>_<task>`` for an array task), or None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job: str, who: str) -> bool:
    """``scontrol requeue JOB`` with a deadline; says on stderr what happened (``who`` speaks)."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        ok, why = done.returncode == 0, done.stderr.strip() or f"exit status {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as err:
        ok, why = False, str(err)
    print(
        f"{who}: SLURM job {job} "
        + ("requeued: it resumes from last.ckpt when it starts again" if ok else f"could not be requeued ({why})"),
        file=sys.stderr,
        flush=True,
    )
    return ok
