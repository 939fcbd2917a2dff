#!/usr/bin/env python
"""Write the synthetic MAU-Set (QA shards) and synthetic caption shards for stage 1.

The same as ``maugpt synth``.
"""

from jsonargparse import auto_cli

from maugpt.commands import synth

if __name__ == "__main__":
    auto_cli(synth)
