"""Caches that make chat encoding cheap without changing a single token id.

A conversation's text is mostly repeated pieces: the template's role headers, the few hundred
template questions, recurring answers. Two caches exploit that, each verified at start-up
against the uncached path, and again on every ``verify_every``-th real input, and switched off
(with a warning) where the tokenizer or template does not allow it:

* :class:`SegmentTokenizer` tokenizes the text between added tokens (``<|im_start|>``,
  ``<image>`` …) piece by piece, caching each piece. Hugging Face tokenizers split added tokens
  out before anything else, so the pieces tokenize independently (unless an added token strips
  its neighbours' whitespace; the check finds that).
* :class:`TemplateRenderer` renders a chat template once per conversation *shape* (the roles in
  order) with placeholders, then fills in the contents. Exact when the template copies each
  content verbatim (no trimming, no content-dependent branches); the check probes for both.
"""

from __future__ import annotations

import logging
import re

import numpy as np

log = logging.getLogger(__name__)

# Contents that expose templates which trim, escape or branch on what they are given.
PROBES = ["plain", " leading space", "trailing space ", "\nnewlines\n", "", "<b>&amp;</b> {{ x }}", "True"]


def same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether two ``(ids, starts)`` encodings are equal."""
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


class SegmentTokenizer:
    """``encode(text) → (ids, starts)``: token ids and each token's start offset in ``text``, as
    ``tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)`` gives them.

    Args:
        tokenizer: a transformers fast tokenizer.
        max_entries: pieces kept; the cache is emptied when full (a bound, not an LRU: the
            repeated pieces come back at once).
        probes: texts to compare against the uncached path at start-up.
        verify_every: compare every so many real inputs too (0: never).
        enabled: False always takes the uncached path (and skips the start-up check).
    """

    def __init__(
        self,
        tokenizer,
        max_entries: int = 200_000,
        probes: list[str] = (),
        verify_every: int = 1000,
        enabled: bool = True,
    ) -> None:
        self.backend = tokenizer.backend_tokenizer
        added = {token.content: index for index, token in tokenizer.added_tokens_decoder.items()}
        # each added token as a finished piece: its id at offset 0
        self.added = {t: (np.asarray([i], dtype=np.int64), np.zeros(1, dtype=np.int64)) for t, i in added.items()}
        self.pattern = (
            re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))) if added else None
        )
        self.max_entries, self.verify_every, self.calls = max_entries, verify_every, 0
        self.hits = self.misses = 0
        self.pieces: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.enabled = enabled and self.pattern is not None and all(self.agrees(text) for text in probes)
        if enabled and self.pattern is not None and not self.enabled:
            log.warning("token-segment cache off: tokenizing between added tokens changes the ids of this tokenizer")

    def uncached(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        encoding = self.backend.encode(text, add_special_tokens=False)
        return (
            np.asarray(encoding.ids, dtype=np.int64),
            np.asarray([start for start, _ in encoding.offsets], dtype=np.int64),
        )

    def agrees(self, text: str) -> bool:
        """Whether the cached path gives ``text`` the uncached ids and offsets."""
        return same(self.segmented(text), self.uncached(text))

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.enabled:
            return self.uncached(text)
        self.calls += 1
        encoded = self.segmented(text)
        if self.verify_every and self.calls % self.verify_every == 0:
            reference = self.uncached(text)
            if not same(encoded, reference):
                self.enabled = False
                log.warning("token-segment cache off: it changed the ids of %r", text[:200])
                return reference
        return encoded

    def segmented(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        pieces, offsets, position = [], [], 0  # the text as pieces and added tokens, in order
        for match in self.pattern.finditer(text):
            if match.start() > position:
                pieces.append(text[position : match.start()])
                offsets.append(position)
            pieces.append(match.group())
            offsets.append(match.start())
            position = match.end()
        if position < len(text):
            pieces.append(text[position:])
            offsets.append(position)
        if not pieces:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        missing = list(dict.fromkeys(p for p in pieces if p not in self.pieces and p not in self.added))
        self.misses += len(missing)
        self.hits += sum(p not in self.added for p in pieces) - len(missing)
        if len(self.pieces) + len(missing) > self.max_entries:
            self.pieces.clear()
        # one call into the tokenizer for every new piece of this text: its per-call cost dominates short pieces
        for piece, encoding in zip(missing, self.backend.encode_batch(missing, add_special_tokens=False)):
            self.pieces[piece] = (
                np.asarray(encoding.ids, dtype=np.int64),
                np.asarray([start for start, _ in encoding.offsets], dtype=np.int64),
            )
        parts = [self.pieces[p] if p in self.pieces else self.added[p] for p in pieces]
        ids = np.concatenate([ids for ids, _ in parts])
        lengths = [len(ids) for ids, _ in parts]
        starts = np.concatenate([starts for _, starts in parts]) + np.repeat(offsets, lengths)
        return ids, starts


class TemplateRenderer:
    """``render(messages, add_generation_prompt)``: what ``tokenizer.apply_chat_template(...,
    tokenize=False)`` returns, from a cached skeleton per conversation shape.

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        verify_every: compare every so many real renders with the template's own (0: never).
        enabled: False always renders with the template (and skips the start-up check).
    """

    def __init__(self, tokenizer, verify_every: int = 1000, enabled: bool = True) -> None:
        self.tokenizer, self.verify_every, self.calls = tokenizer, verify_every, 0
        self.skeletons: dict[tuple, tuple[list[str], bool]] = {}
        self.enabled = enabled
        if not enabled:
            return
        conversations = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": q}]
            for p in PROBES
            for q in reversed(PROBES)
        ]
        conversations += [[{"role": "system", "content": p}, *c] for p, c in zip(PROBES, conversations)]
        conversations += [c + c for c in conversations[: len(PROBES)]]
        self.enabled = all(self.filled(c, g) == self.reference(c, g) for c in conversations for g in (False, True))
        if not self.enabled:
            log.warning("chat-template cache off: this template does not copy message contents verbatim")

    def reference(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if not self.enabled:
            return self.reference(messages, add_generation_prompt)
        self.calls += 1
        text = self.filled(messages, add_generation_prompt)
        if self.verify_every and self.calls % self.verify_every == 0:
            reference = self.reference(messages, add_generation_prompt)
            if text != reference:
                self.enabled = False
                log.warning("chat-template cache off: its text differed from the template's for %r", messages[:2])
                return reference
        return text

    def filled(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The cached skeleton of this conversation's shape with its contents filled in."""
        shape = (tuple(m["role"] for m in messages), add_generation_prompt)
        skeleton = self.skeletons.get(shape)
        if skeleton is None:
            skeleton = self.skeletons[shape] = self._skeleton(messages, add_generation_prompt)
        parts, in_order = skeleton
        if not in_order:  # a template that moves or drops contents: render it for real
            return self.reference(messages, add_generation_prompt)
        out = [parts[0]]
        for message, part in zip(messages, parts[1:]):
            out += [message["content"], part]
        return "".join(out)

    def _skeleton(self, messages: list[dict], add_generation_prompt: bool) -> tuple[list[str], bool]:
        """The template's text around each content: ``n + 1`` literal parts for ``n`` messages."""
        marks = [f"\ue100{i}\ue101" for i in range(len(messages))]
        text = self.reference([{**m, "content": mark} for m, mark in zip(messages, marks)], add_generation_prompt)
        parts, rest = [], text
        for mark in marks:
            if rest.count(mark) != 1:
                return [], False
            head, rest = rest.split(mark)
            parts.append(head)
        parts.append(rest)
        return parts, True
