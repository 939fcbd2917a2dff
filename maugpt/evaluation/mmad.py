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
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from torch import nn

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


def read_mmad(path: str | Path) -> dict[str, dict]:
    """The entries of ``mmad.json`` (key: the query image's path under the data root)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMAD question file {path} does not exist (expected the official mmad.json)")
    entries = json.loads(path.read_text())
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected one JSON object keyed by image path, got {type(entries).__name__}")
    return entries


def load_questions(path: str | Path, entries: dict[str, dict] | None = None) -> list[MMADQuestion]:
    """Every question of ``mmad.json`` (or of its already read ``entries``), in the file's order; a
    malformed entry raises naming its key and field."""
    entries = read_mmad(path) if entries is None else entries
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


def present_options(question: MMADQuestion, shuffle: bool = False, seed: int = 0) -> MMADQuestion:
    """The question as a prompt shows it: options re-lettered A, B, C… in the file's order or, with
    ``shuffle``, in an order drawn from ``seed`` and the question's place (the same every run), and
    the answer letter remapped to follow its option, as the official scripts do."""
    items = list(question.options.items())
    if shuffle:
        random.Random(f"{seed}/{question.image}/{question.index}").shuffle(items)
    letters = [chr(ord("A") + i) for i in range(len(items))]
    answer = letters[[letter for letter, _ in items].index(question.answer)]
    return replace(question, options=dict(zip(letters, (text for _, text in items))), answer=answer)


def _as_presented(question: MMADQuestion, options: object, line: int) -> MMADQuestion:
    """``question`` with the option letters a prediction saw (``options``: letter → text, a
    re-lettering of the file's options); the answer follows its option text."""
    if not isinstance(options, dict) or sorted(options.values()) != sorted(question.options.values()):
        raise ValueError(f"prediction {line}: 'options' {options!r} are not the options of {question.image} "
                         f"#{question.index} ({question.options})")
    correct = question.options[question.answer]
    return replace(question, options=dict(options), answer=next(k for k, v in options.items() if v == correct))


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

    A prediction is ``{"image", "question_index" | "question", "answer"}``, with ``options``
    (letter → text) when the options were shown in another order than the file's (shuffled): the
    correct letter then follows its option text. Unknown images or questions, duplicates and
    unanswered questions raise, listing a few with their counts.
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
        pairs.append((_as_presented(q, p["options"], line) if "options" in p else q, p["answer"]))
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


class MMADEvaluation(nn.Module):
    """The :class:`~maugpt.evaluation.run.Evaluation` of an MMAD test run, in both scoring modes.

    ``generation`` scores the generated answers with the official extraction; ``likelihood``
    takes the shown option whose letter is the most probable first answer token (no parsing).
    Both are computed from the same prompts and reported separately. The predictions file can be
    scored again with ``tools/score_mmad.py`` (``--field likelihood_answer`` for the second mode).

    Args:
        questions: the questions asked, in the file's order (their order matters to the
            official handling of unparsable answers).
        unparsable: ``wrong`` or ``official`` (see :func:`score`).
        last_letter: take the last letter A–E of an answer (official), else the first.
        setting: a line describing the prompts (shots, templates, option order) for the tables.
    """

    MODES = {"generation": "generated answers, official extraction (last letter A–E, else the closest option text)",
             "likelihood": "option likelihood (the option letter most probable as the first answer token)"}

    def __init__(self, questions: list[MMADQuestion], unparsable: Literal["wrong", "official"] = "wrong",
                 last_letter: bool = True, setting: str = "") -> None:
        super().__init__()
        self.questions, self.unparsable, self.last_letter, self.setting = questions, unparsable, last_letter, setting
        self.rows: list[dict] = []

    def add(self, meta: dict, answer: str, choice_logprobs: list[float] | None = None) -> None:
        """One answer; ``choice_logprobs[i]`` is the log-probability of letter ``chr(65 + i)``. A
        prompt whose image could not be read (``meta["error"]``) gets empty answers: wrong."""
        error = meta.get("error")
        likely = ""
        if choice_logprobs is not None and not error:
            likely = max(meta["options"], key=lambda letter: choice_logprobs[ord(letter) - ord("A")])
        self.rows.append({"image": meta["image"], "question_index": meta["question_index"],
                          "subtask": meta["subtask"], "question": meta["question"], "options": meta["options"],
                          "correct": meta["answer"], "answer": "" if error else answer, "likelihood_answer": likely,
                          **({"error": error} if error else {})})

    def finish(self, trainer) -> dict[str, float]:
        from maugpt.evaluation.run import evaluation_folder, gather_rows, write_jsonl
        from maugpt.training.callbacks import tensorboard

        rows, self.rows = gather_rows(trainer, self.rows), []
        folder = evaluation_folder(trainer)
        results: dict[str, float] = {}
        if trainer.is_global_zero:
            order = {(q.image, q.index): i for i, q in enumerate(self.questions)}
            rows.sort(key=lambda r: order.get((r["image"], r["question_index"]), -1))
            write_jsonl(folder / "predictions.jsonl", rows)
            unreadable = sum("error" in r for r in rows)
            sections = [f"MMAD: {len(rows)} questions; {self.setting}; "
                        f"questions with unreadable images: {unreadable}"]
            for mode, title in self.MODES.items():
                if mode == "likelihood" and not any(r["likelihood_answer"] for r in rows):
                    continue
                field = "answer" if mode == "generation" else "likelihood_answer"
                pairs = match_predictions(self.questions, [{**r, "answer": r[field]} for r in rows])
                scores = score(pairs, self.unparsable if mode == "generation" else "wrong", self.last_letter)
                sections.append(f"### {mode.capitalize()}: {title} (accuracy %)\n\n{scores.markdown()}")
                (folder / f"mmad_{mode}.csv").write_text(scores.csv())
                results[f"mmad/{mode}/average"] = scores.average
                results.update({f"mmad/{mode}/{d}": scores.row_average(d) for d in scores.table})
                results.update({f"mmad/{mode}/{s}": scores.subtask_average(s) for s in SUBTASKS})
                results[f"mmad/{mode}/unparsable"] = float(scores.unparsable)
            markdown = "\n\n".join(sections) + "\n"
            (folder / "tables.md").write_text(markdown)
            writer = tensorboard(trainer)
            if writer is not None:
                writer.add_text("test/mmad", markdown, trainer.global_step)
        return trainer.strategy.broadcast(results)
