#!/usr/bin/env python
"""LLM-judged accuracy of open-ended answers (Table 3) through an OpenAI-compatible endpoint."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from jsonargparse import auto_cli

from maugpt.evaluation.judge import MACRO, POOLED, SYSTEM, USER_TEMPLATE, Judge, judged_accuracy
from maugpt.evaluation.run import read_jsonl


def main(predictions: Path, *, base_url: str | None = None, model: str = "gpt-4o",
         api_key_env: str = "OPENAI_API_KEY", cache: Path | None = None, concurrency: int = 4,
         retries: int = 4, system: str = SYSTEM, template: str = USER_TEMPLATE, max_unjudged: float = 0.01) -> None:
    """Judge the open-ended answers of a predictions file (``maugpt test`` writes one).

    Args:
        predictions: JSON lines with ``question``, ``reference``, ``prediction`` (and ``style``,
            ``domain`` as ``maugpt test`` writes them).
        base_url: the endpoint (``https://…/v1``); default: the MAUGPT_JUDGE_BASE_URL variable.
            Without one the judge is skipped.
        model: the judge model.
        api_key_env: the environment variable holding the API key.
        cache: verdict cache (default: ``judge-<model>.jsonl`` beside the predictions); a verdict is
            reused only for the same endpoint, model, system text, template and texts.
        concurrency: requests in flight at most.
        retries: further attempts after a failed request.
        system: the judge's system message.
        template: the user message, with ``{question}``, ``{reference}`` and ``{prediction}``.
        max_unjudged: the largest share of answers that may stay unjudged (unjudged answers leave
            the denominator); above it the tool exits with status 1 after printing the table.
    """
    base_url = base_url or os.environ.get("MAUGPT_JUDGE_BASE_URL")
    if not base_url:
        print("judge skipped: no endpoint configured (pass --base_url or set MAUGPT_JUDGE_BASE_URL)")
        return
    if not 0 <= max_unjudged <= 1:
        raise SystemExit(f"judge: max_unjudged is a share between 0 and 1, got {max_unjudged}")
    try:
        rows = [r for r in read_jsonl(predictions) if r.get("style", "open") == "open"]
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"judge: {err}") from None
    missing = [i for i, r in enumerate(rows, 1) if not all(isinstance(r.get(k), str)
                                                            for k in ("question", "reference", "prediction"))]
    if missing:
        raise SystemExit(f"judge: {len(missing)} open-ended rows lack question/reference/prediction text "
                         f"(e.g. rows {missing[:3]})")
    if not rows:
        raise SystemExit(f"judge: {predictions} holds no open-ended answer to judge")
    cache = cache or predictions.parent / f"judge-{model.replace('/', '_')}.jsonl"
    try:
        judge = Judge(base_url, model, cache, api_key_env=api_key_env, concurrency=concurrency, retries=retries,
                      system=system, template=template)
    except ValueError as err:
        raise SystemExit(f"judge: {err}") from None
    table = judged_accuracy(rows, judge.judge(rows))
    print(f"| answers | LLM-judged accuracy % ({model}) | judged | unjudged |\n|---|---:|---:|---:|")
    for group in [g for g in table if g not in (MACRO, POOLED)] + [MACRO, POOLED]:
        row = table[group]
        print(f"| {group} | {row['accuracy']:.2f} | {row['judged']} | {row['unjudged']} |")
    print(f"requests sent: {judge.requests}; verdict cache: {cache}")
    unjudged = table[POOLED]["unjudged"]
    if unjudged > max_unjudged * len(rows):
        print(f"WARNING: {unjudged} of {len(rows)} answers ({100 * unjudged / len(rows):.1f} %) stayed unjudged, "
              f"more than --max_unjudged {max_unjudged:g}; they are left out of the accuracies above. "
              "Run again to ask for them (verdicts already given are cached).", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    auto_cli(main)
