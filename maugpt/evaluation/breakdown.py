"""Where a model is right and wrong: MAU-Set scores broken down from the answers' own scores.

From the rows of ``predictions.jsonl`` (each with its own ``correct`` or ROUGE/BLEU statistics,
see :class:`~maugpt.evaluation.mauset.MAUSetScores.add`):

- detection accuracy per source, per product and per defect class (``normal`` for defect-free
  images; classes the knowledge base does not list, which get the generic description, are
  marked *generic*);
- open-ended ROUGE-1/2/L (mean over answers) and BLEU-4 (corpus BLEU of the summed statistics)
  per task × domain.

MMAD's tables are already per source dataset × subtask (:mod:`maugpt.mmad.scoring`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from maugpt.evaluation.statistics import corpus_bleu


def bleu_row(bleu: dict) -> list[int]:
    """One answer's BLEU statistics as ``[hyp_len, ref_len, m1..m4, t1..t4]``."""
    return [bleu["hyp_len"], bleu["ref_len"], *bleu["matches"], *bleu["totals"]]


def defect_label(row: dict) -> str:
    """The defect class, ``(generic)`` where the knowledge base does not list it; ``normal`` for a
    defect-free image; ``unknown`` where a row does not say (another model's answers, say)."""
    if row.get("defect_class"):
        return f"{row['defect_class']} (generic)" if row.get("generic_defect") else row["defect_class"]
    return "normal" if row.get("is_anomalous") is False else "unknown"


def detection_groups(rows: list[dict]) -> dict[str, dict[str, list[bool]]]:
    """``{"source" | "product" | "defect class": {group: [correct, …]}}`` of the discriminative answers."""
    groups: dict[str, dict[str, list[bool]]] = {
        "source": defaultdict(list),
        "product": defaultdict(list),
        "defect class": defaultdict(list),
    }
    for row in rows:
        if row.get("style") == "discriminative":
            for by, group in (
                ("source", row.get("source")),
                ("product", row.get("product")),
                ("defect class", defect_label(row)),
            ):
                groups[by][str(group)].append(bool(row["correct"]))
    return groups


def open_groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """``{(task, domain): [row, …]}`` of the open-ended answers."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("style") != "discriminative":
            groups[(row["task"], row["domain"])].append(row)
    return groups


def open_scores(rows: list[dict]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 and the corpus BLEU-4 of some open-ended answers."""
    scores = {k: float(np.mean([r[k] for r in rows])) for k in ("rouge1", "rouge2", "rougeL")}
    scores["bleu4"] = float(corpus_bleu(np.array([bleu_row(r["bleu"]) for r in rows]).sum(axis=0)))
    return scores


def mauset_breakdowns(rows: list[dict]) -> tuple[str, str]:
    """The breakdowns as Markdown (for ``tables.md``) and CSV rows ``table,group,metric,value,answers``.

    A row without its own scores (a predictions file written before answers were scored one by
    one) raises naming the fields; ``maugpt score-mauset --out`` scores such a file again."""
    unscored = next((r for r in rows if ("correct" if r.get("style") == "discriminative" else "rougeL") not in r), None)
    if unscored is not None:
        raise ValueError(
            f"prediction {unscored.get('key')!r} has no per-answer scores (correct / rouge / bleu): "
            "score the file again with maugpt score-mauset --out"
        )
    fmt = lambda v: f"{100 * v:.2f}"  # noqa: E731
    markdown, csv = [], ["table,group,metric,value,answers"]
    for by, groups in detection_groups(rows).items():
        if not groups:
            continue
        markdown += [f"### Detection accuracy per {by} (%)", "", f"| {by} | accuracy | answers |", "|---|---:|---:|"]
        for group, hits in sorted(groups.items()):
            markdown.append(f"| {group} | {fmt(np.mean(hits))} | {len(hits)} |")
            csv.append(f'detection per {by},"{group}",detection_accuracy,{np.mean(hits):.6f},{len(hits)}')
        markdown.append("")
    groups = open_groups(rows)
    if groups:
        markdown += [
            "### Open-ended QA per task × domain (%)",
            "",
            "| task | domain | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU-4 | answers |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for (task, domain), members in sorted(groups.items()):
            scores = open_scores(members)
            markdown.append(
                f"| {task} | {domain} | " + " | ".join(fmt(v) for v in scores.values()) + f" | {len(members)} |"
            )
            csv += [
                f'open per task x domain,"{task} / {domain}",{name},{value:.6f},{len(members)}'
                for name, value in scores.items()
            ]
        markdown.append("")
    return "\n".join(markdown), "\n".join(csv) + "\n"
