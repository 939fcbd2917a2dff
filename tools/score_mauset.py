#!/usr/bin/env python
"""Score MAU-Set predictions again (Tables 2 and 4), e.g. with other metric settings or for another model.

The same as ``maugpt score-mauset``.
"""

from jsonargparse import auto_cli

from maugpt.commands import score_mauset

if __name__ == "__main__":
    auto_cli(score_mauset)
