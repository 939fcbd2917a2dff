"""MMAD scoring with the official protocol (the paper's Table 5; ../shared/notes/mmad.md).

``mmad.json`` maps each query image (its path under the data root; the first component is the
source dataset) to a conversation of multiple-choice questions. Answers are scored per (source
dataset, subtask): Anomaly Detection as balanced accuracy over normal (key contains ``good``) and
anomalous images, every other subtask as accuracy; Object Structure and Object Details merge into
Object Analysis, giving 7 subtasks. A row is the mean of its dataset's subtasks; the headline is
the mean of the rows.

Unparsable answers count as wrong by default. ``unparsable="official"`` reproduces the official
summary instead: such answers are dropped, except that the record right after a dropped one is
never checked (the official script deletes from the list it is iterating over), so an unparsable
answer that follows another stays and counts as wrong.
"""
from __future__ import annotations

import difflib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SUBTASKS = ("Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
            "Defect Analysis", "Object Classification", "Object Analysis")
QUESTION_TYPES = {**{t: t for t in SUBTASKS[:-1]}, "Object Structure": "Object Analysis",
                  "Object Details": "Object Analysis"}
_LETTER = re.compile(r"\b([A-E])\b")


@dataclass(frozen=True)
class MMADQuestion:
    """One multiple-choice question of ``mmad.json``."""

    image: str  # the mmad.json key: the query image's path under the data root
    index: int  # position in the image's conversation
    question: str
    options: dict[str, str]  # letter → option text, in the file's order
    answer: str  # the correct letter
    subtask: str  # one of SUBTASKS (Object Structure/Details already merged)

    @property
    def dataset(self) -> str:
        return self.image.split("/", 1)[0]

    @property
    def normal(self) -> bool:
        return "good" in self.image  # the official rule: case-sensitive substring of the key


def load_questions(path: str | Path) -> list[MMADQuestion]:
    """Every question of ``mmad.json``; a malformed entry raises naming its key and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMAD question file {path} does not exist (expected the official mmad.json)")
    entries = json.loads(path.read_text())
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected one JSON object keyed by image path, got {type(entries).__name__}")
    questions = []
    for key, entry in entries.items():
        conversation = entry.get("conversation") if isinstance(entry, dict) else None
        if not isinstance(conversation, list) or not conversation:
            raise ValueError(f"{path}: entry {key!r} needs a non-empty 'conversation' list")
        for index, q in enumerate(conversation):
            where = f"{path}: entry {key!r}, question {index}"
            for field, kind in (("Question", str), ("Options", dict), ("Answer", str), ("type", str)):
                if not isinstance(q.get(field), kind):
                    raise ValueError(f"{where}: field {field!r} must be a {kind.__name__}, got {q.get(field)!r}")
            if q["type"] not in QUESTION_TYPES:
                raise ValueError(f"{where}: field 'type' is {q['type']!r}; expected one of {sorted(QUESTION_TYPES)}")
            if q["Answer"] not in q["Options"]:
                raise ValueError(f"{where}: field 'Answer' {q['Answer']!r} is not one of the options "
                                 f"{sorted(q['Options'])}")
            questions.append(MMADQuestion(key, index, q["Question"], dict(q["Options"]), q["Answer"],
                                          QUESTION_TYPES[q["type"]]))
    return questions


def extract_letter(response: str, options: dict[str, str], last: bool = True) -> str | None:
    """The official answer extraction: the last (or first) standalone letter A–E of the response;
    without one, the letter of the option text closest to the response (difflib). None for an
    empty response."""
    found = _LETTER.findall(response)
    if found:
        return found[-1] if last else found[0]
    if not response.strip() or not options:
        return None
    closest = difflib.get_close_matches(response, list(options.values()), n=1, cutoff=0.0)
    return next(letter for letter, text in options.items() if text == closest[0])


def match_predictions(questions: list[MMADQuestion], predictions: list[dict]) -> list[tuple[MMADQuestion, str]]:
    """Pair each prediction with its question, in the predictions' order.

    A prediction is ``{"image", "question_index" | "question", "answer"}``. Unknown images or
    questions, duplicates and unanswered questions raise, listing a few with their counts.
    """
    by_index = {(q.image, q.index): q for q in questions}
    by_text = {(q.image, q.question): q for q in questions}
    pairs, unknown, seen, duplicates = [], [], set(), []
    for line, p in enumerate(predictions, 1):
        if not isinstance(p.get("answer"), str) or not isinstance(p.get("image"), str):
            raise ValueError(f"prediction {line}: needs string fields 'image' and 'answer', got {sorted(p)}")
        if "question_index" in p:
            q = by_index.get((p["image"], p["question_index"]))
        else:
            q = by_text.get((p["image"], p.get("question")))
        if q is None:
            unknown.append(f"line {line}: {p['image']} / {p.get('question_index', p.get('question'))!r}")
            continue
        if (q.image, q.index) in seen:
            duplicates.append(f"line {line}: {q.image} #{q.index}")
            continue
        seen.add((q.image, q.index))
        pairs.append((q, p["answer"]))
    missing = [f"{q.image} #{q.index}" for q in questions if (q.image, q.index) not in seen]
    problems = [(name, items) for name, items in (("unknown", unknown), ("duplicate", duplicates),
                                                  ("unanswered", missing)) if items]
    if problems:
        raise ValueError("predictions do not match the questions: " + "; ".join(
            f"{len(items)} {name} (e.g. {', '.join(items[:3])})" for name, items in problems))
    return pairs


@dataclass
class MMADScores:
    """Accuracy in % per source dataset and subtask, their means, and how answers were handled."""

    table: dict[str, dict[str, float]]  # dataset → subtask → accuracy %
    unparsable: int
    dropped: int  # records left out (official handling only)
    handling: str

    def row_average(self, dataset: str) -> float:
        values = list(self.table[dataset].values())
        return sum(values) / len(values)

    def subtask_average(self, subtask: str) -> float:
        values = [row[subtask] for row in self.table.values() if subtask in row]
        return sum(values) / len(values) if values else float("nan")

    @property
    def average(self) -> float:
        return sum(self.row_average(d) for d in self.table) / len(self.table)

    def markdown(self) -> str:
        """Table 5's layout: a row per source dataset, then the mean over datasets."""
        header = ["source dataset", *SUBTASKS, "average"]
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
        cell = lambda v: "—" if v != v else f"{v:.2f}"  # noqa: E731  (NaN: subtask absent)
        for dataset, row in sorted(self.table.items()):
            values = [row.get(s, float("nan")) for s in SUBTASKS]
            lines.append(f"| {dataset} | " + " | ".join(cell(v) for v in values) + f" | {self.row_average(dataset):.2f} |")
        means = [self.subtask_average(s) for s in SUBTASKS]
        lines.append("| **average** | " + " | ".join(cell(v) for v in means) + f" | {self.average:.2f} |")
        lines.append(f"\nunparsable answers: {self.unparsable} ({self.handling}"
                     + (f"; {self.dropped} records dropped)" if self.handling == "official" else ")"))
        return "\n".join(lines)

    def csv(self) -> str:
        rows = ["dataset," + ",".join(SUBTASKS) + ",average"]
        for dataset, row in sorted(self.table.items()):
            rows.append(",".join([dataset, *(f"{row[s]:.4f}" if s in row else "" for s in SUBTASKS),
                                  f"{self.row_average(dataset):.4f}"]))
        rows.append(",".join(["average", *(f"{self.subtask_average(s):.4f}" for s in SUBTASKS), f"{self.average:.4f}"]))
        return "\n".join(rows) + "\n"


def score(pairs: list[tuple[MMADQuestion, str]], unparsable: Literal["wrong", "official"] = "wrong",
          last_letter: bool = True) -> MMADScores:
    """Score (question, raw answer) pairs as the official summary does (see the module docstring)."""
    if unparsable not in ("wrong", "official"):
        raise ValueError(f"unparsable must be 'wrong' or 'official', got {unparsable!r}")
    records = [(q, extract_letter(response, q.options, last=last_letter)) for q, response in pairs]
    bad = sum(letter is None for _, letter in records)
    dropped = 0
    if unparsable == "official":
        # As the official summary: a `for` loop over the list removes each unparsable record, so
        # the iterator steps over the record that follows it, which escapes the check and stays.
        position = 0
        while position < len(records):
            if records[position][1] is None:
                del records[position]
                dropped += 1
            position += 1
    graded = [(q, letter == q.answer) for q, letter in records]
    hits: dict[tuple, Counter] = defaultdict(Counter)
    for question, correct in graded:
        cell = (question.dataset, question.subtask)
        group = ("normal" if question.normal else "anomalous") if question.subtask == "Anomaly Detection" else "all"
        hits[cell + (group,)]["correct"] += correct
        hits[cell + (group,)]["total"] += 1
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for dataset, subtask in sorted({k[:2] for k in hits}):
        groups = [h for k, h in hits.items() if k[:2] == (dataset, subtask)]
        accuracies = [h["correct"] / h["total"] for h in groups]  # balanced: mean over normal/anomalous
        table[dataset][subtask] = 100.0 * sum(accuracies) / len(accuracies)
    return MMADScores(dict(table), bad, dropped, "official" if unparsable == "official" else "unparsable = wrong")


def read_predictions(path: str | Path) -> list[dict]:
    """JSON lines of predictions; a malformed line raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err})") from None
    return rows
