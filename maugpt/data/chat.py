"""Chat encoding: a conversation (or a prompt) to token ids and labels, through the LLM tokenizer's
own chat template.

Each ``<image>`` placeholder (one per image: the query image, then any normal references)
becomes ``image_tokens`` slots that the model fills with projected visual features. Labels are
−100 everywhere except on answer tokens (and the end-of-turn marker that closes each answer, so
that the model learns to stop). The template's fixed parts are rendered and tokenized once
(:mod:`maugpt.data.chat_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maugpt.data.chat_cache import PROBES, SegmentTokenizer, TemplateRenderer

IGNORE_INDEX = -100


_START, _END = "\ue000", "\ue001"  # private-use characters that mark answers inside the rendered chat


MARKED_PROBE = _START + "A" + _END  # an answer as the probes of turn_end() render it


def mark(answer: str) -> str:
    """``answer`` between the markers that :func:`answer_spans` finds after the template has run."""
    return _START + answer + _END


def turn_end(rendered_probe: str) -> str:
    """What a chat template writes right after an answer (e.g. ``<|im_end|>\\n``), read from a
    conversation it rendered with one :data:`MARKED_PROBE` answer."""
    after = rendered_probe[rendered_probe.index(_END) + 1 :]
    return after.split(_START)[0] if _START in after else after


def answer_spans(text: str, answers: int, end: str, insert: str = "") -> tuple[str, list[tuple[int, int]]]:
    """``text`` (a rendered chat whose ``answers`` answers were :func:`mark`-ed) without the markers,
    and the character span of each answer and the turn ``end`` the template wrote after it; ``insert``
    goes right after each answer, inside its span (an end-of-sequence token a template leaves out)."""
    head, *pieces = text.split(_START)
    if len(pieces) != answers:
        raise ValueError("the chat template dropped or altered assistant turns; cannot find the answers")
    parts, spans, length = [head], [], len(head)
    for piece in pieces:
        answer, rest = piece.split(_END, 1)
        answer += insert
        spans.append((length, length + len(answer) + (len(end) if rest.startswith(end) else 0)))
        parts += [answer, rest]
        length += len(answer) + len(rest)
    return "".join(parts), spans


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (L,) int64
    labels: torch.Tensor  # (L,) int64, IGNORE_INDEX except on answer tokens
    condition_end: int  # tokens before this index form the prompt (images + first question)


class ChatEncoder:
    """Encodes QA pairs as one chat with the tokenizer's template, answers supervised.

    Args:
        tokenizer: a transformers tokenizer with a chat template and ``image_token`` as one token.
        image_tokens: visual-token slots per image.
        max_length: longest sequence; trailing QA pairs are dropped to fit, and a single pair
            that does not fit is cut inside its answer, never before it.
        image_token: the placeholder string in the tokenizer's vocabulary.
        system_prompt: optional system message before the first turn.
        cache: render the template from cached skeletons and tokenize cached pieces between
            special tokens (:mod:`maugpt.data.chat_cache`; exact, checked at start-up).
    """

    def __init__(
        self,
        tokenizer,
        image_tokens: int,
        max_length: int = 2048,
        image_token: str = "<image>",
        system_prompt: str | None = None,
        cache: bool = True,
    ) -> None:
        self.tokenizer, self.image_tokens, self.max_length = tokenizer, image_tokens, max_length
        self.image_token, self.system_prompt = image_token, system_prompt
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if (
            self.image_token_id is None
            or self.image_token_id == tokenizer.unk_token_id
            or tokenizer(image_token, add_special_tokens=False).input_ids != [self.image_token_id]
        ):
            raise ValueError(f"the tokenizer has no single token for {image_token!r}: add it as a special token")
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        self.turn_end = self._turn_end()
        probes = (
            [
                self.tokenizer.apply_chat_template(self._messages([(q, a)], 1), tokenize=False)
                for q, a in zip(PROBES, reversed(PROBES))
            ]
            if cache
            else []
        )
        self.renderer = TemplateRenderer(tokenizer, enabled=cache)
        self.segments = SegmentTokenizer(tokenizer, probes=probes, enabled=cache)

    def _turn_end(self) -> str:
        """What the template writes right after an answer (e.g. ``<|im_end|>\\n``)."""
        return turn_end(self.tokenizer.apply_chat_template(self._messages([("q", MARKED_PROBE)], 0), tokenize=False))

    def _messages(self, pairs: list[tuple[str, str]], images: int) -> list[dict]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for i, (question, answer) in enumerate(pairs):
            prefix = (self.image_token + "\n") * images if i == 0 else ""
            messages += [{"role": "user", "content": prefix + question}, {"role": "assistant", "content": answer}]
        return messages

    def _encode(self, pairs: list[tuple[str, str]], images: int) -> Encoded:
        marked = [(q, mark(a)) for q, a in pairs]
        text = self.renderer.render(self._messages(marked, images))
        clean_text, spans = answer_spans(text, len(pairs), self.turn_end)
        ids, starts = self.segments.encode(clean_text)
        span_starts, span_ends = np.asarray(spans, dtype=np.int64).T
        inside = np.searchsorted(span_starts, starts, side="right") - 1
        supervised = (inside >= 0) & (starts < span_ends[np.maximum(inside, 0)])
        labels = np.where(supervised, ids, IGNORE_INDEX)
        # Each image placeholder becomes image_tokens slots.
        repeats = np.where(ids == self.image_token_id, self.image_tokens, 1)
        prompt_tokens = int(np.searchsorted(starts, span_starts[0]))  # text tokens before the first answer
        condition_end = int(repeats[:prompt_tokens].sum())
        labels = np.where(np.repeat(ids == self.image_token_id, repeats), IGNORE_INDEX, np.repeat(labels, repeats))
        return Encoded(torch.from_numpy(np.repeat(ids, repeats)), torch.from_numpy(labels), condition_end)

    def prompt(self, question: str, images: int = 1) -> torch.Tensor:
        """Token ids of a generation prompt: the images and one question, then the assistant header."""
        return self.prompt_text((self.image_token + "\n") * images + question)

    def prompt_text(self, content: str, system: str | None = None) -> torch.Tensor:
        """Token ids of a generation prompt whose user turn is ``content``, with its ``<image>``
        placeholders where the images go (e.g. between MMAD's instructions), then the assistant
        header; ``system`` replaces the encoder's system prompt."""
        system = system or self.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        ids = self.segments.encode(
            self.renderer.render(messages + [{"role": "user", "content": content}], add_generation_prompt=True)
        )[0]
        return torch.from_numpy(np.repeat(ids, np.where(ids == self.image_token_id, self.image_tokens, 1)))

    def encode(self, pairs: list[tuple[str, str]], images: int = 1) -> Encoded:
        """Token ids and labels of ``pairs`` (question, answer) about ``images`` images."""
        if not pairs:
            raise ValueError("nothing to encode: no QA pairs")
        encoded = self._encode(pairs, images)
        while len(encoded.input_ids) > self.max_length and len(pairs) > 1:
            pairs = pairs[:-1]  # drop whole trailing QA pairs first
            encoded = self._encode(pairs, images)
        if len(encoded.input_ids) > self.max_length:
            if encoded.condition_end >= self.max_length:
                raise ValueError(
                    f"max_length {self.max_length} leaves no room for an answer: {images} image(s) × "
                    f"{self.image_tokens} tokens and the first question take {encoded.condition_end}"
                )
            encoded = Encoded(
                encoded.input_ids[: self.max_length], encoded.labels[: self.max_length], encoded.condition_end
            )
        return encoded
