"""One answered question as a gallery entry: its scores, outcome and sort order, from a predictions row."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from maugpt.evaluation.run import read_text
from maugpt.report_html.template import DASH, ROUGE_CORRECT


@dataclass(kw_only=True)
class Answer:
    """One row of ``predictions.jsonl`` as the page shows it, whatever its benchmark and age."""

    qid: str  # the question's id across runs: "<key>#<qa_index>" (MAU-Set), "<image>#<index>" (MMAD)
    label: str  # the id as shown (older MAU-Set rows have no qa_index: their qid holds the question)
    image: str  # the image's id: the MAU-Set key or the MMAD image path
    domain: str
    task: str
    product: str
    style: str
    question: str
    reference: str
    prediction: str
    score: float | None  # higher is better, 0–1: 1/0 for right/wrong, ROUGE-L F1 for open answers
    outcome: str  # "correct", "incorrect" or "unscored"
    scores: str  # the per-answer scores as shown
    details: str = ""  # what else identifies the question (source, defect class, options)


def _number(value: object) -> float | None:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def _right_or_wrong(correct: object) -> tuple[float | None, str]:
    return (
        (1.0 if correct else 0.0, "correct" if correct else "incorrect")
        if isinstance(correct, bool)
        else (None, "unscored")
    )


def mauset_answer(row: dict) -> Answer:
    """A MAU-Set row; fields missing from older files are shown as "—" and leave the answer unscored."""
    key, index = str(row.get("key", "?")), row.get("qa_index")
    label = key if index is None else f"{key}#{index}"
    style = str(row.get("style") or DASH)
    if style == "discriminative":
        score, outcome = _right_or_wrong(row.get("correct"))
        verdict = row.get("verdict", DASH) or "unparsable"
        scores = f"score {DASH}" if outcome == "unscored" else f"parsed: {verdict} · {'right' if score else 'wrong'}"
    else:
        rouge = {k: _number(row.get(k)) for k in ("rouge1", "rouge2", "rougeL")}
        score = rouge["rougeL"]
        outcome = "unscored" if score is None else "correct" if score >= ROUGE_CORRECT else "incorrect"
        scores = (
            f"score {DASH}"
            if score is None
            else " · ".join(
                f"{name} {DASH if v is None else f'{v:.3f}'}"
                for name, v in zip(("ROUGE-1", "ROUGE-2", "ROUGE-L"), rouge.values())
            )
        )
    defect = "normal" if row.get("is_anomalous") is False else row.get("defect_class") or DASH
    details = f"{row.get('source') or DASH} · defect: {defect}" + (" (generic)" if row.get("generic_defect") else "")
    # Older rows have no qa_index: the question's text tells a record's questions apart instead.
    return Answer(
        qid=label if index is not None else f"{key}#{row.get('question', '')}",
        label=label,
        image=key,
        domain=str(row.get("domain") or DASH),
        task=str(row.get("task") or DASH),
        product=str(row.get("product") or DASH),
        style=style,
        question=str(row.get("question", DASH)),
        reference=str(row.get("reference", DASH)),
        prediction=str(row.get("prediction", DASH)),
        score=score,
        outcome=outcome,
        scores=scores,
        details=details,
    )


def mmad_answer(row: dict) -> Answer:
    """An MMAD row: the dataset as domain, the subtask as task, the image path's product folder."""
    image, index = str(row.get("image", "?")), row.get("question_index")
    options = row.get("options") if isinstance(row.get("options"), dict) else {}
    letter = row.get("correct_letter")
    score, outcome = _right_or_wrong(row.get("correct"))
    scores = (
        f"score {DASH}" if score is None else f"letter: {row.get('letter') or DASH} · {'right' if score else 'wrong'}"
    )
    if row.get("likelihood_letter"):
        right = "right" if row.get("likelihood_correct") else "wrong"
        scores += f" · likelihood: {row['likelihood_letter']} ({right})"
    parts = image.split("/")  # "MVTec-AD/bottle/test/…": the product is the second folder
    return Answer(
        qid=f"{image}#{index}",
        label=f"{image}#{index}",
        image=image,
        domain=str(row.get("dataset") or DASH),
        task=str(row.get("subtask") or DASH),
        product=parts[1] if len(parts) > 2 else DASH,
        style="multiple choice",
        question=str(row.get("question", DASH)),
        reference=f"{letter}. {options.get(letter, DASH)}" if letter else DASH,
        prediction=str(row.get("answer", DASH)) + (f"  [error: {row['error']}]" if row.get("error") else ""),
        score=score,
        outcome=outcome,
        scores=scores,
        details="  ".join(f"{k}. {v}" for k, v in options.items()),
    )


def answer(row: dict) -> Answer:
    """The row's :class:`Answer`: MMAD when it has multiple-choice fields, MAU-Set otherwise."""
    return mmad_answer(row) if "options" in row or "correct_letter" in row else mauset_answer(row)


def worst_first(answers: list[Answer]) -> list[Answer]:
    """Wrong before right, open answers by ascending ROUGE-L, unscored last; stable otherwise."""
    return sorted(answers, key=lambda a: (a.score is None, a.score or 0.0))


def read_rows(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines file and the number of lines that are not one (skipped:
    a page shows what it can rather than nothing)."""
    rows, bad = [], 0
    for line in read_text(path, errors="replace").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad
