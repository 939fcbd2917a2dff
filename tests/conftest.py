"""Shared fixtures: tiny transformers models from config, a small synthetic MAU-Set, a tokenizer
trained on it and a timm data config (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

SMALL = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
)


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


# -- data and base-model fixtures shared by tests/data and tests/training --------------------------
@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    from maugpt.mauset.synthetic import build_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    build_synthetic(out, images=56, seed=0, image_size=40, test=0.25, val=0.25, progress=False, maxcount=6, captions=14)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(synthetic_dir, tmp_path_factory):
    from maugpt.data.shards import iter_samples
    from maugpt.tokenizer import save_tokenizer, train_tokenizer

    texts = [
        qa[k]
        for split in ("train", "val", "test")
        for s in iter_samples(synthetic_dir / "mauset" / split)
        for qa in s["json"]["qa"]
        for k in ("question", "answer")
    ]
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(texts + ["user assistant system"] * 20, vocab_size=600), folder)
    return folder


@pytest.fixture(scope="session")
def vision_dir(tmp_path_factory):
    """A timm encoder folder as saved locally: config.json with its pretrained_cfg (no weights needed)."""
    folder = tmp_path_factory.mktemp("vision")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_tiny_patch16_224",
                "num_classes": 0,
                "pretrained_cfg": {
                    "input_size": [3, 32, 32],
                    "interpolation": "bicubic",
                    "crop_pct": 1.0,
                    "crop_mode": "center",
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5],
                },
            }
        )
    )
    return folder


@pytest.fixture(scope="session")
def tiny_base(synthetic_dir, tmp_path_factory):
    from maugpt.tiny_base import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("base"), synthetic_dir, vit_steps=2, llm_steps=2, vit_extra_images=14)


# -- pretrained vision-language models: shrunk published files (tests/fixtures/vlm), random weights --
VLM_FIXTURES = Path(__file__).parent / "fixtures" / "vlm"
VLM_FAMILIES = ("llava-1.5", "qwen2.5-vl", "internvl", "gemma-3", "smolvlm", "qwen3-vl", "gemma-4", "internvl3.5")


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """``tiny_vlm(family)``: a folder holding the family's fixture files and random weights built
    from its config.json (seed 0), saved as ``save_pretrained`` does: what ``from_pretrained`` reads."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            folder = tmp_path_factory.mktemp(family)
            shutil.copytree(VLM_FIXTURES / family, folder, dirs_exist_ok=True)
            torch.manual_seed(0)
            AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
            built[family] = folder
        return built[family]

    return build
