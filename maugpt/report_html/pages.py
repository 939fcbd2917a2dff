"""The evaluation, cell and sweep pages: tables, figures and the gallery."""

from __future__ import annotations

import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from maugpt.evaluation.run import predictions_path
from maugpt.report_html.answers import Answer, answer, read_rows, worst_first
from maugpt.report_html.images import Thumbs, image_source
from maugpt.report_html.markdown import embedded_files, markdown_html
from maugpt.report_html.template import DASH, FILTERS, ROUGE_CORRECT, esc


@dataclass(kw_only=True)
class Evaluation:
    """One evaluation folder, read: its answers worst first and where its images are."""

    folder: Path
    page: str  # the output file name
    title: str
    label: str  # the sweep cell's label (the folder's name otherwise)
    answers: list[Answer]
    bad_lines: int
    kind: str  # "mauset" or "mmad"
    images: Path | None
    image_note: str  # why there are no images

    @classmethod
    def read(cls, folder: Path, *, page: str, title: str, data_dir: Path | None, label: str = "") -> Evaluation:
        rows, bad = read_rows(predictions_path(folder))
        kind = "mmad" if rows and all("options" in r or "correct_letter" in r for r in rows) else "mauset"
        images, note = image_source(folder, kind, data_dir)
        return cls(
            folder=folder,
            page=page,
            title=title,
            label=label or folder.name,
            bad_lines=bad,
            kind=kind,
            answers=worst_first([answer(r) for r in rows]),
            images=images,
            image_note=note,
        )


class ThumbSheet:
    """The thumbnails one page uses, a CSS class each, so that an image shown with several answers is
    embedded once; and the page's visible note on the images it could not show."""

    def __init__(self, thumbs: Thumbs | None, note: str) -> None:
        self.thumbs, self.note, self.classes, self.wanted = thumbs, note, {}, set()

    def tag(self, image: str) -> str:
        self.wanted.add(image)
        if self.thumbs is None or image not in self.thumbs.uris:
            why = self.thumbs.rejected.get(image) if self.thumbs else None
            return f'<div class="thumb noimg">{"no image" if why is None else f"image rejected: {esc(why)}"}</div>'
        name = self.classes.setdefault(image, f"t{len(self.classes)}")
        return f'<div class="thumb {name}" role="img" aria-label="{esc(image)}"></div>'

    def css(self) -> str:
        return "\n".join(
            f'.{name}{{background-image:url("{uri}");width:{w}px;height:{h}px}}'
            for image, name in self.classes.items()
            for uri, w, h in [self.thumbs.uris[image]]
        )

    def summary(self) -> str:
        if self.thumbs is None:
            return f'<p class="note">Images: none shown: {esc(self.note)}</p>'
        reasons = Counter(self.thumbs.rejected[i] for i in self.wanted if i in self.thumbs.rejected)
        missing = len(self.wanted - self.thumbs.uris.keys()) - sum(reasons.values())
        parts = [f"{len(self.wanted & self.thumbs.uris.keys())} of {len(self.wanted)} images shown", *self.thumbs.notes]
        if reasons:
            parts.append(
                f"{sum(reasons.values())} rejected ({', '.join(f'{n} {r}' for r, n in reasons.items())}): "
                "placeholder shown"
            )
        if missing > 0:
            parts.append(f"{missing} not found in the data folder")
        return f'<p class="note">Images: {esc("; ".join(parts))}</p>'


def row_open(a: Answer, outcome: str) -> tuple[str, dict[str, str]]:
    """A gallery row's opening tag, with the data attributes the filters read, and those attributes."""
    attrs = {"domain": a.domain, "task": a.task, "product": a.product, "outcome": outcome}
    return '<article class="answer"' + "".join(f' data-{k}="{esc(v)}"' for k, v in attrs.items()) + ">", attrs


def question_html(a: Answer) -> str:
    return (
        f'<div class="qid">{esc(a.label)} · {esc(a.domain)} · {esc(a.product)} · {esc(a.task)} ({esc(a.style)})'
        f" · {esc(a.details)}</div><p><b>Question:</b> {esc(a.question)}</p>"
        f"<p><b>Reference:</b> {esc(a.reference)}</p>"
    )


def gallery(rows: list[str], attrs: list[dict[str, str]], *, total: int, kind: str, outcomes: tuple[str, ...]) -> str:
    """The gallery: what "correct" means, how many rows were left out, the filters, the rows."""
    names = {"domain": "dataset", "task": "subtask"} if kind == "mmad" else {}
    selects = []
    for name in FILTERS:
        present = {a[name] for a in attrs}
        values = (
            [o for o in outcomes if o in ("correct", "incorrect") or o in present]
            if name == "outcome"
            else sorted(present)
        )
        selects.append(
            f'<label>{names.get(name, name)} <select id="filter-{name}"><option value="all">all</option>'
            + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
            + "</select></label>"
        )
    meaning = (
        "the chosen letter is the right one"
        if kind == "mmad"
        else f"a True/False answer that parses as the reference; an open answer with ROUGE-L F1 ≥ {ROUGE_CORRECT}"
    )
    left = total - len(rows)
    return "\n".join(
        [
            '<h2 id="gallery">Answers, worst first</h2>',
            f"<p>Outcome <i>correct</i>: {esc(meaning)}. The address's hash sets the filters on opening, e.g. "
            "<code>#outcome=incorrect&amp;task=description</code>.</p>",
            f'<p class="note">The {len(rows)} worst of {total} shown; {left} left out (raise max_gallery).</p>'
            if left
            else "",
            f'<div class="filters">{"".join(selects)}<span><span id="shown">{len(rows)}</span> of {len(rows)} shown'
            "</span></div>",
            *rows,
        ]
    )


def nav(pages: list[tuple[str, str]], current: str) -> str:
    """Relative links to the other pages written together (none for a lone page)."""
    return (
        ""
        if len(pages) < 2
        else "<nav>"
        + "".join(
            f"<b>{esc(label)}</b>" if page == current else f'<a href="{esc(urllib.parse.quote(page))}">{esc(label)}</a>'
            for page, label in pages
        )
        + "</nav>"
    )


def counts(e: Evaluation) -> str:
    """How many answers of each style, and how they scored."""
    parts = []
    for style, n in Counter(a.style for a in e.answers).items():
        scored = [a for a in e.answers if a.style == style and a.score is not None]
        how = (
            "no per-answer scores"
            if not scored
            else f"mean ROUGE-L {sum(a.score for a in scored) / len(scored):.3f}"
            if style == "open"
            else f"{sum(a.outcome == 'correct' for a in scored)} correct"
        )
        parts.append(f"{n} {style} ({how})")
    bad = f"; {e.bad_lines} unreadable lines skipped" if e.bad_lines else ""
    return (
        f'<p>Source: <code>{esc(e.folder)}</code></p><p><span id="total">{len(e.answers)}</span> answers: '
        f"{esc(', '.join(parts) or 'none')}{esc(bad)}</p>"
    )


def evaluation_page(e: Evaluation, *, shown: list[Answer], sheet: ThumbSheet, links: str) -> tuple[str, str]:
    """An evaluation page's body and thumbnail CSS."""
    rows, attrs = [], []
    for a in shown:
        tag, attributes = row_open(a, a.outcome)
        attrs.append(attributes)
        rows.append(
            f'{tag}{sheet.tag(a.image)}<div class="text">{question_html(a)}<p><b>Prediction:</b> '
            f'{esc(a.prediction)}</p><p class="score">{esc(a.scores)}</p></div></article>'
        )
    tables = e.folder / "tables.md"
    markdown = (
        markdown_html(tables.read_text(encoding="utf-8", errors="replace"))
        if tables.is_file()
        else '<p class="note">no tables.md in this folder</p>'
    )
    body = "\n".join(
        [
            links,
            f"<h1>{esc(e.title)}</h1>",
            counts(e),
            sheet.summary(),
            markdown,
            embedded_files(e.folder, ["*.png", "*.csv"]),
            gallery(rows, attrs, total=len(e.answers), kind=e.kind, outcomes=("correct", "incorrect", "unscored")),
        ]
    )
    return body, sheet.css()


def combined(cells: dict[str, Answer]) -> tuple[float | None, str]:
    """A question over the cells: the mean score, and its outcome where all cells agree, else mixed."""
    scored = [a for a in cells.values() if a.score is not None]
    outcomes = {a.outcome for a in scored}
    mean = sum(a.score for a in scored) / len(scored) if scored else None
    return mean, outcomes.pop() if len(outcomes) == 1 else "mixed" if outcomes else "unscored"


def sweep_questions(evaluations: list[Evaluation]) -> list[dict[str, Answer]]:
    """Every question answered in any cell, as {cell page: answer}, lowest mean score first."""
    questions: dict[str, dict[str, Answer]] = {}
    for e in evaluations:
        for a in e.answers:
            questions.setdefault(a.qid, {})[e.page] = a
    means = {qid: combined(cells)[0] for qid, cells in questions.items()}
    return [questions[qid] for qid in sorted(questions, key=lambda q: (means[q] is None, means[q] or 0.0))]


def sweep_page(
    source: Path,
    sweep: dict,
    *,
    evaluations: list[Evaluation],
    questions: list[dict[str, Answer]],
    shown: int,
    sheet: ThumbSheet,
    links: str,
) -> tuple[str, str]:
    """The sweep page's body and thumbnail CSS: the cells, the report, the plot, and each question
    with every cell's answer side by side."""
    rows, attrs = [], []
    for cells in questions[:shown]:
        first = next(iter(cells.values()))
        tag, attributes = row_open(first, combined(cells)[1])
        attrs.append(attributes)
        cards = "".join(
            f'<div class="cell {a.outcome}"><a href="{esc(urllib.parse.quote(e.page))}">{esc(e.label)}</a>'
            f'<p>{esc(a.prediction)}</p><p class="score">{esc(a.scores)}</p></div>'
            if (a := cells.get(e.page))
            else f'<div class="cell"><b>{esc(e.label)}</b><p>{DASH} not answered</p></div>'
            for e in evaluations
        )
        rows.append(
            f'{tag}{sheet.tag(first.image)}<div class="text">{question_html(first)}'
            f'<div class="cells">{cards}</div></div></article>'
        )
    done = {e.page for e in evaluations}
    cells = "".join(
        f'<li><a href="{esc(urllib.parse.quote(cell_page(c)))}">{esc(c.get("label", c["name"]))}</a></li>'
        if cell_page(c) in done
        else f"<li>{esc(c.get('label', c['name']))}: no evaluation yet</li>"
        for c in sweep["cell_list"]
    )
    body = "\n".join(
        [
            links,
            f"<h1>{esc(sweep_title(source, sweep))}</h1>",
            f"<p>{esc(sweep['spec'].get('description', ''))}</p>",
            f'<p>Source: <code>{esc(source)}</code></p><p><span id="total">{len(sweep["cell_list"])}'
            f"</span> cells, {len(evaluations)} with an evaluation:</p><ul>{cells}</ul>",
            sheet.summary(),
            sweep_tables(source),
            embedded_files(source, ["report*.png", "report*.csv"]),
            gallery(
                rows,
                attrs,
                total=len(questions),
                kind=evaluations[0].kind if evaluations else "mauset",
                outcomes=("correct", "incorrect", "mixed", "unscored"),
            ),
        ]
    )
    return body, sheet.css()


def sweep_title(source: Path, sweep: dict) -> str:
    return f"Sweep {sweep['spec'].get('name', source.name)} ({sweep['spec'].get('variant', '?')})"


def sweep_tables(folder: Path) -> str:
    """``report.md`` as HTML, or (not written yet) the cells' metrics as ``maugpt.report`` lays them out."""
    report = folder / "report.md"
    if report.is_file():
        return markdown_html(report.read_text(encoding="utf-8", errors="replace"))
    try:
        from maugpt.report import collect, table

        markdown = table(*collect(folder))[0]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f'<p class="note">no report.md, and no table from the cells\' metrics ({esc(err)})</p>'
    return (
        '<p class="note">no report.md (see <code>maugpt report</code>): this table is built from the cells\' '
        f"metrics.json</p>{markdown_html(markdown)}"
    )


def cell_page(cell: dict) -> str:
    return f"cell-{cell['name']}.html"
