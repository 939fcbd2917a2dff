#!/usr/bin/env python
"""Build the offline default's base models (tokenizer + tiny LM, tiny ViT) from synthetic shards.

The same as ``maugpt tiny-base``.
"""

from jsonargparse import auto_cli

from maugpt.commands import tiny_base

if __name__ == "__main__":
    auto_cli(tiny_base)
