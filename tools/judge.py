#!/usr/bin/env python
"""LLM-judged accuracy of open-ended answers (Table 3) through an OpenAI-compatible endpoint."""
from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import auto_cli

from maugpt.evaluation.judge import Judge, judged_accuracy
from maugpt.evaluation.run import read_jsonl


def main(predictions: Path, *, base_url: str | None = None, model: str = "gpt-4o",
         api_key_env: str = "OPENAI_API_KEY", cache: Path | None = None, concurrency: int = 4,
         retries: int = 4) -> None:
    """Judge the open-ended answers of a predictions file (``maugpt test`` writes one).

    Args:
        predictions: JSON lines with ``question``, ``reference``, ``prediction`` (and ``style``,
            ``domain`` as ``maugpt test`` writes them).
        base_url: the endpoint (``https://…/v1``); default: the MAUGPT_JUDGE_BASE_URL variable.
            Without one the judge is skipped.
        model: the judge model.
        api_key_env: the environment variable holding the API key.
        cache: verdict cache (default: ``judge-<model>.jsonl`` beside the predictions).
        concurrency: requests in flight at most.
        retries: further attempts after a failed request.
    """
    base_url = base_url or os.environ.get("MAUGPT_JUDGE_BASE_URL")
    if not base_url:
        print("judge skipped: no endpoint configured (pass --base_url or set MAUGPT_JUDGE_BASE_URL)")
        return
    try:
        rows = [r for r in read_jsonl(predictions) if r.get("style", "open") == "open"]
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"judge: {err}") from None
    missing = [i for i, r in enumerate(rows, 1) if not all(isinstance(r.get(k), str)
                                                            for k in ("question", "reference", "prediction"))]
    if missing:
        raise SystemExit(f"judge: {len(missing)} open-ended rows lack question/reference/prediction text "
                         f"(e.g. rows {missing[:3]})")
    cache = cache or predictions.parent / f"judge-{model.replace('/', '_')}.jsonl"
    judge = Judge(base_url, model, cache, api_key_env=api_key_env, concurrency=concurrency, retries=retries)
    table = judged_accuracy(rows, judge.judge(rows))
    print(f"| answers | LLM-judged accuracy % ({model}) | judged | unjudged |\n|---|---:|---:|---:|")
    for group in sorted(table, key=lambda g: (g == "all", g)):
        row = table[group]
        print(f"| {group} | {row['accuracy']:.2f} | {row['judged']} | {row['unjudged']} |")
    print(f"requests sent: {judge.requests}; verdict cache: {cache}")


if __name__ == "__main__":
    auto_cli(main)
