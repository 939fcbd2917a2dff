"""``ProcessorFormat``: batches for a pretrained vision-language model (LLaVA-1.5, Qwen2.5-VL,
Qwen3-VL, InternVL, Gemma-3, Gemma 4, Idefics3/SmolVLM …), made by its own ``AutoProcessor``.

The examples hold rendered text and RGB images; the processor runs once per batch in the loader
workers (its image processor, its expansion of each image placeholder to the model's image tokens
and the padding), so every architecture batches as its authors made it do. The chat text is the
model's own template over structured messages (``{"type": "image"}`` and ``{"type": "text"}``
parts in order; where an image goes in the rendered text is the template's choice, e.g.
LLaVA-1.5's puts every image first).

Supervision follows :class:`~maugpt.data.chat.ChatEncoder`: each answer and the turn end the
template writes after it are labelled, everything else is −100. The answers' character spans in
the rendered text are moved past the image expansions the processor reports
(``return_text_replacement_offsets``) and matched to the tokens' offsets, as transformers' own
assistant masks are. A template that ends assistant turns with none of the model's stop tokens
(LLaVA-1.5's writes a space) gets the end-of-sequence token after each answer, as the model was
trained (Vicuna's ``</s>`` separator), so that a fine-tuned model learns to stop. A template that
writes the BOS token (Gemma-3's) gets no second one from the tokenizer, as ``apply_chat_template``
does. A generation prompt that ends with more than the rendered answers start with (Gemma 4's empty
thought channel when thinking is off) gets that text before each answer, unlabelled, so that the
tokens before every supervised answer end as the prompt at inference does.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from maugpt.data.chat import IGNORE_INDEX, MARKED_PROBE, answer_spans, mark, turn_end
from maugpt.tokenizer import IMAGE_TOKEN, with_pad_token

log = logging.getLogger(__name__)
ANSWER_START = mark("")[0]  # the marker mark() puts before an answer
BLANK_SIDE = 224  # the stand-in for an unreadable image: black, the processor resizes it as any other


class ProcessorFormat:
    """Examples and batches through a pretrained VLM's processor.

    Args:
        processor: the model's folder or hub id (``AutoProcessor``; its tokenizer must be a fast one).
        max_length: longest training sequence in tokens, image tokens included; longer ones are cut
            at the end (inside the last answers), never inside the prompt (see :meth:`collate`).
        system_prompt: optional system message before the first turn.
        trust_remote_code: allow the repository's own processor code (off unless a config asks).
        processor_kwargs: passed to ``AutoProcessor.from_pretrained`` (e.g. Qwen2.5-VL's
            ``max_pixels``, SmolVLM's ``do_image_splitting``).
    """

    def __init__(
        self,
        processor: str,
        max_length: int = 2048,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict | None = None,
    ) -> None:
        self.processor = load_processor(processor, trust_remote_code, processor_kwargs)
        self.tokenizer = self.processor.tokenizer
        if not self.tokenizer.is_fast:
            raise ValueError(
                f"{processor}: the tokenizer is a slow one ({type(self.tokenizer).__name__}); answer "
                "labels need token offsets, which only fast tokenizers give"
            )
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{processor}: the processor has no chat template (chat_template.json or .jinja)")
        self.max_length, self.system_prompt = max_length, system_prompt
        self.pad_token_id = self.tokenizer.pad_token_id
        self.turn_end = turn_end(self.render(self.messages([("q", MARKED_PROBE)], 0)))
        eos = self.tokenizer.eos_token
        stops = [eos, *stop_tokens(processor, self.tokenizer)]
        self.after_answer = eos if eos and not any(t and t in self.turn_end for t in stops) else ""
        # A template that writes the BOS token itself must not get a second one from the tokenizer.
        bos = self.tokenizer.bos_token
        self.template_bos = bool(bos) and self.render(self.messages([("q", "a")], 0)).startswith(bos)
        self.answer_prefix = answer_prefix(
            self.render(self.messages([("q", MARKED_PROBE)], 0)),
            self.render(self.messages([("q", "")], 0)[:-1], add_generation_prompt=True),
        )

    # -- text ----------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def system(self, system: str | None = None) -> list[dict]:
        """The system message (``system``, else the configured one), if any."""
        system = system or self.system_prompt
        return [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []

    def messages(self, pairs: list[tuple[str, str]], images: int) -> list[dict]:
        """The conversation of ``pairs`` with ``images`` images before the first question."""
        messages = self.system()
        for i, (question, answer) in enumerate(pairs):
            user = [{"type": "image"}] * (images if i == 0 else 0) + [{"type": "text", "text": question}]
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ]
        return messages

    # -- examples ------------------------------------------------------------------------------
    def images(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The images as RGB (decoded now, in the worker); the processor resizes them per batch."""
        return [image.convert("RGB") for image in images]

    def blank(self, count: int) -> list[Image.Image]:
        return [Image.new("RGB", (BLANK_SIDE, BLANK_SIDE)) for _ in range(count)]

    def prompt(self, question: str, images: list[Image.Image]) -> dict:
        """The images, then ``question``, then the assistant header."""
        messages = self.messages([(question, "")], len(images))[:-1]
        return {"text": self.render(messages, add_generation_prompt=True), "images": images}

    def prompt_text(self, content: str, images: list[Image.Image], system: str | None = None) -> dict:
        """A user turn written with ``<image>`` where each image goes (e.g. an MMAD query script's)."""
        pieces = content.split(IMAGE_TOKEN)
        if len(pieces) - 1 != len(images):
            raise ValueError(
                f"the prompt has {len(pieces) - 1} {IMAGE_TOKEN} placeholder(s) for {len(images)} image(s)"
            )
        parts = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
        for piece in pieces[1:]:
            parts += [{"type": "image"}] + ([{"type": "text", "text": piece}] if piece else [])
        return {
            "text": self.render(self.system(system) + [{"role": "user", "content": parts}], add_generation_prompt=True),
            "images": images,
        }

    def conversation(self, pairs: list[tuple[str, str]], images: list[Image.Image]) -> dict:
        """The supervised chat of ``pairs``: its text and each answer's character span."""
        if not pairs:
            raise ValueError("nothing to encode: no QA pairs")
        marked = self.render(self.messages([(q, mark(a)) for q, a in pairs], len(images)))
        if self.answer_prefix:  # unlabelled, right before each answer: as the generation prompt ends
            marked = marked.replace(ANSWER_START, self.answer_prefix + ANSWER_START)
        text, spans = answer_spans(marked, len(pairs), self.turn_end, self.after_answer)
        return {"text": text, "spans": spans, "images": images}

    # -- batches -------------------------------------------------------------------------------
    def _process(self, examples: list[dict], side: str, offsets: bool = False):
        images = [e["images"] for e in examples]
        extra = {"return_offsets_mapping": True, "return_text_replacement_offsets": True} if offsets else {}
        return self.processor(
            text=[e["text"] for e in examples],
            images=images if any(images) else None,
            padding=True,
            padding_side=side,
            return_tensors="pt",
            add_special_tokens=not self.template_bos,
            **extra,
        )

    @staticmethod
    def _annotations(examples: list[dict]) -> dict:
        return {
            "valid": torch.tensor([e.get("valid", True) for e in examples]),
            "meta": [e["meta"] for e in examples],
            "skipped": sum(e.get("skipped", 0) for e in examples),
        }

    def collate_prompts(self, examples: list[dict]) -> dict:
        """Left-padded prompts: the processor's outputs, ``condition_mask`` (the whole prompt) and the annotations."""
        batch = dict(self._process(examples, "left"))
        batch["condition_mask"] = batch["attention_mask"].bool()
        return {**batch, **self._annotations(examples)}

    def collate(self, examples: list[dict]) -> dict:
        """Right-padded conversations with ``labels`` on the answers and ``condition_mask`` on the
        tokens before the first answer (the images and the first question), cut to ``max_length``.
        An example whose prompt alone takes ``max_length`` tokens is left out and counted in
        ``skipped`` (a long run goes on); a batch of nothing but such examples fails."""
        batch = self._labelled(examples)
        fits = (batch["condition_mask"].sum(1) < self.max_length).tolist()
        if not all(fits):
            too_long = [e["meta"].get("key") for e, fit in zip(examples, fits) if not fit]
            if not any(fits):
                raise ValueError(
                    f"max_length {self.max_length} leaves no room for an answer: the images and first "
                    f"question take {int(batch['condition_mask'].sum(1).min())} or more tokens "
                    f"(samples {too_long})"
                )
            log.warning(
                "skipping %d sample(s) whose prompt fills max_length %d: %s", len(too_long), self.max_length, too_long
            )
            kept = [e for e, fit in zip(examples, fits) if fit]
            kept[0] = {**kept[0], "skipped": kept[0].get("skipped", 0) + len(too_long)}
            return self.collate(kept)
        shape = batch["input_ids"].shape
        if shape[1] > self.max_length:  # every per-token tensor alike
            batch = {
                k: v[:, : self.max_length] if isinstance(v, torch.Tensor) and v.shape[:2] == shape else v
                for k, v in batch.items()
            }
        return {**batch, **self._annotations(examples)}

    def _labelled(self, examples: list[dict]) -> dict:
        batch = dict(self._process(examples, "right", offsets=True))
        token_offsets = batch.pop("offset_mapping").numpy()
        replacements = batch.pop("text_replacement_offsets")
        ids = batch["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        condition = torch.zeros_like(ids, dtype=torch.bool)
        for row, example in enumerate(examples):
            spans = expanded(example["spans"], replacements[row])
            starts, ends = token_offsets[row, :, 0], token_offsets[row, :, 1]
            supervised = np.zeros(len(starts), dtype=bool)
            for start, end in spans:
                supervised |= (starts < end) & (ends > start)
            real = batch["attention_mask"][row].bool().numpy()
            supervised &= real
            labels[row] = torch.where(torch.from_numpy(supervised), ids[row], IGNORE_INDEX)
            condition[row] = torch.from_numpy(real & (ends <= spans[0][0]))  # wholly before the first answer
        batch.update(labels=labels, condition_mask=condition)
        return batch

    def normalize(self, batch: dict) -> dict:
        return batch  # the processor's image processor normalised the images already


def load_processor(folder: str, trust_remote_code: bool = False, kwargs: dict | None = None):
    """A VLM's ``AutoProcessor`` (``kwargs`` override its settings); anything without a tokenizer and
    an image processor fails naming what it got."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code, **(kwargs or {}))
    if getattr(processor, "tokenizer", None) is None or not hasattr(processor, "image_processor"):
        raise ValueError(
            f"{folder}: AutoProcessor gave {type(processor).__name__}, not a vision-language processor "
            "with a tokenizer and an image processor (is it a vision-language model?)"
        )
    with_pad_token(processor.tokenizer)
    return processor


def answer_prefix(rendered_probe: str, generation_prompt: str) -> str:
    """What the template's generation prompt writes after the assistant header that its rendered
    assistant turns lack (Gemma 4's empty thought channel, ``<|channel>thought\\n<channel|>``, which
    its template adds to the prompt when thinking is off and strips from answers), read from a
    one-question conversation rendered with a :data:`~maugpt.data.chat.MARKED_PROBE` answer and the
    same question's prompt; empty when the prompt is the conversation's text before the answer."""
    before = rendered_probe.split(ANSWER_START)[0]
    return generation_prompt[len(before) :] if generation_prompt.startswith(before) else ""


def stop_tokens(folder: str, tokenizer) -> list[str]:
    """The tokens the model's ``generation_config.json`` stops on (e.g. Gemma-3's ``<end_of_turn>``)."""
    from transformers import GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:  # no generation config: the tokenizer's EOS is the only stop
        return []
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return [tokenizer.convert_ids_to_tokens(i) for i in ids]


def expanded(spans: list[tuple[int, int]], replacements: list[dict]) -> list[tuple[int, int]]:
    """Character ``spans`` of the rendered text moved past the image placeholders the processor
    expanded before them (``replacements``: its ``text_replacement_offsets`` of that text)."""
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]  # new_span counts earlier expansions
    return [tuple(c + gained[bisect.bisect_right(ends, c)] for c in span) for span in spans]
