#!/usr/bin/env python
"""Print the statistics table of a shard folder and a few decoded samples.

The same as ``maugpt inspect``.
"""

from jsonargparse import auto_cli

from maugpt.commands import inspect_shards

if __name__ == "__main__":
    auto_cli(inspect_shards)
