"""``MAUSetDataModule``: MAU-Set (or caption) shards as training and evaluation batches.

The training data module wires the batch path together: the shards (:mod:`maugpt.data.shards`),
the example encoder (:mod:`maugpt.data.examples`) and the streams and loader
(:mod:`maugpt.data.streams`), whose batches the chat format collates (:mod:`maugpt.data.collate`).
``docs/architecture.md`` follows one batch hop by hop.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from maugpt.data.examples import ExampleEncoder, Packing
from maugpt.data.prompts import PromptDataModule
from maugpt.data.shards import read_index, shard_urls
from maugpt.data.streams import EpochLoader, EvalExamples, TrainExamples, ignore_stop_signals
from maugpt.schema import TASKS

log = logging.getLogger(__name__)


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
        max_length: longest token sequence; see :class:`~maugpt.data.chat.ChatEncoder`.
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
            :class:`~maugpt.data.geometry.ImageTransform`. Shards built at the encoder's input size
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
