"""A folder of images and one question: the input of ``maugpt predict``."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import lightning as L
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from maugpt.data.encode import ChatEncoder, ImageTransform, collate_prompts
from maugpt.mauset.sources.common import images_in
from maugpt.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class _Prompts(Dataset):
    def __init__(self, images: list[Path], question: str, chat: ChatEncoder, transform: ImageTransform) -> None:
        self.images, self.question, self.chat, self.transform = images, question, chat, transform
        self.ids = chat.prompt(question)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        path = self.images[index]
        meta = {"image": str(path), "question": self.question}
        try:
            with Image.open(path) as image:
                pixels = self.transform(image)[None]
            return {"input_ids": self.ids, "pixel_values": pixels, "meta": meta, "valid": True}
        except (OSError, UnidentifiedImageError) as err:  # answered as invalid, never a crash
            log.warning("unreadable image %s: %s", path, err)
            size = self.transform.size
            return {"input_ids": self.ids, "pixel_values": torch.zeros(1, *size, 3, dtype=torch.uint8),
                    "meta": {**meta, "error": str(err)}, "valid": False, "skipped": 1}


class ImageFolderQuestions(L.LightningDataModule):
    """Every image of ``folder`` (sorted by name) with the same ``question``, as generation prompts.

    Args:
        folder: a folder of images (png, jpg, bmp, tif).
        question: the question asked about each image.
        tokenizer: linked from the model's LLM by the CLI.
        vision_encoder: linked from the model's encoder by the CLI.
        image_tokens: linked from the built encoder by the CLI.
        batch_size: prompts per batch.
        num_workers: data-loading workers.
    """

    def __init__(self, folder: str, question: str, tokenizer: str, vision_encoder: str, image_tokens: int = 576,
                 batch_size: int = 8, num_workers: int = 0) -> None:
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
        tokenizer = load_tokenizer(self.hparams.tokenizer)
        self.chat = ChatEncoder(tokenizer, self.hparams.image_tokens)
        self.transform = ImageTransform(self.hparams.vision_encoder)
        self.pad_token_id = tokenizer.pad_token_id

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Prompts(self.images, self.hparams.question, self.chat, self.transform),
                          batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
                          collate_fn=partial(collate_prompts, pad_token_id=self.pad_token_id))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        batch["pixel_values"] = self.transform.normalize(batch["pixel_values"])
        return batch
