"""``MMADDataModule``: the MMAD benchmark (the paper's Table 5) as generation prompts for ``maugpt test``.

Each multiple-choice question of ``mmad.json`` becomes one prompt, written as one of the official
query scripts writes it (:mod:`maugpt.mmad.prompts`; ``llava`` by default): its
instruction, ``k`` normal templates (0-shot: none; the official default is 1 from
``random_templates``), the query image and the question with its options lettered A, B, C… (in the
file's order or shuffled, the answer remapped). The answers are scored by
:class:`~maugpt.mmad.scoring.MMADEvaluation` with the official protocol, by generation (the
script's letter extraction and decoding) and by option likelihood. Format: the release's ``mmad.json``
(Jiang et al. 2024, "MMAD"), read by :func:`maugpt.mmad.scoring.load_questions`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, IterableDataset

from maugpt.data.formats import ChatFormat
from maugpt.data.prompts import PromptDataModule
from maugpt.data.sharding import exactly_once
from maugpt.images import DEFAULT_MAX_PIXELS, open_rgb
from maugpt.mmad.prompts import DEFAULT, INSTRUCTION, SCRIPTS, query_script
from maugpt.mmad.scoring import MMADEvaluation, MMADQuestion, load_questions, present_options, read_mmad

log = logging.getLogger(__name__)
Item = tuple[MMADQuestion, list[Path], str]  # the question as shown, its images (templates, query), the user turn


class MMADPrompts(IterableDataset):
    """Every question once across ranks and workers, in equal counts per rank (the shorter ranges
    padded with ``valid=False`` copies, so that ranks decoding in lockstep stop together).

    A question whose image cannot be read is counted (``skipped``) and stays as a prompt flagged
    with the error: it is scored as unparsable, never dropped from the plan.
    """

    def __init__(
        self,
        items: list[Item],
        format: ChatFormat,
        system: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.items, self.format = items, format
        self.system, self.rank, self.world_size, self.max_pixels = system, rank, world_size, max_pixels

    def pixels(self, paths: list[Path]) -> tuple[object, str | None]:
        """The templates, then the query image (the prompt's order), as the format prepares them
        (read by :func:`~maugpt.images.open_rgb`: 8-bit RGB, upright, at most ``max_pixels``)."""
        try:
            return self.format.images([open_rgb(path, max_pixels=self.max_pixels) for path in paths]), None
        except OSError as err:  # ImageRejected, or the format's own failure to read
            log.warning("unreadable MMAD image among %s: %s", [str(p) for p in paths], err)
            return self.format.blank(len(paths)), str(err)

    def example(self, question: MMADQuestion, paths: list[Path], text: str, cache: dict) -> dict:
        if cache.get("paths") != paths:  # an image's questions are consecutive: decode it once
            cache.update(paths=paths, result=self.pixels(paths))
        pixels, error = cache["result"]
        meta = {
            "image": question.image,
            "question_index": question.index,
            "dataset": question.dataset,
            "subtask": question.subtask,
            "question": question.question,
            "options": question.options,
            "answer": question.answer,
        }
        if error:
            meta["error"] = error
        return {
            **self.format.prompt_text(text, pixels, self.system),
            "meta": meta,
            "valid": True,
            "skipped": int(error is not None),
        }  # counted per question, whatever the slots

    def __iter__(self) -> Iterator[dict]:
        yield from exactly_once(self.items, self.rank, self.world_size, self.examples)

    def examples(self, mine: list[Item]) -> Iterator[dict]:
        cache: dict = {}
        for question, paths, text in mine:
            yield self.example(question, paths, text, cache)


class MMADDataModule(PromptDataModule):
    """MMAD questions as generation prompts; ``evaluation()`` scores them (Table 5).

    Args:
        data_root: the MMAD folder: the ``mmad.json`` keys and template paths are relative to it.
        tokenizer: linked from the model's LLM by the CLI.
        vision_encoder: linked from the model's encoder by the CLI.
        image_tokens: linked from the built encoder by the CLI.
        questions: the question file (default: ``<data_root>/mmad.json``).
        shots: normal templates shown before the query image (0: the query image only).
        templates: where the templates come from: ``random`` (``random_templates``, the official
            default) or ``similar`` (``similar_templates``).
        prompt: the official query script whose prompt, option order, letter extraction and
            decoding are used: ``llava`` (default; MAU-GPT is LLaVA-style), ``qwen``, ``internvl``
            or ``gpt4v`` (see :mod:`maugpt.mmad.prompts`).
        decoding: ``official``: the script's generation settings (sampled for ``llava``, ``qwen``
            and ``gpt4v``: scores vary from run to run); ``greedy``: greedy decoding with the
            model's ``max_new_tokens``.
        shuffle_options: show each question's options in a seeded random order (the answer
            letter follows its option); default: as the script does (``llava`` shuffles).
        seed: seed of the option order.
        instruction: replaces the scripts' instruction text (default: theirs).
        datasets: keep only these source datasets (``DS-MVTec``, ``MVTec-LOCO``, ``VisA``, ``GoodsAD``).
        limit: ask only the first ``limit`` questions (a quick look; tables then cover those).
        unparsable: ``wrong`` counts answers without a letter as wrong; ``official`` reproduces
            the official summary (see :mod:`maugpt.mmad.scoring`).
        last_letter: take the last letter A–E of an answer, else the first; default: as the
            script does (``llava`` takes the first).
        batch_size: prompts per batch and rank.
        num_workers: data-loading workers per rank.
        processor: a pretrained VLM's processor (linked from ``PretrainedVLMModule``'s ``vlm``): its
            chat template wraps the script's user turn and its processor makes the batches.
        processor_kwargs: the processor's settings (linked from ``PretrainedVLMModule``).
        max_pixels: the largest image read (width x height, from its header, before decoding); a
            question with a larger image is counted as skipped and scored as unparsable (see
            :mod:`maugpt.images`; MMAD's images are far smaller than the 50 M default).
    """

    def __init__(
        self,
        data_root: str,
        tokenizer: str | None = None,
        vision_encoder: str | None = None,
        image_tokens: int | None = 576,
        questions: str | None = None,
        shots: int = 1,
        templates: Literal["random", "similar"] = "random",
        prompt: Literal["llava", "qwen", "internvl", "gpt4v"] = DEFAULT,
        decoding: Literal["official", "greedy"] = "official",
        shuffle_options: bool | None = None,
        seed: int = 0,
        instruction: str | None = None,
        datasets: list[str] | None = None,
        limit: int | None = None,
        unparsable: Literal["wrong", "official"] = "wrong",
        last_letter: bool | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        processor: str | None = None,
        processor_kwargs: dict | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        if shots < 0:
            raise ValueError(f"shots must be 0 or more, got {shots}")
        for name, value, allowed in (
            ("templates", templates, ("random", "similar")),
            ("prompt", prompt, tuple(SCRIPTS)),
            ("decoding", decoding, ("official", "greedy")),
            ("unparsable", unparsable, ("wrong", "official")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        self.save_hyperparameters()
        self.script = query_script(prompt)
        self.shuffle = self.script.shuffle_options if shuffle_options is None else shuffle_options
        self.last_letter = self.script.last_letter if last_letter is None else last_letter
        self.items: list[Item] = []

    def setup(self, stage: str | None = None) -> None:
        if self.items:
            return
        h = self.hparams
        root = Path(h.data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"MMAD data_root {root} is not a folder (expected the unpacked MMAD release)")
        path = Path(h.questions) if h.questions else root / "mmad.json"
        entries = read_mmad(path)
        every = load_questions(path, entries)
        questions = every
        if h.datasets:
            unknown = sorted(set(h.datasets) - {q.dataset for q in questions})
            if unknown:
                raise ValueError(
                    f"datasets {unknown} are not in {path}; it holds {sorted({q.dataset for q in questions})}"
                )
            questions = [q for q in questions if q.dataset in h.datasets]
        questions = questions[: h.limit] if h.limit is not None else questions
        if not questions:
            raise ValueError(f"{path}: no question left to ask (datasets={h.datasets}, limit={h.limit})")
        conversations: dict[str, list[MMADQuestion]] = defaultdict(list)  # each image's questions as shown
        for q in every:
            conversations[q.image].append(present_options(q, self.shuffle, h.seed))
        instruction = INSTRUCTION if h.instruction is None else h.instruction
        field = f"{h.templates}_templates"
        self.items = []
        for q in questions:
            listed = entries[q.image].get(field) if h.shots else []
            if not isinstance(listed, list) or len(listed) < h.shots:
                raise ValueError(
                    f"{path}: entry {q.image!r} field {field!r} needs at least {h.shots} template "
                    f"path(s) for {h.shots}-shot prompts, got {listed!r}"
                )
            asked = conversations[q.image][: q.index + 1]
            self.items.append(
                (
                    asked[-1],
                    [root / p for p in listed[: h.shots]] + [root / q.image],
                    self.script.render(asked, h.shots, instruction),
                )
            )
        missing = sorted(str(p) for p in {p for _, paths, _ in self.items for p in paths} if not p.is_file())
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} MMAD image(s) missing under {root} (e.g. {', '.join(missing[:3])}): "
                "data_root must hold the images the mmad.json keys and templates name"
            )
        tokenizer = self.setup_prompts(
            h.tokenizer, h.vision_encoder, h.image_tokens, processor=h.processor, processor_kwargs=h.processor_kwargs
        )
        self.system = instruction if self.script.system_instruction else None
        letters = [chr(ord("A") + i) for i in range(max(len(q.options) for q, _, _ in self.items))]
        ids = [tokenizer(letter, add_special_tokens=False).input_ids for letter in letters]
        if any(len(i) != 1 for i in ids):
            raise ValueError(
                f"option-likelihood scoring needs each option letter to be one token; the tokenizer "
                f"splits them as {dict(zip(letters, ids))}"
            )
        self.choice_ids = torch.tensor([i[0] for i in ids])
        log.info(
            "MMAD: %d questions on %d images, %d-shot, %s prompts",
            len(self.items),
            len({q.image for q, _, _ in self.items}),
            h.shots,
            self.script.name,
        )

    def evaluation(self) -> MMADEvaluation:
        h = self.hparams
        order = f"shuffled options (seed {h.seed})" if self.shuffle else "options in the file's order"
        shots = f"{h.shots}-shot ({h.templates} templates)" if h.shots else "0-shot"
        decoding = (
            self.script.decoding if h.decoding == "official" else {"do_sample": False}
        )  # greedy: the model's max_new_tokens
        used = "official decoding" if h.decoding == "official" else "greedy decoding (the model's max_new_tokens)"
        setting = f"{shots}, {order}, {used}\n\n{self.script.describe()}" + (
            ""
            if self.last_letter == self.script.last_letter
            else f"; letter overridden: {'last' if self.last_letter else 'first'}"
        )
        return MMADEvaluation(
            [q for q, _, _ in self.items], h.unparsable, self.last_letter, self.script.closest_option, setting, decoding
        )

    def _collate(self, examples: list[dict]) -> dict:
        return {**self.format.collate_prompts(examples), "choice_ids": self.choice_ids}

    def test_dataloader(self) -> DataLoader:
        rank, world = self.rank()
        dataset = MMADPrompts(self.items, self.format, self.system, rank, world, max_pixels=self.hparams.max_pixels)
        return self.prompt_loader(dataset, self.hparams.batch_size, self.hparams.num_workers, self._collate)
