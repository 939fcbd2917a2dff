"""From a decoded sample to model inputs: image tensors, chat-formatted token ids, labels, batches.

Text goes through the LLM tokenizer's own chat template. Each ``<image>`` placeholder (one per
image: the query image, then any normal references) becomes ``image_tokens`` slots that the model
fills with projected visual features. Labels are −100 everywhere except on answer tokens (and
the end-of-turn marker that closes each answer, so that the model learns to stop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch.nn.utils.rnn import pad_sequence

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


class ImageTransform:
    """A timm encoder's evaluation transform, split where it is cheapest to run.

    The geometry (pad to square, resize, center crop) runs in the loader workers and yields
    ``uint8`` tensors ``(H, W, 3)``; :meth:`normalize` turns a batch into the encoder's
    normalised floats on the accelerator, after the transfer (a quarter of the bytes to move,
    and no float arithmetic in the workers).

    Args:
        vision_encoder: a timm model name with a pretrained config, or a local folder whose
            ``config.json`` holds one (timm's save format); no weights are read.
        pad_to_square: pad with the mean colour first (as LLaVA-1.5 does), so that a center crop
            never cuts off a defect at the edge of an elongated image.
        resize: ``torch`` resizes with PyTorch's antialiased uint8 kernels, PIL-compatible (its
            pixels differ from PIL's by at most 1 of 255, on a fraction of a percent of them) and
            ~4× faster than ``pil``, which runs timm's own transform. ``torch`` applies to timm's
            usual evaluation geometry (resize the short side, center crop); any other falls
            back to ``pil``.
    """

    def __init__(self, vision_encoder: str, pad_to_square: bool = True, resize: str = "torch") -> None:
        if resize not in ("torch", "pil"):
            raise ValueError(f"resize must be 'torch' or 'pil', got {resize!r}")
        folder = Path(vision_encoder)
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            pretrained_cfg = config.get("pretrained_cfg", config)
        else:
            pretrained = timm.models.get_pretrained_cfg(vision_encoder)
            if pretrained is None:
                raise ValueError(
                    f"vision_encoder {vision_encoder!r} is neither a folder with config.json nor a "
                    "timm model name with a pretrained config"
                )
            pretrained_cfg = pretrained.to_dict()
        data_config = resolve_data_config(pretrained_cfg=pretrained_cfg)
        full = create_transform(**data_config, is_training=False)
        # Everything before ToTensor/Normalize is PIL geometry.
        self.geometry = [
            t for t in full.transforms if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")
        ]
        self.mean = torch.tensor(data_config["mean"]).view(3, 1, 1) * 255
        self.std = torch.tensor(data_config["std"]).view(3, 1, 1) * 255
        self.size = tuple(data_config["input_size"][1:])
        self.fill = tuple(int(255 * m) for m in data_config["mean"]) if pad_to_square else None
        self.fast = fast_geometry(self.geometry) if resize == "torch" else None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.fill is not None and image.width != image.height:
            side = max(image.size)
            square = Image.new("RGB", (side, side), self.fill)
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = square
        if self.fast is not None:
            return self.fast(torch.from_numpy(np.array(image)))
        for step in self.geometry:
            image = step(image)
        return torch.from_numpy(np.array(image))  # (H, W, 3): contiguous, so batching is one memcpy

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8 (…, H, W, 3)`` → the encoder's normalised ``float32 (…, 3, H, W)``, on ``pixels``' device."""
        mean, std = self.mean.to(pixels.device), self.std.to(pixels.device)
        return ((pixels.movedim(-1, -3).float() - mean) / std).contiguous()


@dataclass(frozen=True)
class ResizeCrop:
    """torchvision's ``Resize(short_side)`` then ``CenterCrop(crop)`` on a ``uint8 (H, W, 3)`` tensor,
    with the same output sizes and crop offsets and antialiased kernels (PIL-compatible). Returns
    a view ``(crop_h, crop_w, 3)``, possibly strided."""

    short_side: int
    mode: str  # "bicubic" or "bilinear"
    crop: tuple[int, int]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[:2]
        short, long = min(h, w), max(h, w)
        new_short, new_long = self.short_side, int(self.short_side * long / short)
        size = (new_long, new_short) if w <= h else (new_short, new_long)
        if size != (h, w):
            # (1, 3, H, W) viewed channels-last: the layout PyTorch's fast uint8 kernels want
            chw = pixels.permute(2, 0, 1).unsqueeze(0)
            pixels = F.interpolate(chw, size=size, mode=self.mode, antialias=True)[0].permute(1, 2, 0)
            h, w = size
        ch, cw = self.crop
        if ch > h or cw > w:
            raise ValueError(f"center crop {self.crop} is larger than the resized image {(h, w)}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return pixels[top : top + ch, left : left + cw]  # a view: collate's stack copies it once


def fast_geometry(geometry: list) -> ResizeCrop | None:
    """A :class:`ResizeCrop` equal to ``geometry`` when it is timm's usual [Resize(int), CenterCrop]."""
    if [type(t).__name__ for t in geometry] != ["Resize", "CenterCrop"]:
        return None
    resize, crop = geometry
    mode = getattr(resize.interpolation, "value", resize.interpolation)
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    if size is None or mode not in ("bicubic", "bilinear") or resize.max_size is not None:
        return None
    crop_size = (crop.size, crop.size) if isinstance(crop.size, int) else tuple(crop.size)
    return ResizeCrop(size, mode, crop_size)


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


def collate_prompts(examples: list[dict], pad_token_id: int) -> dict:
    """Left-pad generation prompts into a batch (new tokens then follow every prompt directly).

    Returns ``input_ids``, ``attention_mask``, ``condition_mask`` (the whole prompt),
    ``pixel_values``, ``valid``, ``meta`` and ``skipped`` as :func:`collate`.
    """
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.bool)
    for i, e in enumerate(examples):
        input_ids[i, length - len(e["input_ids"]) :] = e["input_ids"]
        attention[i, length - len(e["input_ids"]) :] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "condition_mask": attention.clone(),
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "valid": torch.tensor([e.get("valid", True) for e in examples]),
        "meta": [e["meta"] for e in examples],
        "skipped": sum(e.get("skipped", 0) for e in examples),
    }


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Pad a list of encoded examples (right padding) into a batch.

    Returns ``input_ids``, ``labels`` (−100 on padding), ``attention_mask``, ``condition_mask``
    (the prompt tokens: images and first question), ``pixel_values`` (``uint8 (B, images, H, W, 3)``;
    the DataModule turns it into normalised ``float (B, images, 3, H, W)`` on the device), ``valid``
    (false for evaluation padding), ``meta`` (one dict per example) and ``skipped`` (undecodable
    samples met since the previous batch).
    """
    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    input_ids = pad_sequence([e["input_ids"] for e in examples], batch_first=True, padding_value=pad_token_id)
    labels = pad_sequence([e["labels"] for e in examples], batch_first=True, padding_value=IGNORE_INDEX)
    positions = torch.arange(input_ids.shape[1])
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": positions < lengths[:, None],
        "condition_mask": positions < torch.tensor([e["condition_end"] for e in examples])[:, None],
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "valid": torch.tensor([e.get("valid", True) for e in examples]),
        "meta": [e["meta"] for e in examples],
        "skipped": sum(e.get("skipped", 0) for e in examples),
    }
