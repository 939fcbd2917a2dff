"""Collation: examples to a batch. Generation prompts are left-padded (every prompt ends where
generation starts), supervised conversations right-padded with labels ``-100`` on the padding."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from maugpt.data.chat import IGNORE_INDEX


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
