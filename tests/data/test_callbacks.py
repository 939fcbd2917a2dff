"""The skipped-sample count reaches the logger at the end of each epoch."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from maugpt.data.callbacks import SkippedSamplesLogger


class Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.logged = []

    def training_step(self, batch, batch_idx):
        return (self.weight - batch["x"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def log(self, name, value, *args, **kwargs):
        self.logged.append((name, value))
        super().log(name, value, *args, **kwargs)


def test_counts_are_summed_per_epoch_and_reset(tmp_path, caplog):
    batches = [{"x": torch.ones(2), "skipped": s} for s in (0, 2, 1)]
    loader = DataLoader(batches, batch_size=None)
    probe = Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SkippedSamplesLogger()],
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, loader, DataLoader(batches[:2], batch_size=None))
    assert [v for n, v in probe.logged if n == "data/skipped_train"] == [3.0, 3.0]
    assert [v for n, v in probe.logged if n == "data/skipped_val"] == [2.0, 2.0]
    assert "3 undecodable train sample(s) were skipped this epoch" in caplog.text
