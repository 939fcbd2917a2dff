"""Test-time scores of generated answers: detection accuracy and ROUGE-L (summed over ranks)."""
from __future__ import annotations

import re

from torch import nn
from torchmetrics import SumMetric
from torchmetrics.text import ROUGEScore

_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}


def parse_true_false(answer: str) -> bool | None:
    """The first True/False (or yes/no) word of a free-text answer; None if there is none."""
    for word in re.findall(r"[a-z]+", answer.lower()):
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


class TestScores(nn.Module):
    """Detection accuracy on discriminative questions (unparsable answers count as wrong) and
    ROUGE-L F1 on open-ended ones; torchmetrics states, so ranks aggregate correctly."""

    def __init__(self) -> None:
        super().__init__()
        self.rouge = ROUGEScore(rouge_keys=("rougeL",))
        self.correct, self.total, self.unparsed = SumMetric(), SumMetric(), SumMetric()

    def add(self, meta: dict, answer: str) -> None:
        if meta["style"] == "discriminative":
            parsed = parse_true_false(answer)
            self.total.update(1.0)
            self.correct.update(float(parsed is not None and parsed == (meta["reference"] == "True")))
            self.unparsed.update(float(parsed is None))
        else:
            self.rouge.update(answer, meta["reference"])

    def compute(self) -> dict[str, float]:
        total = float(self.total.compute())
        results = {"detection_accuracy": float(self.correct.compute()) / total if total else float("nan"),
                   "detection_unparsed": float(self.unparsed.compute()),
                   "rougeL": float(self.rouge.compute()["rougeL_fmeasure"])}
        for metric in (self.rouge, self.correct, self.total, self.unparsed):
            metric.reset()
        return results
