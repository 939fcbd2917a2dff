"""Evaluation: MMAD scoring with the official protocol (MAU-Set tables and the LLM judge to come)."""
from maugpt.evaluation.mmad import (MMADQuestion, MMADScores, extract_letter, load_questions, match_predictions,
                                    read_predictions, score)

__all__ = ["MMADQuestion", "MMADScores", "extract_letter", "load_questions", "match_predictions", "read_predictions",
           "score"]
