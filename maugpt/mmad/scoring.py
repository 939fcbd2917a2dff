"""MMAD scoring with the official protocol (the paper's Table 5; MMAD, Jiang et al. 2024, and its evaluation code).

``mmad.json`` maps each query image (its path under the data root; the first component is the
source dataset) to a conversation of multiple-choice questions. Answers are scored per (source
dataset, subtask): Anomaly Detection as balanced accuracy over normal (key contains ``good``) and
anomalous images, every other subtask as accuracy; Object Structure and Object Details merge into
Object Analysis, giving 7 subtasks. A row is the mean of its dataset's subtasks; the headline is
the mean of the rows.

Two handlings, reported under their names:

- ``wrong`` (default, corrected): an answer without a letter (and an empty answer, which is never
  matched to an option) counts as wrong; a (dataset, subtask) cell without questions is left out
  of the means, and balanced accuracy averages the groups that have questions.
- ``official``: ``caculate_accuracy_mmad`` of ``evaluation/examples/helper/summary.py`` in
  jam-cc/MMAD at commit ``f9a0e6fd5f7d2477cbb5169620549ed899ef6307``, quirks included. A record
  whose answer or correct letter is not one of A–E is removed from the list being iterated, so
  the record right after it is never visited (neither graded nor counted); rows and subtask columns
  are every dataset and type seen in the answers, and a cell left without graded records is 0 and
  enters the means; a normal/anomalous group without records adds 0 to balanced accuracy. The
  answer letters come from the query script's own extraction, which maps every answer without a
  letter, even an empty one, to the closest option text where the script passes its options
  (see :mod:`maugpt.mmad.prompts`).
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from torch import nn

SUBTASKS = (
    "Anomaly Detection",
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
)
QUESTION_TYPES = {
    **{t: t for t in SUBTASKS[:-1]},
    "Object Structure": "Object Analysis",
    "Object Details": "Object Analysis",
}
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
            for name, kind in (("Question", str), ("Options", dict), ("Answer", str), ("type", str)):
                if not isinstance(q.get(name), kind):
                    raise ValueError(f"{where}: field {name!r} must be a {kind.__name__}, got {q.get(name)!r}")
            if q["type"] not in QUESTION_TYPES:
                raise ValueError(f"{where}: field 'type' is {q['type']!r}; expected one of {sorted(QUESTION_TYPES)}")
            if q["Answer"] not in q["Options"]:
                raise ValueError(
                    f"{where}: field 'Answer' {q['Answer']!r} is not one of the options {sorted(q['Options'])}"
                )
            questions.append(
                MMADQuestion(key, index, q["Question"], dict(q["Options"]), q["Answer"], QUESTION_TYPES[q["type"]])
            )
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
        raise ValueError(
            f"prediction {line}: 'options' {options!r} are not the options of {question.image} "
            f"#{question.index} ({question.options})"
        )
    correct = question.options[question.answer]
    return replace(question, options=dict(options), answer=next(k for k, v in options.items() if v == correct))


def extract_letter(
    response: str, options: dict[str, str], last: bool = True, closest_option: bool = True, official: bool = False
) -> str | None:
    """The official answer extraction (``GPT4Query.parse_answer``): the last (or first) standalone
    letter A–E of the response; without one and with ``closest_option``, the letter of the option
    text closest to the response (difflib, cutoff 0: some option always matches). An empty or
    blank response is unparsable (None) unless ``official``, where it goes to difflib like any
    text, as the scripts do (all ratios tie at 0 and the largest option text wins)."""
    found = _LETTER.findall(response)
    if found:
        return found[-1] if last else found[0]
    if not closest_option or not options or (not official and not response.strip()):
        return None
    closest = difflib.get_close_matches(response, list(options.values()), n=1, cutoff=0.0)
    return next(letter for letter, text in options.items() if text == closest[0])


def match_predictions(questions: list[MMADQuestion], predictions: list[dict]) -> list[tuple[MMADQuestion, str | None]]:
    """Pair each prediction with its question, in the predictions' order.

    A prediction is ``{"image", "question_index" | "question", "answer"}``, with ``options``
    (letter → text) when the options were shown in another order than the file's (shuffled): the
    correct letter then follows its option text. A prediction with an ``error`` (``maugpt test``
    could not read its image) has no answer (None): it is unparsable, whatever the extraction.
    Unknown images or questions, duplicates and unanswered questions raise, listing a few with
    their counts.
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
        pairs.append(
            (_as_presented(q, p["options"], line) if "options" in p else q, None if p.get("error") else p["answer"])
        )
    missing = [f"{q.image} #{q.index}" for q in questions if (q.image, q.index) not in seen]
    problems = [
        (name, items)
        for name, items in (("unknown", unknown), ("duplicate", duplicates), ("unanswered", missing))
        if items
    ]
    if problems:
        raise ValueError(
            "predictions do not match the questions: "
            + "; ".join(f"{len(items)} {name} (e.g. {', '.join(items[:3])})" for name, items in problems)
        )
    return pairs


@dataclass
class MMADScores:
    """Accuracy in % per source dataset and subtask, their means, and how answers were handled."""

    table: dict[str, dict[str, float]]  # dataset → subtask → accuracy %
    unparsable: int
    dropped: int  # records removed (official handling only)
    handling: str
    skipped: int = 0  # records never visited because one before them was removed (official only)
    letters: list[str | None] = field(default_factory=list)  # each answer's extracted letter, in order

    def row_average(self, dataset: str) -> float:
        values = list(self.table[dataset].values())
        return sum(values) / len(values)

    def subtask_average(self, subtask: str) -> float:
        values = [row[subtask] for row in self.table.values() if subtask in row]
        return sum(values) / len(values) if values else float("nan")

    @property
    def average(self) -> float:
        return sum(self.row_average(d) for d in self.table) / len(self.table)

    @property
    def handling_note(self) -> str:
        if self.handling == "official":
            return (
                f"unparsable answers: {self.unparsable} (official summary: {self.dropped} records dropped, "
                f"{self.skipped} records right after them never checked)"
            )
        return f"unparsable answers: {self.unparsable} ({self.handling})"

    def markdown(self) -> str:
        """Table 5's layout: a row per source dataset, then the mean over datasets."""
        header = ["source dataset", *SUBTASKS, "average"]
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
        cell = lambda v: "—" if v != v else f"{v:.2f}"  # noqa: E731  (NaN: subtask absent)
        for dataset, row in sorted(self.table.items()):
            values = [row.get(s, float("nan")) for s in SUBTASKS]
            lines.append(
                f"| {dataset} | " + " | ".join(cell(v) for v in values) + f" | {self.row_average(dataset):.2f} |"
            )
        means = [self.subtask_average(s) for s in SUBTASKS]
        lines.append("| **average** | " + " | ".join(cell(v) for v in means) + f" | {self.average:.2f} |")
        lines.append(f"\n{self.handling_note}")
        return "\n".join(lines)

    def csv(self) -> str:
        rows = ["dataset," + ",".join(SUBTASKS) + ",average"]
        for dataset, row in sorted(self.table.items()):
            rows.append(
                ",".join(
                    [
                        dataset,
                        *(f"{row[s]:.4f}" if s in row else "" for s in SUBTASKS),
                        f"{self.row_average(dataset):.4f}",
                    ]
                )
            )
        rows.append(",".join(["average", *(f"{self.subtask_average(s):.4f}" for s in SUBTASKS), f"{self.average:.4f}"]))
        return "\n".join(rows) + "\n"


OFFICIAL_LETTERS = ("A", "B", "C", "D", "E")


def _group(question: MMADQuestion) -> str:
    if question.subtask != "Anomaly Detection":
        return "all"
    return "normal" if question.normal else "anomalous"


def _corrected_table(records: list[tuple[MMADQuestion, str | None]]) -> dict[str, dict[str, float]]:
    """Cells with questions only; balanced accuracy over the groups that have questions."""
    hits: dict[tuple, Counter] = defaultdict(Counter)
    for question, letter in records:
        counter = hits[(question.dataset, question.subtask, _group(question))]
        counter["correct"] += letter == question.answer
        counter["total"] += 1
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for dataset, subtask in sorted({k[:2] for k in hits}):
        accuracies = [h["correct"] / h["total"] for k, h in hits.items() if k[:2] == (dataset, subtask)]
        table[dataset][subtask] = 100.0 * sum(accuracies) / len(accuracies)
    return dict(table)


def _official_table(records: list[tuple[MMADQuestion, str | None]]) -> tuple[dict[str, dict[str, float]], int, int]:
    """``caculate_accuracy_mmad`` (see the module docstring): the table, records dropped, records skipped."""
    datasets = list(dict.fromkeys(q.dataset for q, _ in records))  # every record, dropped ones too
    subtasks = list(dict.fromkeys(q.subtask for q, _ in records))
    hits: dict[tuple, Counter] = defaultdict(Counter)
    dropped = skipped = position = 0
    while position < len(records):
        question, letter = records[position]
        if question.answer not in OFFICIAL_LETTERS or letter not in OFFICIAL_LETTERS:
            # all_answers_json.remove(answer) inside `for answer in all_answers_json`: the list
            # shifts left under the iterator, which then steps over the next record.
            dropped += 1
            skipped += position + 1 < len(records)
            position += 2
            continue
        for key in [(question.dataset, question.subtask)] + (
            [(question.dataset, _group(question))] if question.subtask == "Anomaly Detection" else []
        ):
            hits[key]["correct"] += letter == question.answer
            hits[key]["total"] += 1
        position += 1
    rate = lambda h: h["correct"] / h["total"] if h["total"] else 0.0  # noqa: E731  (official: 0 when empty)
    table = {
        d: {
            s: 100.0
            * (
                (rate(hits[(d, "normal")]) + rate(hits[(d, "anomalous")])) / 2
                if s == "Anomaly Detection"
                else rate(hits[(d, s)])
            )
            for s in subtasks
        }
        for d in datasets
    }
    return table, dropped, skipped


def score(
    pairs: Iterable[tuple[MMADQuestion, str | None]],
    unparsable: Literal["wrong", "official"] = "wrong",
    last_letter: bool = True,
    closest_option: bool = True,
) -> MMADScores:
    """Score (question, raw answer) pairs, in the order the answers were recorded (it matters to the
    official handling); ``last_letter`` and ``closest_option`` are the query script's extraction
    (:func:`extract_letter`). See the module docstring for the two handlings."""
    if unparsable not in ("wrong", "official"):
        raise ValueError(f"unparsable must be 'wrong' or 'official', got {unparsable!r}")
    official = unparsable == "official"
    records = [
        (q, None if response is None else extract_letter(response, q.options, last_letter, closest_option, official))
        for q, response in pairs
    ]
    bad = sum(letter is None for _, letter in records)
    letters = [letter for _, letter in records]
    if official:
        table, dropped, skipped = _official_table(records)
        return MMADScores(table, bad, dropped, "official", skipped, letters)
    return MMADScores(_corrected_table(records), bad, 0, "unparsable = wrong", letters=letters)


def score_rows(
    rows: list[dict], pairs: list[tuple[MMADQuestion, str | None]], scores: MMADScores, prefix: str = ""
) -> None:
    """Give each prediction row (in the order of ``pairs``) its own result: ``<prefix>letter`` (the
    extracted letter, None: unparsable) and ``<prefix>correct`` (that letter is the right one)."""
    for row, (question, _), letter in zip(rows, pairs, scores.letters, strict=True):
        row[f"{prefix}letter"] = letter
        row[f"{prefix}correct"] = letter == question.answer


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
        last_letter: take the last letter A–E of an answer, else the first (the query script's rule).
        closest_option: map an answer without a letter to the closest option text (the script's rule).
        setting: lines describing the prompts (query script, shots, templates, option order,
            decoding) for the tables.
        generate_kwargs: ``generate()`` keyword arguments of the query script's decoding
            (``MAUGPTModule.test_step`` passes them on).
    """

    MODES = {
        "generation": "generated answers through the query script's letter extraction",
        "likelihood": "option likelihood (the option letter most probable as the first answer token)",
    }

    def __init__(
        self,
        questions: list[MMADQuestion],
        unparsable: Literal["wrong", "official"] = "wrong",
        last_letter: bool = True,
        closest_option: bool = True,
        setting: str = "",
        generate_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.questions, self.unparsable, self.setting = questions, unparsable, setting
        self.last_letter, self.closest_option = last_letter, closest_option
        self.generate_kwargs = dict(generate_kwargs or {})
        self.rows: list[dict] = []

    def add(self, meta: dict, answer: str, choice_logprobs: list[float] | None = None) -> None:
        """One answer; ``choice_logprobs[i]`` is the log-probability of letter ``chr(65 + i)``. A
        prompt whose image could not be read (``meta["error"]``) has no answer: unparsable."""
        error = meta.get("error")
        likely = ""
        if choice_logprobs is not None and not error:
            likely = max(meta["options"], key=lambda letter: choice_logprobs[ord(letter) - ord("A")])
        self.rows.append(
            {
                "image": meta["image"],
                "question_index": meta["question_index"],
                "dataset": meta["dataset"],
                "subtask": meta["subtask"],
                "question": meta["question"],
                "options": meta["options"],
                "correct_letter": meta["answer"],
                "answer": "" if error else answer,
                "likelihood_answer": likely,
                **({"error": error} if error else {}),
            }
        )

    def finish(self, trainer) -> dict[str, float]:
        """Score both modes on rank 0; ``predictions.jsonl`` gets every answer with its own
        ``letter``/``correct`` (and ``likelihood_letter``/``likelihood_correct``)."""
        from maugpt.evaluation.run import evaluation_folder, gather_rows, write_jsonl
        from maugpt.tensorboard import tensorboard

        folder = evaluation_folder(trainer)
        order = {(q.image, q.index): i for i, q in enumerate(self.questions)}
        rows = sorted(gather_rows(trainer, self.rows), key=lambda r: order.get((r["image"], r["question_index"]), -1))
        self.rows = []
        results: dict[str, float] = {}
        if trainer.is_global_zero:
            try:
                results = self.score_and_report(rows, folder, tensorboard(trainer), trainer.global_step)
            finally:  # the answers are kept even when they cannot be scored
                write_jsonl(folder / "predictions.jsonl", rows)
        return trainer.strategy.broadcast(results)

    def score_and_report(self, rows: list[dict], folder: Path, writer, step: int) -> dict[str, float]:
        """Both modes' tables (``tables.md``, ``mmad_<mode>.csv``, TensorBoard) and their scalars;
        each row gets its own letter and correctness (:func:`score_rows`)."""
        results: dict[str, float] = {}
        unreadable = sum("error" in r for r in rows)
        first, _, details = self.setting.partition("\n\n")
        sections = [
            f"MMAD: {len(rows)} questions; {first}; questions with unreadable images: {unreadable}"
            + (f"\n\n{details}" if details else "")
        ]
        for mode, title in self.MODES.items():
            if mode == "likelihood" and not any(r["likelihood_answer"] for r in rows):
                continue
            field = "answer" if mode == "generation" else "likelihood_answer"
            pairs = match_predictions(self.questions, [{**r, "answer": r[field]} for r in rows])
            scores = score(
                pairs, self.unparsable if mode == "generation" else "wrong", self.last_letter, self.closest_option
            )
            score_rows(rows, pairs, scores, "" if mode == "generation" else "likelihood_")
            sections.append(f"### {mode.capitalize()}: {title} (accuracy %)\n\n{scores.markdown()}")
            (folder / f"mmad_{mode}.csv").write_text(scores.csv())
            results[f"mmad/{mode}/average"] = scores.average
            results.update({f"mmad/{mode}/{d}": scores.row_average(d) for d in scores.table})
            results.update({f"mmad/{mode}/{s}": scores.subtask_average(s) for s in SUBTASKS})
            results[f"mmad/{mode}/unparsable"] = float(scores.unparsable)
        markdown = "\n\n".join(sections) + "\n"
        (folder / "tables.md").write_text(markdown)
        if writer is not None:
            writer.add_text("test/mmad", markdown, step)
        return results
