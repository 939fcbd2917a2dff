#!/usr/bin/env python
"""Build the offline default's base models (tokenizer + tiny LM, tiny ViT) from synthetic shards."""
from __future__ import annotations

import shutil
from pathlib import Path

from jsonargparse import auto_cli

from maugpt.tiny_base import make_tiny_base


def main(*, shards: Path, out: Path, seed: int = 0, vit_steps: int = 900, llm_steps: int = 150,
         vit_extra_images: int = 6000, overwrite: bool = False) -> None:
    """Train the tokenizer, build and briefly pretrain the tiny LM and ViT, save them in standard formats.

    Args:
        shards: the folder tools/synth_mauset.py wrote (with mauset/ and captions/).
        out: output folder: llm/ (transformers) and vision/ (timm) are written into it.
        seed: the seed of initialisation and pretraining.
        vit_steps: pretraining steps of the ViT (product and defect classification).
        llm_steps: pretraining steps of the LM (the synthetic questions and answers).
        vit_extra_images: procedural images of another seed added to the ViT's pretraining data.
        overwrite: replace llm/ and vision/ in a non-empty ``out``.
    """
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SystemExit(f"make_tiny_base: {out} is not empty; pass --overwrite true to replace llm/ and vision/")
        for name in ("llm", "vision"):
            shutil.rmtree(out / name, ignore_errors=True)
    paths = make_tiny_base(out, shards, seed=seed, vit_steps=vit_steps, llm_steps=llm_steps,
                           vit_extra_images=vit_extra_images)
    print(f"tiny base written: llm {paths['llm']}, vision {paths['vision']}")


if __name__ == "__main__":
    auto_cli(main)
