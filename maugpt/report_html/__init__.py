"""Self-contained HTML pages of evaluations and sweeps (``maugpt report-html RUN_OR_SWEEP --out DIR``).

:func:`write_html` writes one page per evaluation folder (``predictions.jsonl``, ``tables.md``, …)
and, for a sweep, one page for the sweep (its report, its plot, and every cell's answer to each
question side by side) plus one page per cell, linked to each other by relative links. A page opens
from disk with no server and no network: its CSS and JavaScript are inline and its images are base64
data URIs — thumbnails of the test images (read through :func:`maugpt.images.open_rgb`'s pixel
limit) with the defect outlined in red, and the folder's PNG figures.

The gallery lists the answers worst first (wrong discriminative and MMAD answers, then open answers
by ascending ROUGE-L) and filters them by domain, task, product and outcome; the URL's hash
(``page.html#outcome=incorrect&domain=Mechanical+Parts``) sets the filters on load, so that a
filtered view can be shared.
"""

from __future__ import annotations

import json
from pathlib import Path

from maugpt.evaluation.run import predictions_path
from maugpt.report_html.images import load_thumbs
from maugpt.report_html.pages import (
    Evaluation,
    ThumbSheet,
    cell_page,
    evaluation_page,
    nav,
    sweep_page,
    sweep_questions,
    sweep_title,
)
from maugpt.report_html.template import CSS, PAGE, SCRIPT, esc


def read_source(source: Path, data_dir: Path | None) -> tuple[dict | None, list[Evaluation]]:
    """The sweep's record (None unless ``source`` is a sweep) and the evaluations to give pages to."""
    expected = (
        "expected an evaluation folder (predictions.jsonl), a run folder (evaluation*/predictions.jsonl) "
        "or a sweep folder (sweep.json)"
    )
    if not source.is_dir():
        raise ValueError(f"{source} is not a folder: {expected}")
    if (source / "sweep.json").is_file():
        try:
            record = json.loads((source / "sweep.json").read_text())
        except ValueError as err:
            raise ValueError(f"{source / 'sweep.json'} is not JSON ({err}): {expected}") from None
        spec = record.get("spec") or {}
        cells = spec.get("cells") or [{"name": n} for n in record.get("cells") or []]
        evaluations = []
        for c in cells:
            folder = source / "cells" / c["name"] / "evaluation"
            label = c.get("label", c["name"]) + (f" (seed {c['seed']})" if c.get("seed") is not None else "")
            if predictions_path(folder) is not None:
                evaluations.append(
                    Evaluation.read(
                        folder,
                        page=cell_page(c),
                        title=f"{spec.get('name', source.name)}: {label}",
                        data_dir=data_dir,
                        label=label,
                    )
                )
        return {**record, "spec": spec, "cell_list": cells}, evaluations
    if predictions_path(source) is not None:
        return None, [
            Evaluation.read(source, page=f"{source.name}.html", title=f"Evaluation {source}", data_dir=data_dir)
        ]
    folders = sorted(p for p in source.glob("evaluation*") if predictions_path(p) is not None)
    if not folders:
        raise ValueError(
            f"{source} is neither an evaluation folder (predictions.jsonl), a run folder "
            "(evaluation*/predictions.jsonl) nor a sweep folder (sweep.json)"
        )
    return None, [
        Evaluation.read(f, page=f"{f.name}.html", title=f"Evaluation {f}", data_dir=data_dir) for f in folders
    ]


def write_html(
    source: str | Path,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    max_gallery: int = 2000,
    overwrite: bool = False,
) -> list[Path]:
    """Write the HTML pages of an evaluation, run or sweep folder into ``out``; return their paths.

    Args:
        source: an evaluation folder (``predictions.jsonl``, ``tables.md``, …): one page,
            ``<folder name>.html``; a run folder holding ``evaluation*/`` folders: one page each; a
            sweep folder (``sweep.json``): ``index.html`` (the report, the plot, every cell's answers
            side by side) and ``cell-<name>.html`` per cell with an evaluation.
        out: the output folder (made if missing).
        data_dir: the MAU-Set data folder (holding ``test/``, or a split folder itself) or the MMAD
            ``data_root``, for the images; default: each run's ``config.yaml`` beside its evaluation
            folder (``data.init_args.data_dir`` or ``data_root``), else the pages say there are none.
        max_gallery: at most this many answers (questions, on a sweep page) in a gallery: the worst.
        overwrite: replace existing pages; otherwise an existing one raises ``FileExistsError``.

    Raises ``ValueError`` for a folder that is none of the three; nothing is written then, nor when
    a page exists.
    """
    source, out = Path(source), Path(out)
    sweep, evaluations = read_source(source, None if data_dir is None else Path(data_dir))
    pages = ([("index.html", sweep_title(source, sweep))] if sweep else []) + [(e.page, e.label) for e in evaluations]
    for page, _ in pages:  # all checked before any is written: never half a report
        if (out / page).exists() and not overwrite:
            raise FileExistsError(f"{out / page} exists: choose another output folder or overwrite it")
    shown = {e.page: e.answers[:max_gallery] for e in evaluations}
    questions = sweep_questions(evaluations) if sweep else []
    # The sweep page shows the images of the first cell that has some (the cells share their data).
    lead = next((e for e in evaluations if e.images is not None), evaluations[0] if evaluations else None)
    wanted: dict[tuple[str, Path], set[str]] = {}
    for e in evaluations:
        if e.images is not None:
            wanted.setdefault((e.kind, e.images), set()).update(a.image for a in shown[e.page])
    if sweep and lead is not None and lead.images is not None:
        wanted[lead.kind, lead.images].update(next(iter(q.values())).image for q in questions[:max_gallery])
    thumbs = load_thumbs(wanted)

    def sheet(e: Evaluation | None) -> ThumbSheet:
        if e is None:
            return ThumbSheet(None, "no cell has an evaluation yet")
        return ThumbSheet(thumbs.get((e.kind, e.images)) if e.images is not None else None, e.image_note)

    made = {
        e.page: (e.title, *evaluation_page(e, shown=shown[e.page], sheet=sheet(e), links=nav(pages, e.page)))
        for e in evaluations
    }
    if sweep:
        made["index.html"] = (
            pages[0][1],
            *sweep_page(
                source,
                sweep,
                evaluations=evaluations,
                questions=questions,
                shown=max_gallery,
                sheet=sheet(lead),
                links=nav(pages, "index.html"),
            ),
        )
    out.mkdir(parents=True, exist_ok=True)
    for page, _ in pages:
        title, body, css = made[page]
        text = PAGE.substitute(title=esc(title), css=CSS, thumbs=css, body=body, script=SCRIPT)
        (out / page).write_bytes(text.encode("utf-8", "replace"))  # a lone surrogate from a JSON file → "?"
    return [out / page for page, _ in pages]
