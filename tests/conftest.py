"""Shared fixtures: tiny transformers models built from config (no downloads)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             pad_token_id=0, bos_token_id=None, eos_token_id=None)


def tiny_causal_lm(arch: str = "qwen2", dtype: torch.dtype = torch.float64, seed: int = 0):
    """A 2-layer causal LM of the named architecture, random weights, eval mode."""
    torch.manual_seed(seed)
    config = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch](**SMALL)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(dtype).eval()


def randomize_adapters(model: torch.nn.Module, std: float = 0.2, seed: int = 1) -> None:
    """Give every adapter tensor random values (fresh adapters add exactly zero, which hides bugs)."""
    from maugpt.adapters import adapter_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in layer.adapter_parameters().values():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


@pytest.fixture
def qwen2():
    return tiny_causal_lm("qwen2")
