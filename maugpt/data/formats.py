"""How the data modules turn images and text into model inputs: the :class:`ChatFormat` protocol,
MAU-GPT's own format and the choice between it and a pretrained VLM's processor.

The data modules (MAU-Set, MMAD, an image folder) decide *what* is asked about which images; a
format decides how that becomes a batch, so no data module branches on the model:

* :class:`EncoderFormat`: MAU-GPT's own, a timm encoder's transform (:mod:`maugpt.data.geometry`)
  and the LLM tokenizer's chat template, each ``<image>`` expanded to the encoder's
  ``image_tokens`` slots (:mod:`maugpt.data.chat`); batches by :mod:`maugpt.data.collate`.
* :class:`~maugpt.data.processor.ProcessorFormat`: a pretrained vision-language model's own
  ``AutoProcessor`` (its image processor, chat template and image-token expansion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from maugpt.data.chat import ChatEncoder
from maugpt.data.collate import collate, collate_prompts
from maugpt.data.geometry import ImageTransform
from maugpt.tokenizer import load_tokenizer


class ChatFormat(Protocol):
    """Examples and batches of one model family.

    ``images`` prepares one example's images (in the loader workers), ``prompt``/``prompt_text``
    make a generation prompt and ``conversation`` a supervised one (the model-input part of an
    example: the data module adds ``meta``, ``valid`` and ``skipped``); ``collate_prompts``
    (left-padded) and ``collate`` (right-padded, with ``labels``) batch them, and ``normalize``
    finishes a batch on the device it was moved to.
    """

    tokenizer: Any
    pad_token_id: int

    def images(self, images: Sequence[Image.Image]) -> Any: ...

    def blank(self, count: int) -> Any: ...

    def prompt(self, question: str, images: Any) -> dict: ...

    def prompt_text(self, content: str, images: Any, system: str | None = None) -> dict: ...

    def conversation(self, pairs: list[tuple[str, str]], images: Any) -> dict: ...

    def collate_prompts(self, examples: list[dict]) -> dict: ...

    def collate(self, examples: list[dict]) -> dict: ...

    def normalize(self, batch: dict) -> dict: ...


class EncoderFormat:
    """MAU-GPT's format: ``uint8`` images from the encoder's transform, token ids from the LLM
    tokenizer's template (see :class:`~maugpt.data.chat.ChatEncoder` for the arguments)."""

    def __init__(
        self,
        tokenizer: str,
        vision_encoder: str,
        image_tokens: int,
        max_length: int = 2048,
        system_prompt: str | None = None,
        resize: str = "torch",
    ) -> None:
        self.tokenizer = load_tokenizer(tokenizer)  # with a padding token
        self.chat = ChatEncoder(self.tokenizer, image_tokens, max_length, system_prompt=system_prompt)
        self.transform = ImageTransform(vision_encoder, resize=resize)
        self.pad_token_id = self.tokenizer.pad_token_id

    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``uint8 (images, H, W, 3)``."""
        return torch.stack([self.transform(image) for image in images])

    def blank(self, count: int) -> torch.Tensor:
        return torch.zeros(count, *self.transform.size, 3, dtype=torch.uint8)

    def prompt(self, question: str, images: torch.Tensor) -> dict:
        return {"input_ids": self.chat.prompt(question, images=images.shape[0]), "pixel_values": images}

    def prompt_text(self, content: str, images: torch.Tensor, system: str | None = None) -> dict:
        return {"input_ids": self.chat.prompt_text(content, system), "pixel_values": images}

    def conversation(self, pairs: list[tuple[str, str]], images: torch.Tensor) -> dict:
        encoded = self.chat.encode(pairs, images=images.shape[0])
        return {
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "condition_end": encoded.condition_end,
            "pixel_values": images,
        }

    def collate_prompts(self, examples: list[dict]) -> dict:
        return collate_prompts(examples, self.pad_token_id)

    def collate(self, examples: list[dict]) -> dict:
        return collate(examples, self.pad_token_id)

    def normalize(self, batch: dict) -> dict:
        if isinstance(batch.get("pixel_values"), torch.Tensor) and batch["pixel_values"].dtype == torch.uint8:
            batch["pixel_values"] = self.transform.normalize(batch["pixel_values"])
        return batch


def chat_format(
    tokenizer: str | None,
    vision_encoder: str | None,
    image_tokens: int | None,
    processor: str | None = None,
    max_length: int = 2048,
    system_prompt: str | None = None,
    resize: str = "torch",
    processor_kwargs: dict | None = None,
) -> ChatFormat:
    """The format of the data's model: ``processor`` (a pretrained VLM's folder or hub id) gives
    :class:`~maugpt.data.processor.ProcessorFormat`; otherwise ``tokenizer``, ``vision_encoder`` and
    ``image_tokens`` give :class:`EncoderFormat`. ``processor_kwargs`` go to ``AutoProcessor``."""
    if processor is not None:
        from maugpt.data.processor import ProcessorFormat

        return ProcessorFormat(processor, max_length, system_prompt, processor_kwargs=processor_kwargs)
    missing = [
        name
        for name, value in (
            ("tokenizer", tokenizer),
            ("vision_encoder", vision_encoder),
            ("image_tokens", image_tokens),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"the data needs either processor (a pretrained VLM's) or tokenizer, vision_encoder and "
            f"image_tokens (MAU-GPT's); missing: {missing} (the CLI links them from the model)"
        )
    return EncoderFormat(tokenizer, vision_encoder, image_tokens, max_length, system_prompt, resize)
