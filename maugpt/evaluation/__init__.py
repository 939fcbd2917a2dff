"""Evaluation on MAU-Set: scores and the paper's tables (`mauset`), the True/False parser
(`true_false`), the LLM judge (`judge`, over the bounded HTTP transport `http`) and what test runs
share (`run`). MMAD has its own package, :mod:`maugpt.mmad`."""

from maugpt.evaluation.run import read_jsonl

__all__ = ["read_jsonl"]
