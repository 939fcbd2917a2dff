"""Running a sweep cell's commands: one runner per cell, and signals passed on to the commands.

A cell is held by one runner at a time through an OS file lock, which the kernel releases when
its holders have exited, however they ended (``kill -9`` too), so a dead runner never blocks.
The lock is an ``flock``: across nodes it needs a shared file system that supports it (NFS with
its lock service, Lustre mounted with ``-o flock``; on Lustre's ``localflock`` two nodes would
both get it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from maugpt.slurm import RUNNER_REQUEUES

# The signals that make a fit save and stop (maugpt.training.preemption, which loads Lightning,
# takes them from here), and the hang-up of a closed terminal, which the runner passes on as
# SIGTERM: its commands run in their own sessions and would not get it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PASSED_ON = {signal.SIGHUP: signal.SIGTERM}


class CellBusy(RuntimeError):
    """Another runner holds the cell (its host and PID are in the message)."""


@contextlib.contextmanager
def hold_cell(
    cell_dir: Path, *, wait: bool = False, stopped: Callable[[], bool] = lambda: False
) -> Iterator[int | None]:
    """Hold the cell for this runner: an exclusive ``flock`` on ``<cell>/runner.lock``, which
    records the holder's host and PID. A held cell raises :class:`CellBusy` naming its holder,
    or with ``wait`` is waited for until it is free or ``stopped()`` (then None is yielded).
    Yields the lock's file descriptor, which the cell's commands inherit: a fit orphaned by a
    killed runner still holds the cell.
    """
    path = cell_dir / "runner.lock"
    cell_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a runner that is starting"
                message = f"cell {cell_dir.name} is being run by {holder} (lock: {path})"
                if not wait:
                    raise CellBusy(message) from None
                if stopped():
                    yield None
                    return
                if not told:
                    print(f"{message}; waiting for it to finish", file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
        yield fd
    finally:
        os.close(fd)  # releases the lock unless a command still holds it


class Runner:
    """Runs a sweep's commands as child processes, each in its own session, so that a signal to
    the runner (SLURM's SIGTERM or SIGUSR1, a Ctrl+C, a closed terminal's SIGHUP) reaches each
    command exactly once: the runner passes it on, the fit saves at its next step boundary and
    ends (see ``maugpt.training.preemption``), and the runner starts no further command. (SLURM
    itself signals every process of a job; a fit takes a repeated SIGTERM as one.) A runner that
    ``requeues`` (a SLURM array task's) tells its fits so, and they leave the requeue to it."""

    def __init__(self, *, requeues: bool = False) -> None:
        self.stopped: int | None = None
        self.children: set[subprocess.Popen] = set()
        self.env = {**os.environ, RUNNER_REQUEUES: "1"} if requeues else None

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[Runner]:
        """Pass the stop signals on to the running commands (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self.on_signal) for signum in (*STOP_SIGNALS, *PASSED_ON)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_signal(self, signum: int, frame) -> None:
        signum = PASSED_ON.get(signum, signum)
        self.stopped = self.stopped or signum
        for child in list(self.children):
            child.send_signal(signum)

    def run(self, command: list[str], log, lock: int) -> int | None:
        """The command's exit status, or None when a signal came before it could start."""
        if self.stopped:
            return None
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock,), env=self.env
        )
        self.children.add(child)
        if self.stopped:  # a signal between the check above and this child's registration
            child.send_signal(self.stopped)
        try:
            return child.wait()
        finally:
            self.children.discard(child)
