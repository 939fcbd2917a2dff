"""A callback for the preemption tests: the fit process signals itself at a chosen step."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    """Sends ``signal`` (a name such as ``SIGTERM``) to this process once, when a training batch
    starts at global step ``step``."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step, self.signal, self.sent = step, signal, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))
