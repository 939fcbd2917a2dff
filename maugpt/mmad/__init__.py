"""MMAD (the paper's Table 5) in one place: the questions and their official scoring (`scoring`),
the official query scripts' prompts (`prompts`) and the prompt data module (`data`)."""

from __future__ import annotations

from maugpt.mmad.scoring import MMADQuestion, MMADScores, extract_letter, load_questions, match_predictions, score

__all__ = [
    "MMADDataModule",
    "MMADQuestion",
    "MMADScores",
    "extract_letter",
    "load_questions",
    "match_predictions",
    "score",
]


def __getattr__(name: str):
    # The data module pulls in Lightning and transformers; scoring predictions does not need them.
    if name == "MMADDataModule":
        from maugpt.mmad.data import MMADDataModule

        return MMADDataModule
    raise AttributeError(f"module 'maugpt.mmad' has no attribute {name!r}")
