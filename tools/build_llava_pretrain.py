#!/usr/bin/env python
"""Convert LLaVA-Pretrain (blip_laion_cc_sbu_558k.json + images) into stage-1 caption shards.

The same as ``maugpt build-llava``.
"""

from jsonargparse import auto_cli

from maugpt.commands import build_llava

if __name__ == "__main__":
    auto_cli(build_llava)
