#!/usr/bin/env python
"""Score any model's MMAD answers with the official protocol and print the paper's Table 5 layout."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import auto_cli

from maugpt.mmad.scoring import load_questions, match_predictions, score
from maugpt.mmad.prompts import query_script
from maugpt.evaluation.run import read_jsonl


def main(*, questions: Path, predictions: Path, unparsable: Literal["wrong", "official"] = "wrong",
         script: Literal["llava", "qwen", "internvl", "gpt4v"] | None = None, first_letter: bool | None = None,
         closest_option: bool | None = None, field: str = "answer", csv: Path | None = None,
         overwrite: bool = False) -> None:
    """Score MMAD predictions: accuracy per source dataset and subtask, row and overall means.

    Args:
        questions: the official mmad.json.
        predictions: JSON lines ``{"image": <mmad.json key>, "question_index": <int>, "answer": <raw text>}``
            in the order the answers were recorded (a ``question`` text field may replace
            ``question_index``; an ``options`` field, letter → text, gives the order the options
            were shown in when it is not the file's).
        unparsable: ``wrong`` counts answers without a letter as wrong; ``official`` reproduces the
            official summary (drops them, with its skip of the following record).
        script: extract letters as this official query script does (``llava``: first letter, else
            the closest option; ``qwen``: last, else closest; ``internvl``, ``gpt4v``: last, no
            fallback). Default: last letter, else the closest option text.
        first_letter: take the first letter A–E of an answer instead of the last (overrides ``script``).
        closest_option: map an answer without a letter to the closest option text (overrides ``script``).
        field: the predictions' field holding the answer (``likelihood_answer``: the option-likelihood
            answers of ``maugpt test`` on MMAD).
        csv: also write the table as CSV here.
        overwrite: replace an existing CSV file.
    """
    if csv is not None and csv.exists() and not overwrite:
        raise SystemExit(f"score_mmad: {csv} exists; pass --overwrite true to replace it")
    chosen = query_script(script) if script is not None else None
    last, closest = (chosen.last_letter, chosen.closest_option) if chosen else (True, True)
    last = last if first_letter is None else not first_letter
    closest = closest if closest_option is None else closest_option
    try:
        rows = read_jsonl(predictions)
        missing = [n for n, row in enumerate(rows, 1) if field not in row]
        if missing:
            raise ValueError(f"{predictions}: {len(missing)} line(s) have no field {field!r} (e.g. line {missing[0]})")
        pairs = match_predictions(load_questions(questions), [{**row, "answer": row[field]} for row in rows])
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"score_mmad: {err}") from None
    scores = score(pairs, unparsable=unparsable, last_letter=last, closest_option=closest)
    print(f"letter extraction: {'last' if last else 'first'} letter A–E"
          f"{', else the closest option text' if closest else ', no fallback'}")
    print(scores.markdown())
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text(scores.csv())
        print(f"CSV written to {csv}")


if __name__ == "__main__":
    auto_cli(main)
