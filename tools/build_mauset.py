#!/usr/bin/env python
"""Build MAU-Set shards from the official releases of the seven public sources.

The same as ``maugpt build``.
"""

from jsonargparse import auto_cli

from maugpt.commands import build

if __name__ == "__main__":
    auto_cli(build)
