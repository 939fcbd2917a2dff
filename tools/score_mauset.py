#!/usr/bin/env python
"""Score MAU-Set predictions again (Tables 2 and 4), e.g. with other metric settings or for another model."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import auto_cli

from maugpt.evaluation.mauset import MAUSetScores, tables
from maugpt.evaluation.run import read_jsonl

FIELDS = ("style", "task", "domain", "question", "reference", "prediction")


def main(predictions: Path, *, bleu_tokenize: Literal["none", "13a"] = "none", rouge_stemmer: bool = False,
         model: str = "model", out: Path | None = None) -> None:
    """Print the discriminative accuracy (per domain, macro and pooled) and ROUGE/BLEU tables.

    Args:
        predictions: a ``predictions.jsonl`` as ``maugpt test`` writes it, or the evaluation folder
            of a run (every ``predictions*.jsonl`` in it: one per rank on several GPUs); any
            model's rows with the same fields (style, task, domain, question, reference,
            prediction) score the same way.
        bleu_tokenize: sacrebleu's tokenizer for BLEU-4: ``none`` (whitespace, as ``maugpt test``
            by default) or ``13a``.
        rouge_stemmer: stem tokens (Porter) before ROUGE.
        model: the model's name in Table 2's row.
        out: also write ``tables.md`` and ``scores.csv`` into this folder (never over existing ones).
    """
    if out is not None and any((out / name).exists() for name in ("tables.md", "scores.csv")):
        raise SystemExit(f"score_mauset: {out} already holds tables.md or scores.csv; choose another --out")
    files = sorted(predictions.glob("predictions*.jsonl")) if predictions.is_dir() else [predictions]
    scores = MAUSetScores(bleu_tokenize, rouge_stemmer)
    rows = 0
    try:
        for path in files:
            for line, row in enumerate(read_jsonl(path), 1):
                missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
                if missing:
                    raise ValueError(f"{path}, line {line}: needs text fields {missing}")
                scores.add(row, row["prediction"])
                rows += 1
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"score_mauset: {err}") from None
    if not rows:
        raise SystemExit(f"score_mauset: no predictions in {predictions}")
    markdown, csv = tables(scores.compute(), model=model, settings=scores.settings)
    print(f"{rows} predictions\n\n{markdown}", end="")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(markdown)
        (out / "scores.csv").write_text(csv)
        print(f"tables written to {out}")


if __name__ == "__main__":
    auto_cli(main)
