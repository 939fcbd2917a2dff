"""Exactly-once sharding of an evaluation plan across ranks and DataLoader workers.

A plan of ``n`` items is cut into one contiguous range per (rank, DataLoader worker)
(:func:`share`), and the shorter ranges are padded with copies flagged ``valid=False`` and
``meta["padding"]`` (:func:`padded`), so that every rank runs the same number of batches (ranks
that generate in lockstep under FSDP stop together) and no item is answered twice.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from torch.utils.data import get_worker_info

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
