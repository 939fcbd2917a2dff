"""A decoded MAU-Set sample to model examples: the task, domain and source filters, the packing
(one conversation per image, or one example per question), the images and the chat format."""

from __future__ import annotations

import random
from typing import Literal

from maugpt.data.formats import chat_format

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
