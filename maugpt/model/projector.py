"""The trainable projector from vision features to the LLM's embedding space."""

from __future__ import annotations

import re

from torch import nn


def build_projector(kind: str, vision_dim: int, llm_dim: int) -> nn.Module:
    """``linear`` or ``mlp<N>x_gelu`` (LLaVA-1.5's default is ``mlp2x_gelu``: Linear, GELU, Linear)."""
    if kind == "linear":
        return nn.Linear(vision_dim, llm_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"projector must be 'linear' or 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu'), got {kind!r}")
    layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(llm_dim, llm_dim)]
    return nn.Sequential(*layers)
