#!/usr/bin/env python
"""LLM-judged accuracy of open-ended answers (Table 3) through an OpenAI-compatible endpoint.

The same as ``maugpt judge``.
"""

from jsonargparse import auto_cli

from maugpt.commands import judge

if __name__ == "__main__":
    auto_cli(judge)
