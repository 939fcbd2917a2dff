"""Lightning callbacks about the data stream."""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


class SkippedSamplesLogger(L.Callback):
    """Logs, at the end of each epoch, how many samples were skipped as undecodable.

    The loaders count skipped samples in each batch's ``skipped`` entry; this sums them per
    stage, summed over ranks, logs ``data/skipped_<stage>`` and warns when it is not zero.
    """

    def __init__(self) -> None:
        self.counts = {"train": 0, "val": 0, "test": 0}

    def _add(self, stage: str, batch) -> None:
        if isinstance(batch, dict):
            self.counts[stage] += int(batch.get("skipped", 0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._add("train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add("val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add("test", batch)

    def _report(self, trainer, pl_module, stage: str) -> None:
        count = torch.tensor(float(self.counts[stage]), device=pl_module.device)
        total = int(trainer.strategy.reduce(count, reduce_op="sum").item())
        pl_module.log(f"data/skipped_{stage}", float(total), rank_zero_only=True)
        if total and trainer.is_global_zero:
            log.warning("%d undecodable %s sample(s) were skipped this epoch", total, stage)
        self.counts[stage] = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test")
