"""What the data modules that ask questions share: MAU-Set's evaluation splits, MMAD and a folder
of images.

* Exactly once (:func:`exactly_once`): a plan of ``n`` items is cut into one contiguous range per
  (rank, DataLoader worker) (:func:`share`), and the shorter ranges are padded with copies flagged
  ``valid=False`` and ``meta["padding"]`` (:func:`padded`), so that every rank runs the same number
  of batches (ranks that generate in lockstep under FSDP stop together) and no item is answered twice.
* :class:`PromptDataModule`: the :class:`~maugpt.data.formats.ChatFormat` of prompt batches
  (MAU-GPT's, or a pretrained VLM's processor), their left-padded loader and the last step of
  their images on the device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import lightning as L
import torch
from torch.utils.data import DataLoader, get_worker_info

from maugpt.data.formats import ChatFormat, chat_format

T = TypeVar("T")


def worker_slot() -> tuple[int, int]:
    """``(worker id, workers)`` of the DataLoader worker running this code (``(0, 1)`` in the main process)."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def evaluation_slot(n: int, slot: int, slots: int) -> tuple[int, int, int]:
    """Of ``n`` evaluation examples cut into ``slots`` contiguous ranges (one per rank and worker):
    ``start`` and ``stop`` of range ``slot``, and how many examples every slot yields, padding included."""
    return slot * n // slots, (slot + 1) * n // slots, math.ceil(n / slots) if n else 0


def share(n: int, rank: int, world_size: int) -> tuple[int, int, int]:
    """:func:`evaluation_slot` of this (rank, worker): ``(start, stop, target)`` in a plan of ``n``."""
    worker, workers = worker_slot()
    return evaluation_slot(n, rank * workers + worker, world_size * workers)


def padding(example: dict, skipped: int = 0) -> dict:
    """A copy of ``example`` that only fills a slot: never scored, answered or written."""
    return {**example, "valid": False, "skipped": skipped, "meta": {**example["meta"], "padding": True}}


def exactly_once(
    plan: Sequence[T],
    rank: int,
    world_size: int,
    read: Callable[[Sequence[T]], Iterable[dict]],
    skipped: Callable[[], int] = lambda: 0,
) -> Iterator[dict]:
    """The examples of this (rank, worker)'s share of ``plan``, made by ``read(items)`` as they are
    consumed, then padding up to the count every slot yields; an empty share yields padding copies
    of the plan's first example (that item is counted and answered by its own slot)."""
    start, stop, target = share(len(plan), rank, world_size)
    if start == stop:
        examples = (padding(example) for example in itertools.islice(read(plan[:1]), 1))
    else:
        examples = read(plan[start:stop])
    yield from padded(examples, target, skipped)


def padded(examples: Iterable[dict], target: int, skipped: Callable[[], int] = lambda: 0) -> Iterator[dict]:
    """``examples``, then :func:`padding` copies of the last one until ``target`` have been yielded
    (``skipped()`` gives each copy's count of samples skipped since the previous example)."""
    produced, last = 0, None
    for last in examples:
        produced += 1
        yield last
    while produced < target and last is not None:
        produced += 1
        yield padding(last, skipped())


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
