"""``MAUSetDataModule``: MAU-Set (or caption) shards streamed into chat-formatted training batches.

Training streams resampled shards: each rank draws from its own subset of shards (split by node
when there are at least as many shards as ranks), each worker with its own seed, through a
shuffle buffer, and every rank gets exactly ``batches_per_epoch`` batches, so that no DDP or FSDP
rank waits for another. Validation and test read every example exactly once across all ranks
and workers: the examples are planned from the shards' JSON records, cut into one contiguous
range per (rank, worker), and the shorter ranges are padded with copies flagged ``valid=False``,
so that every rank runs the same number of batches.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
import webdataset as wds
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, IterableDataset

from maugpt.data.formats import chat_format
from maugpt.data.prompts import PromptDataModule, exactly_once, worker_slot
from maugpt.data.reader import SkipCounter, decode_or_skip, decode_sample, read_index, shard_urls
from maugpt.schema import TASKS

log = logging.getLogger(__name__)
Packing = Literal["conversation", "qa"]


class ExampleEncoder:
    """Turns one decoded sample into model examples: filters, packing, images, tokens."""

    def __init__(
        self,
        tokenizer: str | None,
        vision_encoder: str | None,
        image_tokens: int | None,
        max_length: int = 2048,
        packing: Packing = "conversation",
        tasks: list[str] | None = None,
        domains: list[str] | None = None,
        sources: list[str] | None = None,
        references: int = 0,
        system_prompt: str | None = None,
        shuffle_turns: bool = True,
        resize: str = "torch",
        processor: str | None = None,
        processor_kwargs: dict | None = None,
    ) -> None:
        if packing not in ("conversation", "qa"):
            raise ValueError(f"packing must be 'conversation' or 'qa', got {packing!r}")
        self.format = chat_format(
            tokenizer, vision_encoder, image_tokens, processor, max_length, system_prompt, resize, processor_kwargs
        )
        self.packing, self.references, self.shuffle_turns = packing, references, shuffle_turns
        self.tasks, self.domains, self.sources = (set(x) if x else None for x in (tasks, domains, sources))

    def groups(self, record: dict, per_qa: bool = False) -> list[list[int]]:
        """Indices of the QA pairs that form each example of ``record`` (empty if it is filtered out);
        ``per_qa`` makes one example per pair whatever the packing (generation prompts)."""
        if (self.domains and record["domain"] not in self.domains) or (
            self.sources and record["source"] not in self.sources
        ):
            return []
        kept = [i for i, qa in enumerate(record["qa"]) if not self.tasks or qa["task"] in self.tasks]
        if not kept:
            return []
        return [kept] if self.packing == "conversation" and not per_qa else [[i] for i in kept]

    def wants_image(self, name: str) -> bool:
        """Which image members to decode: the query image and the configured references (no masks)."""
        return "." not in name or (name.startswith("ref") and int(name[3 : name.index(".")]) < self.references)

    def images(self, sample: dict):
        """The query image, then the normal references, as the format prepares them (MAU-GPT's:
        ``uint8 (1 + references, H, W, 3)``)."""
        query = next((sample[k] for k in ("jpg", "png", "jpeg") if k in sample), None)
        if query is None:
            raise ValueError(f"sample {sample.get('__key__')!r} has no image")
        refs = sorted(k for k in sample if k.startswith("ref"))[: self.references]
        if len(refs) < self.references:
            raise ValueError(
                f"sample {sample.get('__key__')!r} has {len(refs)} reference image(s); {self.references} are configured"
            )
        return self.format.images([query] + [sample[k] for k in refs])

    def example(self, record: dict, pixels, group: list[int], valid: bool = True, prompt: bool = False) -> dict:
        """A training example of the QA pairs ``group``; with ``prompt``, the generation prompt of
        its one question, the reference answer kept in ``meta``."""
        meta = {
            "key": record["key"],
            "source": record["source"],
            "domain": record["domain"],
            "product": record["product"],
            "defect_class": record.get("defect_class"),
            "generic_defect": bool(record.get("generic_defect")),
            "is_anomalous": record["is_anomalous"],
            "qa_index": group,
            "tasks": [record["qa"][i]["task"] for i in group],
        }
        if prompt:
            qa = record["qa"][group[0]]
            meta.update(task=qa["task"], style=qa["style"], question=qa["question"], reference=qa["answer"])
            return {**self.format.prompt(qa["question"], pixels), "meta": meta, "valid": valid}
        if len(group) > 1 and self.shuffle_turns:
            # Every task gets to be the first question, as it is when a single question is asked.
            group = random.Random(record["key"]).sample(group, len(group))
        pairs = [(record["qa"][i]["question"], record["qa"][i]["answer"]) for i in group]
        return {**self.format.conversation(pairs, pixels), "meta": meta, "valid": valid}

    def __call__(self, sample: dict) -> list[dict]:
        groups = self.groups(sample["json"])
        if not groups:
            return []
        pixels = self.images(sample)
        return [self.example(sample["json"], pixels, group) for group in groups]


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


def scan_records(url: str) -> list[dict]:
    """The JSON records of one shard, read without decoding any image: undecodable ones are left
    out, and a missing or damaged (truncated) shard gives the records before the damage."""
    records = []
    try:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    try:
                        records.append(json.loads(tar.extractfile(member).read()))
                    except ValueError:
                        continue
    except (tarfile.TarError, EOFError, OSError) as err:
        log.warning("evaluation shard %s is missing or damaged after %d record(s): %s", url, len(records), err)
    return records


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


class MAUSetDataModule(PromptDataModule):
    """MAU-Set shards as batches for MAU-GPT or, through its processor, a pretrained VLM.

    Args:
        data_dir: folder with ``train/``, ``val/`` and ``test/`` split folders (written by the builders).
        tokenizer: the LLM's tokenizer (local folder or hub id); it needs a chat template and
            ``<image>`` as a single token.
        vision_encoder: timm model name or local folder with ``config.json``; its data config
            gives the image transform.
        image_tokens: visual-token slots per image (the model's patch count).
        batch_size: examples per batch on each rank.
        eval_batch_size: examples per validation/test batch (default: ``batch_size``).
        num_workers: data-loading workers per rank.
        max_length: longest token sequence; see :class:`~maugpt.data.encode.ChatEncoder`.
        packing: ``conversation``: all QA pairs of an image as one multi-turn chat (one image
            encoding for 7–8 answers); ``qa``: one QA pair per example.
        tasks: keep only these tasks' QA pairs (default: all).
        domains: keep only images of these domains.
        sources: keep only images of these sources.
        references: normal reference images per example (the samples must hold them).
        shuffle_buffer: samples in the training shuffle buffer.
        batches_per_epoch: training batches per epoch and rank (default: about one pass).
        seed: seed of shard resampling and shuffling.
        system_prompt: optional system message.
        allow_pipe_urls: allow ``pipe:`` shard URLs (they run shell commands).
        test_mode: ``generate``: test batches are left-padded prompts, one per QA pair, with the
            reference answers in ``meta``; ``loss``: test batches are like validation batches.
        shuffle_turns: in a packed conversation, put the QA pairs in an order drawn per image
            (fixed by its key), so that every task is sometimes asked first, as at test time.
        bleu_tokenize: the test's BLEU-4 tokenizer, as sacrebleu names it: ``none`` (whitespace
            tokens) or ``13a`` (see :mod:`maugpt.evaluation.mauset`).
        rouge_stemmer: stem tokens (Porter) before the test's ROUGE, as rouge-score's ``use_stemmer``.
        allow_missing_eval: evaluate although some samples that a split's ``index.json`` lists
            cannot be read (a truncated shard, a sample without JSON), naming them in a warning;
            by default that fails before the evaluation starts.
        resize: ``torch`` (PyTorch's antialiased uint8 resize, within 1 of 255 of PIL's, ~4×
            faster) or ``pil`` (timm's own transform, bit for bit); see
            :class:`~maugpt.data.encode.ImageTransform`. Shards built at the encoder's input size
            (``max_side`` of the builders) need no resize at all.
        processor: a pretrained VLM's folder or hub id: its own processor makes the batches
            (:class:`~maugpt.data.processor.ProcessorFormat`) and ``tokenizer``, ``vision_encoder``,
            ``image_tokens`` and ``resize`` go unused; linked from ``PretrainedVLMModule``'s ``vlm``.
        processor_kwargs: the processor's settings (linked from ``PretrainedVLMModule``).
    """

    def __init__(
        self,
        data_dir: str,
        tokenizer: str | None = None,
        vision_encoder: str | None = None,
        image_tokens: int | None = 576,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        max_length: int = 2048,
        packing: Packing = "conversation",
        tasks: list[str] | None = None,
        domains: list[str] | None = None,
        sources: list[str] | None = None,
        references: int = 0,
        shuffle_buffer: int = 1000,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        system_prompt: str | None = None,
        allow_pipe_urls: bool = False,
        test_mode: Literal["generate", "loss"] = "generate",
        shuffle_turns: bool = True,
        bleu_tokenize: Literal["none", "13a"] = "none",
        rouge_stemmer: bool = False,
        allow_missing_eval: bool = False,
        resize: Literal["torch", "pil"] = "torch",
        processor: str | None = None,
        processor_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        unknown = sorted(set(tasks or []) - set(TASKS) - {"caption"})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected some of {[*TASKS, 'caption']}")
        self.data_dir = Path(data_dir)
        self.encoder: ExampleEncoder | None = None
        self._train_loader: EpochLoader | None = None
        self._train_state: dict | None = None

    def urls(self, split: str) -> list[str]:
        folder = self.data_dir / split
        urls = shard_urls(folder)
        if any(u.startswith("pipe:") for u in urls) and not self.hparams.allow_pipe_urls:
            raise ValueError(f"{folder} lists pipe: URLs, which run shell commands; set allow_pipe_urls to use them")
        return urls

    def setup(self, stage: str | None = None) -> None:
        if self.encoder is None:
            h = self.hparams
            self.encoder = ExampleEncoder(
                h.tokenizer,
                h.vision_encoder,
                h.image_tokens,
                h.max_length,
                h.packing,
                h.tasks,
                h.domains,
                h.sources,
                h.references,
                h.system_prompt,
                h.shuffle_turns,
                h.resize,
                h.processor,
                h.processor_kwargs,
            )
            self.format = self.encoder.format

    def train_dataset(self, rank: int = 0, world_size: int = 1) -> TrainExamples:
        self.setup()
        return TrainExamples(
            self.urls("train"), self.encoder, rank, world_size, self.hparams.shuffle_buffer, self.hparams.seed
        )

    def eval_dataset(self, split: str, rank: int = 0, world_size: int = 1, prompts: bool = False) -> EvalExamples:
        self.setup()
        counts = [shard.get("count") for shard in read_index(self.data_dir / split)["shards"]]
        expected = counts if all(isinstance(c, int) for c in counts) else None  # hand-written indexes may omit them
        return EvalExamples(
            self.urls(split), self.encoder, rank, world_size, prompts, expected, self.hparams.allow_missing_eval
        )

    def default_batches_per_epoch(self, world_size: int) -> int:
        """About one pass over the training split's examples, shared by all ranks."""
        stats_path = self.data_dir / "train" / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
        if stats and self.hparams.packing == "qa":
            tasks = self.hparams.tasks or list(stats["task"])
            examples = sum(stats["task"].get(t, 0) for t in tasks)
        else:
            examples = read_index(self.data_dir / "train")["samples"]
        return max(1, examples // (self.hparams.batch_size * world_size))

    def loader_kwargs(self, batch_size: int, prompts: bool = False) -> dict:
        """The DataLoader settings of this module's batches (``prompts``: left-padded generation prompts)."""
        # Each loader has its own generator: its seed draw at every epoch and validation leaves the
        # global one (dropout's) alone, so a resumed fit finds it as an uninterrupted one would.
        return dict(
            batch_size=batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=self.format.collate_prompts if prompts else self.format.collate,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=ignore_stop_signals,
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def first_prompts(self, split: str, count: int) -> dict:
        """The first ``count`` generation prompts of ``split`` as one batch, read in this process
        (rank 0's view of the split: the same on every rank); for callbacks that show answers."""
        dataset = self.eval_dataset(split, prompts=True)
        return next(iter(DataLoader(dataset, **{**self.loader_kwargs(count, prompts=True), "num_workers": 0})))

    def train_dataloader(self) -> EpochLoader:
        rank, world = self.rank()
        dataset = self.train_dataset(rank, world)
        batches = self.hparams.batches_per_epoch or self.default_batches_per_epoch(world)
        trainer = self.trainer
        epoch = (lambda: trainer.current_epoch) if trainer is not None else (lambda: dataset.epoch + 1)
        self._train_loader = EpochLoader(
            dataset, batches, epoch, drop_last=True, **self.loader_kwargs(self.hparams.batch_size)
        )
        if self._train_state is not None:
            self._train_loader.load_state_dict(self._train_state)
            self._train_state = None
        return self._train_loader

    def state_dict(self) -> dict:
        """The training stream's position, saved in checkpoints (see :class:`EpochLoader`)."""
        return {"train": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        # Lightning restores the data module before or after it builds the train loader (it
        # builds one early to count the steps), so the state applies to the loader either way.
        if self._train_loader is not None and "train" in state:
            self._train_loader.load_state_dict(state["train"])
        else:
            self._train_state = state.get("train")

    def _eval_dataloader(self, split: str, prompts: bool = False) -> DataLoader:
        rank, world = self.rank()
        dataset = self.eval_dataset(split, rank, world, prompts)
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(dataset, **self.loader_kwargs(batch_size, prompts))

    def evaluation(self):
        """What scores generated test answers: Tables 2 and 4 (None when ``test_mode`` is ``loss``)."""
        from maugpt.evaluation.mauset import MAUSetEvaluation

        h = self.hparams
        return MAUSetEvaluation(h.bleu_tokenize, h.rouge_stemmer) if h.test_mode == "generate" else None

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test", prompts=self.hparams.test_mode == "generate")
