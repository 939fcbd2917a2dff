"""A folder of images and one question: the input of ``maugpt predict``."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset

from maugpt.data.formats import ChatFormat
from maugpt.data.prompts import PromptDataModule, exactly_once
from maugpt.mauset.sources.common import images_in

log = logging.getLogger(__name__)


class FolderPrompts(IterableDataset):
    """Each image once across ranks and workers, in equal counts per rank (see :mod:`maugpt.data.prompts`)."""

    def __init__(self, images: list[Path], question: str, format: ChatFormat, rank: int = 0,
                 world_size: int = 1) -> None:
        self.images, self.question, self.format = images, question, format
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        yield from exactly_once(self.images, self.rank, self.world_size, lambda paths: map(self.prompt, paths))

    def prompt(self, path: Path) -> dict:
        meta = {"image": str(path), "question": self.question}
        try:
            with Image.open(path) as image:
                pixels = self.format.images([image])
            return {**self.format.prompt(self.question, pixels), "meta": meta, "valid": True}
        except (OSError, UnidentifiedImageError) as err:  # answered as invalid, never a crash
            log.warning("unreadable image %s: %s", path, err)
            return {**self.format.prompt(self.question, self.format.blank(1)), "meta": {**meta, "error": str(err)},
                    "valid": False, "skipped": 1}


class ImageFolderQuestions(PromptDataModule):
    """Every image of ``folder`` (sorted by name) with the same ``question``, as generation prompts.

    Args:
        folder: a folder of images (png, jpg, bmp, tif).
        question: the question asked about each image.
        tokenizer: linked from the model's LLM by the CLI.
        vision_encoder: linked from the model's encoder by the CLI.
        image_tokens: linked from the built encoder by the CLI.
        batch_size: prompts per batch.
        num_workers: data-loading workers.
        processor: a pretrained VLM's processor (linked from ``PretrainedVLMModule``'s ``vlm``).
        processor_kwargs: the processor's settings (linked from ``PretrainedVLMModule``).
    """

    def __init__(self, folder: str, question: str, tokenizer: str | None = None, vision_encoder: str | None = None,
                 image_tokens: int | None = 576, batch_size: int = 8, num_workers: int = 0,
                 processor: str | None = None, processor_kwargs: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.images: list[Path] = []

    def setup(self, stage: str | None = None) -> None:
        folder = Path(self.hparams.folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"predict folder {folder} does not exist")
        self.images = images_in(folder)
        if not self.images:
            raise FileNotFoundError(f"predict folder {folder} holds no images (expected .png, .jpg, .bmp or .tif files)")
        h = self.hparams
        self.setup_prompts(h.tokenizer, h.vision_encoder, h.image_tokens, processor=h.processor,
                           processor_kwargs=h.processor_kwargs)

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.rank()
        dataset = FolderPrompts(self.images, self.hparams.question, self.format, rank, world)
        return self.prompt_loader(dataset, self.hparams.batch_size, self.hparams.num_workers)
