"""Evaluation: MAU-Set scores and tables (`mauset`), MMAD scoring with the official protocol (`mmad`)."""
from maugpt.evaluation.mmad import (MMADQuestion, MMADScores, extract_letter, load_questions, match_predictions,
                                    read_predictions, score)

__all__ = ["MMADQuestion", "MMADScores", "extract_letter", "load_questions", "match_predictions", "read_predictions",
           "score"]
