"""MAU-Set shards as streams of examples.

Training streams resampled shards: each rank draws from its own subset of shards (split by node
when there are at least as many shards as ranks), each worker with its own seed, through a
shuffle buffer, and every rank gets exactly ``batches_per_epoch`` batches (:class:`EpochLoader`),
so that no DDP or FSDP rank waits for another; a resumed epoch replays its stream without the
batches trained on. Evaluation (:class:`EvalExamples`) reads every example exactly once across
all ranks and workers (:mod:`maugpt.data.sharding`).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
from collections.abc import Callable, Iterator

import webdataset as wds
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, IterableDataset

from maugpt.data.examples import ExampleEncoder
from maugpt.data.sharding import exactly_once, worker_slot
from maugpt.data.shards import SkipCounter, decode_or_skip, decode_sample, scan_records

log = logging.getLogger(__name__)


class StreamGuard:
    """Stops an endless training stream that can never yield, naming why.

    Resampled shards never run out, so webdataset's warn-and-continue handler would draw a rank's
    unreadable shards forever, and samples that never make an example (filters matching nothing,
    nothing decodable) would be read forever. ``handler`` fails once every shard of the rank has
    failed to open or read with no sample in between; ``samples`` (a pipeline stage on the raw
    samples) fails after ``max_barren`` consecutive samples without an ``example()``.
    """

    def __init__(self, urls: list[str], max_barren: int, rank: int = 0) -> None:
        self.urls, self.max_barren, self.rank = list(urls), max_barren, rank
        self.failed: dict[str, str] = {}  # shard → error, since the last sample
        self.barren = 0

    def handler(self, exn: Exception) -> bool:
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in self.urls), repr(exn.args[-1:]))
        self.failed[url] = f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        log.warning("skipping unreadable training shard %s (%s)", url, self.failed[url])
        if set(self.urls) <= set(self.failed):
            shown = "; ".join(f"{u} ({e})" for u, e in list(self.failed.items())[:3])
            raise RuntimeError(
                f"rank {self.rank}: none of its {len(self.urls)} training shard(s) can be read: "
                f"{shown}{' …' if len(self.failed) > 3 else ''}"
            )
        return True

    def samples(self, stream: Iterator[dict]) -> Iterator[dict]:
        for sample in stream:
            self.failed.clear()
            self.barren += 1
            if self.barren > self.max_barren:
                raise RuntimeError(
                    f"no training example in {self.barren - 1} consecutive samples of "
                    f"{self.urls[0]}…: are they decodable, and do the tasks/domains/sources "
                    "filters match anything in the training split?"
                )
            yield sample

    def example(self) -> None:
        self.barren = 0


class TrainExamples(IterableDataset):
    """An endless, shuffled stream of training examples for one rank (see the module docstring)."""

    def __init__(
        self,
        urls: list[str],
        encoder: ExampleEncoder,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        seed: int = 0,
    ) -> None:
        self.urls, self.encoder, self.rank, self.world_size = urls, encoder, rank, world_size
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, 0
        # Set by EpochLoader before the workers copy the dataset: batches of this epoch trained on
        # before a resume, which the resumed stream replays and drops, and the batch geometry.
        self.resumed_after, self.batch_size = 0, 1
        self.max_barren = 10_000  # consecutive samples without an example before giving up

    def rank_urls(self) -> list[str]:
        """This rank's shards: split by node when every rank can have its own."""
        if len(self.urls) >= self.world_size:
            return self.urls[self.rank :: self.world_size]
        return self.urls

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_slot()
        # The DataLoader takes batch i from worker i % workers, and a resumed loader starts again at
        # worker 0: so worker w takes the part of the worker that served batch resumed_after + w,
        # replays that worker's stream and drops the examples of the batches it served before.
        role = (worker + self.resumed_after) % workers
        drop = len(range(role, self.resumed_after, workers)) * self.batch_size
        seed = random.Random(f"{self.seed}:{self.rank}:{role}:{self.epoch}").randrange(2**31)
        guard = StreamGuard(self.rank_urls(), self.max_barren + self.shuffle_buffer, self.rank)  # + the buffer's fill
        stream = wds.DataPipeline(
            # webdataset's own per-worker seed (rank * 1000 + worker id) with the role's id instead
            wds.ResampledShards(
                self.rank_urls(), seed=seed, deterministic=True, worker_seed=lambda: self.rank * 1000 + role
            ),
            wds.tarfile_to_samples(handler=guard.handler),
            guard.samples,
            wds.shuffle(self.shuffle_buffer, rng=random.Random(seed)),
        )
        counter = SkipCounter()
        for sample in decode_or_skip(stream, counter, self.encoder.wants_image):
            try:
                examples = self.encoder(sample)
            except ValueError as err:  # a sample the configuration cannot use: count it, go on
                counter.count += 1
                log.warning("skipping sample %r: %s", sample.get("__key__"), err)
                continue
            for example in examples:
                guard.example()
                if drop:  # trained on before the resume; its skipped samples were counted then
                    drop, _ = drop - 1, counter.take()
                    continue
                example["skipped"] = counter.take()
                yield example


class EvalExamples(IterableDataset):
    """Every example of an evaluation split once across ranks and workers, in equal counts per rank.

    ``expected`` (per shard, from ``index.json``) is what the plan must cover: a shard with fewer
    readable records (truncated, missing, a sample without its JSON) fails naming the shards and
    counts, or with ``allow_missing`` is evaluated without them and named in a warning.
    """

    def __init__(
        self,
        urls: list[str],
        encoder: ExampleEncoder,
        rank: int = 0,
        world_size: int = 1,
        prompts: bool = False,
        expected: list[int] | None = None,
        allow_missing: bool = False,
    ) -> None:
        self.urls, self.encoder, self.rank, self.world_size, self.prompts = urls, encoder, rank, world_size, prompts
        records = [scan_records(url) for url in urls]
        if expected is not None:
            short = [(url, len(found), want) for url, found, want in zip(urls, records, expected) if len(found) < want]
            if short:
                missing = sum(want - found for _, found, want in short)
                message = (
                    f"{missing} of the {sum(expected)} samples that index.json lists cannot be evaluated: "
                    + "; ".join(f"{url} has {found} of {want} readable records" for url, found, want in short[:5])
                    + (f"; … ({len(short)} shards)" if len(short) > 5 else "")
                )
                if not allow_missing:
                    raise ValueError(
                        message + ". Rebuild or restore those shards, or set allow_missing_eval to "
                        "evaluate without them."
                    )
                log.warning("%s; evaluating without them (allow_missing_eval)", message)
        # The plan: (shard index, sample key, QA indices) of every example, in shard order.
        self.plan = [
            (i, record["key"], group)
            for i, found in enumerate(records)
            for record in found
            for group in encoder.groups(record, per_qa=prompts)
        ]

    def __iter__(self) -> Iterator[dict]:
        counter = SkipCounter()
        yield from exactly_once(
            self.plan, self.rank, self.world_size, lambda mine: self.examples(mine, counter), counter.take
        )

    def examples(self, mine: list, counter: SkipCounter) -> Iterator[dict]:
        """The examples of ``mine`` (a part of the plan), read shard by shard."""
        last = None
        wanted: dict[tuple[int, str], list[list[int]]] = {}
        for shard, key, group in mine:
            wanted.setdefault((shard, key), []).append(group)
        for shard in sorted({s for s, _ in wanted}):
            raw_samples = wds.DataPipeline(
                wds.SimpleShardList([self.urls[shard]]), wds.tarfile_to_samples(handler=wds.warn_and_continue)
            )
            for raw in raw_samples:
                groups = wanted.get((shard, raw.get("__key__")))
                if not groups:
                    continue
                try:
                    sample = decode_sample(raw, self.encoder.wants_image)
                    pixels = self.encoder.images(sample)
                    examples = [self.encoder.example(sample["json"], pixels, g, prompt=self.prompts) for g in groups]
                except Exception as err:  # a damaged sample still occupies its places, flagged invalid
                    counter.count += 1
                    log.warning("skipping sample %r in %s: %s", raw.get("__key__"), self.urls[shard], err)
                    if last is None:
                        continue
                    examples = [{**last, "valid": False} for _ in groups]
                for example in examples:
                    example["skipped"] = counter.take()
                    last = example
                    yield example


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker ignores SIGTERM, SIGINT and SIGUSR1 (SLURM signals every process of a job, a
    terminal's Ctrl+C the whole process group): the main process decides when to stop, after
    saving (see ``maugpt.training.preemption``); a worker ended by a signal would abort the step it
    saves after. The main process ends its workers through the loader when it is done. Lightning's
    worker seeding (``seed_everything(workers=True)``) still runs."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)


class EpochLoader(DataLoader):
    """A DataLoader over an endless dataset that yields exactly ``batches`` batches per epoch.

    It resumes exactly: a checkpoint records how many batches of the epoch were trained on, and a
    run resumed in the middle of that epoch replays the epoch's stream without those batches, so it
    sees the batches an uninterrupted run would have seen (the dropped examples are read and
    encoded again, at the loader's speed, but never trained on); Lightning ends the epoch at its
    batch count.
    """

    def __init__(self, dataset: TrainExamples, batches: int, epoch: Callable[[], int], **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.batches, self.epoch = batches, epoch
        self.served, self._resume = 0, None

    def __iter__(self):
        epoch = self.epoch()
        resume, self._resume = self._resume, None
        self.dataset.epoch = epoch  # set before the workers copy the dataset
        self.dataset.resumed_after = resume["served"] if resume and resume["epoch"] == epoch else 0
        self.dataset.batch_size = self.batch_size
        if self.dataset.resumed_after:
            saved = (resume.get("batch_size", self.batch_size), resume.get("workers", self.workers))
            if saved != (self.batch_size, self.workers):
                log.warning(
                    "resuming an epoch saved with batch_size %d and %d loader worker(s) with batch_size %d "
                    "and %d: the epoch's remaining batches are not the ones an uninterrupted run would have "
                    "seen",
                    *saved,
                    self.batch_size,
                    self.workers,
                )
        self.served = self.dataset.resumed_after
        for batch in itertools.islice(super().__iter__(), self.batches):
            self.served += 1
            yield batch

    def state_dict(self) -> dict:
        # Lightning fetches no batch ahead from a loader with a length: served = trained on.
        return {
            "epoch": self.dataset.epoch,
            "served": self.served,
            "batch_size": self.batch_size,
            "workers": self.workers,
        }

    @property
    def workers(self) -> int:
        """The streams batches come from in turn: the workers, or the main process alone."""
        return max(1, self.num_workers)

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def __len__(self) -> int:
        return self.batches
