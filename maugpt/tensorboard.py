"""Finding the trainer's TensorBoard logger, for the callbacks and evaluations that write to it."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's first :class:`TensorBoardLogger`, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def tensorboard(trainer: L.Trainer):
    """The trainer's TensorBoard ``SummaryWriter``, or None."""
    logger = tensorboard_logger(trainer)
    return logger.experiment if logger is not None else None
