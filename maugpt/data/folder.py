"""A folder of images and one question: the input of ``maugpt predict``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader, IterableDataset

from maugpt.data.formats import ChatFormat
from maugpt.data.prompts import PromptDataModule
from maugpt.data.sharding import exactly_once
from maugpt.images import DEFAULT_MAX_PIXELS, ImageRejected, open_rgb
from maugpt.mauset.sources.common import images_in

log = logging.getLogger(__name__)


class FolderPrompts(IterableDataset):
    """Each image once across ranks and workers, in equal counts per rank (see :mod:`maugpt.data.prompts`).

    An image that cannot be used (:class:`~maugpt.images.ImageRejected`) stays as a prompt flagged
    ``valid=False`` and counted in ``skipped``, its message in ``meta["error"]`` and its reason in
    ``meta["skip_reason"]``: its row is written unanswered, never dropped.
    """

    def __init__(
        self,
        images: list[Path],
        question: str,
        format: ChatFormat,
        rank: int = 0,
        world_size: int = 1,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.images, self.question, self.format = images, question, format
        self.rank, self.world_size, self.max_pixels = rank, world_size, max_pixels

    def __iter__(self) -> Iterator[dict]:
        yield from exactly_once(self.images, self.rank, self.world_size, lambda paths: map(self.prompt, paths))

    def prompt(self, path: Path) -> dict:
        meta = {"image": str(path), "question": self.question}
        try:
            # A phone's huge JPEG is decoded at a reduced DCT scale: the model sees it resized anyway.
            pixels = self.format.images([open_rgb(path, max_pixels=self.max_pixels, reduce_jpeg=True)])
            return {**self.format.prompt(self.question, pixels), "meta": meta, "valid": True}
        except OSError as err:  # ImageRejected, or the format's own failure to read: never a crash
            log.warning("skipping image %s", err if isinstance(err, ImageRejected) else f"{path}: {err}")
            reason = err.reason if isinstance(err, ImageRejected) else "unreadable"
            return {
                **self.format.prompt(self.question, self.format.blank(1)),
                "meta": {**meta, "error": str(err), "skip_reason": reason},
                "valid": False,
                "skipped": 1,
            }


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
        max_pixels: the largest image read, in pixels (width x height, from the file's header,
            before decoding): 50 M by default (7071 x 7071; 150 MB decoded as RGB, about 0.4 GB at
            the peak of reading a 49 M-pixel PNG). A larger JPEG is decoded at 1/2, 1/4 or 1/8 scale
            when that fits (libjpeg's DCT scaling), so a 108-MP phone photo is answered; any other
            larger image is skipped as ``too large``, its row written with the reason. Pillow's own
            decompression-bomb limit does not apply: this one does (see :mod:`maugpt.images`). Not
            the processor's ``max_pixels`` (``processor_kwargs``), which sets its resizing.
    """

    def __init__(
        self,
        folder: str,
        question: str,
        tokenizer: str | None = None,
        vision_encoder: str | None = None,
        image_tokens: int | None = 576,
        batch_size: int = 8,
        num_workers: int = 0,
        processor: str | None = None,
        processor_kwargs: dict | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be 1 or more, got {max_pixels}")
        self.save_hyperparameters()
        self.images: list[Path] = []

    def setup(self, stage: str | None = None) -> None:
        folder = Path(self.hparams.folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"predict folder {folder} does not exist")
        self.images = images_in(folder)
        if not self.images:
            raise FileNotFoundError(
                f"predict folder {folder} holds no images (expected .png, .jpg, .bmp or .tif files)"
            )
        h = self.hparams
        self.setup_prompts(
            h.tokenizer, h.vision_encoder, h.image_tokens, processor=h.processor, processor_kwargs=h.processor_kwargs
        )

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.rank()
        dataset = FolderPrompts(
            self.images, self.hparams.question, self.format, rank, world, max_pixels=self.hparams.max_pixels
        )
        return self.prompt_loader(dataset, self.hparams.batch_size, self.hparams.num_workers)
