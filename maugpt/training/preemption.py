"""Stopping a fit when asked to, without losing it: a preempted run saves and resumes exactly.

SLURM sends SIGTERM on preemption and at the time limit (and, with ``#SBATCH --signal``, SIGUSR1
a while before the limit); a user presses Ctrl+C (SIGINT). Lightning alone ends a fit on SIGTERM
with exit status 0 and no checkpoint (a caller cannot tell it from a finished fit), and on SIGINT
with status 1 and no checkpoint either. :class:`Preemption`, which ``maugpt fit`` adds to every
run, instead lets the running step finish, saves ``last.ckpt`` (through the trainer, so with the
run's atomic checkpoint IO), prints which checkpoint holds the run and the command that resumes
it, and exits with status 128 + the signal's number, as a shell reports a process the signal
ended. When Lightning runs the fit as a SLURM job (``SLURM_NTASKS`` set, e.g. under ``srun``)
with its ``auto_requeue`` (the default there), the environment's requeue signal (SIGUSR1) also
requeues the job, as Lightning's own handler does, but only after the step-boundary save:
Lightning's handler saves from inside the signal handler, in the middle of whatever the step was
doing. (A sweep's array task is requeued by its runner instead, see :mod:`maugpt.runner`.)

The checkpoints (every save, not only this one) also carry the random number generators' states,
restored just before the first resumed step, so that dropout draws what an uninterrupted run
would have drawn: with the data stream's exact replay (``maugpt.data.streams.EpochLoader``) a
resumed fit ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

from maugpt.compat import cluster_environment, forget_received_sigterm, steps_optimizer
from maugpt.runner import STOP_SIGNALS  # the signals that stop a fit at the next step boundary
from maugpt.slurm import RUNNER_REQUEUES, job_id, requeue


class Preempted(SystemExit):
    """The fit stopped on a signal after saving; the exit status is 128 + the signal's number."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint


def rng_states() -> dict:
    """The states of torch's (CPU and every CUDA device), numpy's and Python's global generators,
    as tensors and plain containers (loadable with ``weights_only=True``)."""
    numpy_state = np.random.get_state(legacy=False)
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "pos": int(numpy_state["state"]["pos"]),
            },
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state(
        {
            **numpy_state,
            "state": {"key": numpy_state["state"]["key"].numpy().astype(np.uint32), "pos": numpy_state["state"]["pos"]},
        }
    )
    if "cuda" in states and torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):  # fewer devices now: theirs
            torch.cuda.set_rng_state(state, device)


def requeue_job_id(trainer: L.Trainer, signum: int = signal.SIGUSR1) -> str | None:
    """The SLURM job to requeue after ``signum``: a SLURM job with Lightning's ``auto_requeue`` on
    and ``signum`` its requeue signal, unless a sweep runner started this fit and requeues the job
    itself (see :mod:`maugpt.slurm`)."""
    environment = cluster_environment(trainer)  # what Lightning's own handler reads
    if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue) or os.environ.get(RUNNER_REQUEUES):
        return None
    return job_id() if signum == environment.requeue_signal else None


def resume_command(checkpoint: Path, argv: list[str] | None = None) -> str:
    """``maugpt fit …`` as this process was started, resuming from ``checkpoint``."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = args[args.index("fit") :] if "fit" in args else ["fit", *args]
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        kept.append(arg)
    return shlex.join(["maugpt", *kept, "--ckpt_path", str(checkpoint)])


class Preemption(L.Callback):
    """Saves ``last.ckpt`` at the next step boundary after SIGTERM, SIGINT or SIGUSR1 and ends the
    process with status 128 + the signal (see the module docstring). A second Ctrl+C stops at once.

    A step boundary is the end of an optimizer step, never inside a gradient-accumulation window,
    whose gradients a checkpoint does not hold. A signal during a validation is acted on after it:
    a fit saved in the middle of a validation (Lightning 2.6) did not resume correctly when tried
    (the resumed fit ended at once, its remaining epochs untrained), so keep validations shorter
    than the cluster's warning (``--signal``) or grace period. The checkpoint goes where the run's
    ``ModelCheckpoint`` writes ``last.ckpt`` (its ``dirpath``), else to
    ``<default_root_dir>/checkpoints/last.ckpt``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._pending_rng: dict | None = None
        self._trainer: L.Trainer | None = None

    # -- signals ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed here, after Lightning installed its own handlers (just before training starts),
        # so these replace them for the training loop; Lightning restores the originals at teardown.
        # A SIGTERM its handler caught meanwhile becomes ours, and its flag is cleared: with several
        # ranks Lightning would otherwise end the fit at the next step with status 0, unsaved.
        self._trainer, self.received = trainer, signal.SIGTERM if trainer.received_sigterm else None
        forget_received_sigterm(trainer)
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # a second Ctrl+C: the user will not wait for the step
        if self.received is not None:
            return
        self.received = signum
        # os.write, not print: a handler that interrupts a write to stderr must not write through
        # the same buffered stream (Python raises "reentrant call" there).
        os.write(
            2,
            f"maugpt fit: received {signal.Signals(signum).name}: saving last.ckpt after this step "
            "(Ctrl+C again stops at once)\n".encode(),
        )
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if signum != signal.SIGINT and hasattr(launcher, "kill"):
            # The ranks this process started stop at the same step. Not SIGINT: a terminal's Ctrl+C
            # reaches them already, and a second one would stop them at once.
            launcher.kill(signum)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum, handler in self._previous.items():
            if threading.current_thread() is threading.main_thread():
                signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    # -- the step boundary --------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if steps_optimizer(trainer):
            self.stop_if_asked(trainer)

    def stop_if_asked(self, trainer: L.Trainer) -> None:
        """Save and raise :class:`Preempted` when a rank received a stop signal."""
        # Every rank must stop at the same step (a checkpoint of a sharded model is written by all).
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        signum = self.received or signal.SIGTERM  # the signal reached another rank only
        path = last_checkpoint_path(trainer)
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            # Recorded in the checkpoint, so that the resumed run's ModelCheckpoint overwrites this
            # last.ckpt instead of writing a last-v1.ckpt beside a file it does not know.
            trainer.checkpoint_callback.last_model_path = str(path)
        trainer.save_checkpoint(path)
        planned = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            print(
                f"maugpt fit: stopped by {name} after step {trainer.global_step} of {planned}; saved {path}\n"
                f"resume with: {resume_command(path)}",
                file=sys.stderr,
                flush=True,
            )
            if (job := requeue_job_id(trainer, signum)) is not None:
                requeue(job, "maugpt fit")
        raise Preempted(signum, path)

    # -- generator states in every checkpoint --------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending_rng = state_dict.get("rng")


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's ``last.ckpt`` goes: beside its ModelCheckpoint's files, else the root's checkpoints/."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
