"""Evaluation: MAU-Set scores and tables (`mauset`), MMAD scoring with the official protocol (`mmad`),
the LLM judge (`judge`) and what test runs share (`run`)."""
from maugpt.evaluation.mmad import MMADQuestion, MMADScores, extract_letter, load_questions, match_predictions, score
from maugpt.evaluation.run import read_jsonl

__all__ = ["MMADQuestion", "MMADScores", "extract_letter", "load_questions", "match_predictions", "read_jsonl",
           "score"]
