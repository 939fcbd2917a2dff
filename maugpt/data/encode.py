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

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

IGNORE_INDEX = -100
_START, _END = "\ue000", "\ue001"  # private-use characters that mark answers inside the rendered chat


def image_transform(vision_encoder: str, pad_to_square: bool = True):
    """The evaluation transform of a timm encoder: from a hub name's pretrained config, or from a
    local folder's ``config.json`` (timm's save format); no weights are read.

    ``pad_to_square`` pads with the mean colour first (as LLaVA-1.5 does), so that a center crop
    never cuts off a defect at the edge of an elongated image.
    """
    folder = Path(vision_encoder)
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        pretrained_cfg = config.get("pretrained_cfg", config)
    else:
        pretrained = timm.models.get_pretrained_cfg(vision_encoder)
        if pretrained is None:
            raise ValueError(f"vision_encoder {vision_encoder!r} is neither a folder with config.json nor a timm "
                             "model name with a pretrained config")
        pretrained_cfg = pretrained.to_dict()
    data_config = resolve_data_config(pretrained_cfg=pretrained_cfg)
    transform = create_transform(**data_config, is_training=False)
    if not pad_to_square:
        return transform
    fill = tuple(int(255 * m) for m in data_config["mean"])

    def padded(image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        side = max(image.size)
        if image.width != image.height:
            square = Image.new("RGB", (side, side), fill)
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = square
        return transform(image)

    return padded


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
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
    """

    def __init__(self, tokenizer, image_tokens: int, max_length: int = 2048, image_token: str = "<image>",
                 system_prompt: str | None = None) -> None:
        self.tokenizer, self.image_tokens, self.max_length = tokenizer, image_tokens, max_length
        self.image_token, self.system_prompt = image_token, system_prompt
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id or \
                tokenizer(image_token, add_special_tokens=False).input_ids != [self.image_token_id]:
            raise ValueError(f"the tokenizer has no single token for {image_token!r}: add it as a special token")
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        self.turn_end = self._turn_end()

    def _turn_end(self) -> str:
        """What the template writes right after an answer (e.g. ``<|im_end|>\\n``)."""
        text = self.tokenizer.apply_chat_template(self._messages([("q", _START + "A" + _END)], 0), tokenize=False)
        after = text[text.index(_END) + 1:]
        return after.split(_START)[0] if _START in after else after

    def _messages(self, pairs: list[tuple[str, str]], images: int) -> list[dict]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for i, (question, answer) in enumerate(pairs):
            prefix = (self.image_token + "\n") * images if i == 0 else ""
            messages += [{"role": "user", "content": prefix + question}, {"role": "assistant", "content": answer}]
        return messages

    def _encode(self, pairs: list[tuple[str, str]], images: int) -> Encoded:
        marked = [(q, _START + a + _END) for q, a in pairs]
        text = self.tokenizer.apply_chat_template(self._messages(marked, images), tokenize=False)
        head, *pieces = text.split(_START)
        if len(pieces) != len(pairs):
            raise ValueError("the chat template dropped or altered assistant turns; cannot find the answers")
        parts, spans, length = [head], [], len(head)
        for piece in pieces:  # strip the markers, remembering where each answer (+ turn end) lies
            answer, rest = piece.split(_END, 1)
            spans.append((length, length + len(answer) + (len(self.turn_end) if rest.startswith(self.turn_end) else 0)))
            parts += [answer, rest]
            length += len(answer) + len(rest)
        clean_text = "".join(parts)
        encoding = self.tokenizer(clean_text, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels, condition_end, first_answer = [], [], None, spans[0][0]
        span_index = 0
        for token, (start, _) in zip(encoding.input_ids, encoding.offset_mapping):
            while span_index < len(spans) and start >= spans[span_index][1]:
                span_index += 1
            supervised = span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]
            if condition_end is None and start >= first_answer:
                condition_end = len(ids)
            if token == self.image_token_id:
                ids += [token] * self.image_tokens
                labels += [IGNORE_INDEX] * self.image_tokens
            else:
                ids.append(token)
                labels.append(token if supervised else IGNORE_INDEX)
        return Encoded(ids, labels, condition_end if condition_end is not None else len(ids))

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
                raise ValueError(f"max_length {self.max_length} leaves no room for an answer: {images} image(s) × "
                                 f"{self.image_tokens} tokens and the first question take {encoded.condition_end}")
            encoded = Encoded(encoded.input_ids[:self.max_length], encoded.labels[:self.max_length],
                              encoded.condition_end)
        return encoded


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Pad a list of encoded examples (right padding) into a batch.

    Returns ``input_ids``, ``labels`` (−100 on padding), ``attention_mask``, ``condition_mask``
    (the prompt tokens: images and first question), ``pixel_values (B, images, 3, H, W)``,
    ``valid`` (false for evaluation padding), ``meta`` (one dict per example) and ``skipped``
    (undecodable samples met since the previous batch).
    """
    length = max(len(e["input_ids"]) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.bool)
    condition = torch.zeros((batch, length), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.as_tensor(e["input_ids"])
        labels[i, :n] = torch.as_tensor(e["labels"])
        attention[i, :n] = True
        condition[i, :e["condition_end"]] = True
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "condition_mask": condition,
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "valid": torch.tensor([e.get("valid", True) for e in examples]),
            "meta": [e["meta"] for e in examples], "skipped": sum(e.get("skipped", 0) for e in examples)}
