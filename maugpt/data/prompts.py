"""What the data modules that ask questions share (MAU-Set's evaluation splits, MMAD, a folder of
images): :class:`PromptDataModule`, the :class:`~maugpt.data.formats.ChatFormat` of prompt
batches (MAU-GPT's, or a pretrained VLM's processor), their left-padded loader and the last step
of their images on the device. Each evaluates exactly once across ranks (:mod:`maugpt.data.sharding`).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from maugpt.data.formats import ChatFormat, chat_format


class PromptDataModule(L.LightningDataModule):
    """A data module whose batches include generation prompts.

    Subclasses call :meth:`setup_prompts` in ``setup`` (or set ``format`` themselves) and batch
    their prompt datasets with :meth:`prompt_loader`.
    """

    format: ChatFormat

    def setup_prompts(
        self,
        tokenizer: str | None,
        vision_encoder: str | None,
        image_tokens: int | None,
        resize: str = "torch",
        processor: str | None = None,
        processor_kwargs: dict | None = None,
    ):
        """Load the model's format (see :func:`~maugpt.data.formats.chat_format`); returns its tokenizer."""
        self.format = chat_format(
            tokenizer, vision_encoder, image_tokens, processor, resize=resize, processor_kwargs=processor_kwargs
        )
        return self.format.tokenizer

    def rank(self) -> tuple[int, int]:
        """``(global rank, world size)`` of the attached trainer (``(0, 1)`` without one)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def prompt_loader(self, dataset, batch_size: int, num_workers: int, collate: Callable | None = None) -> DataLoader:
        """Left-padded prompt batches (the format's ``collate_prompts`` unless ``collate``)."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate or self.format.collate_prompts,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Finish the images on the device they were moved to (MAU-GPT's: normalise the ``uint8`` ones)."""
        return self.format.normalize(batch) if isinstance(batch, dict) else batch
