"""The HTML report: self-contained pages of evaluations and sweeps, checked as files and in headless
Chromium (tools/install_chromium.sh installs it; the browser test fails, not skips, without it)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maugpt.evaluation.run import write_gzip
from maugpt.report_html import write_html
from maugpt.report_html.images import thumbnail
from maugpt.report_html.markdown import markdown_html

# Chromium as the browser test runs it: headless, no sandbox (root in a container), /tmp rather than
# a container's small /dev/shm, nothing fetched from the network (every host name fails to resolve),
# console messages and uncaught exceptions logged to stderr as CONSOLE lines.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
]
ARTICLE = re.compile(r"<article class=\"answer\"[^>]*>")


def is_red(pixel: tuple[int, int, int]) -> bool:
    """The outline's red after JPEG, told apart from the page's dull red (#c33) and the images."""
    return pixel[0] >= 230 and pixel[1] <= 40 and pixel[2] <= 40


def red_pixels(image: Image.Image) -> int:
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(((rgb[..., 0] >= 230) & (rgb[..., 1] <= 40) & (rgb[..., 2] <= 40)).sum())


# -- fixtures: shards, a run with a MAU-Set and an MMAD evaluation, a sweep --------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A tiny synthetic MAU-Set (its data folder) and its test records."""
    from maugpt.data.shards import iter_samples
    from maugpt.mauset.synthetic import build_synthetic

    out = tmp_path_factory.mktemp("shards")
    build_synthetic(out, images=16, seed=0, image_size=40, test=0.25, val=0.25, progress=False, maxcount=6, captions=14)
    samples = list(iter_samples(out / "mauset" / "test"))
    records = [s["json"] for s in samples]
    assert any(r["is_anomalous"] for r in records) and not all(r["is_anomalous"] for r in records)
    # no red of the outline's kind in the images themselves: red on a page's thumbnail is the outline
    assert all(red_pixels(s.get("png") or s["jpg"]) == 0 for s in samples)
    return out / "mauset", records


def mauset_rows(records: list[dict]) -> list[dict]:
    """Right answers to every test question, but: a wrong True/False answer about an anomalous
    image (``WRONG``), open answers of ROUGE-L 0.1 (``LOW``) and 0.4 (``MID``), one unscored row as
    older files have it, and one prediction full of markup and odd characters."""
    rows = []
    for record in records:
        for i, qa in enumerate(record["qa"]):
            row = {
                "key": record["key"],
                "qa_index": i,
                "source": record["source"],
                "domain": record["domain"],
                "product": record["product"],
                "defect_class": record["defect_class"],
                "generic_defect": False,
                "is_anomalous": record["is_anomalous"],
                "task": qa["task"],
                "style": qa["style"],
                "question": qa["question"],
                "reference": qa["answer"],
                "prediction": qa["answer"],
            }
            if qa["style"] == "discriminative":
                row |= {"verdict": qa["answer"], "correct": True}
            else:
                row |= {
                    "rouge1": 1.0,
                    "rouge2": 1.0,
                    "rougeL": 1.0,
                    "bleu": {"hyp_len": 3, "ref_len": 3, "matches": [3, 2, 1, 0], "totals": [3, 2, 1, 0]},
                }
            rows.append(row)
    wrong = next(r for r in rows if r["is_anomalous"] and r["style"] == "discriminative")
    wrong |= {"prediction": "WRONG False", "verdict": "False", "correct": False}
    opened = [r for r in rows if r["style"] == "open"]
    opened[0] |= {"prediction": "LOW", "rouge1": 0.2, "rouge2": 0.0, "rougeL": 0.1}
    opened[1] |= {"prediction": "MID", "rouge1": 0.5, "rouge2": 0.3, "rougeL": 0.4}
    for name in ("rouge1", "rouge2", "rougeL", "bleu", "qa_index", "is_anomalous"):
        opened[2].pop(name)
    opened[3]["prediction"] = '<script>alert("x")</script> é ✓ \ud800'
    return rows


def write_rows(folder: Path, rows: list[dict], tables: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if tables:
        (folder / "tables.md").write_text(tables)
    return folder


MMAD_ROWS = [
    {
        "image": "MVTec-AD/bottle/test/good/000.png",
        "question_index": 0,
        "dataset": "MVTec-AD",
        "subtask": "Anomaly Detection",
        "question": "Is there a defect?",
        "options": {"A": "Yes", "B": "No"},
        "correct_letter": "B",
        "answer": "B",
        "letter": "B",
        "correct": True,
        "likelihood_answer": "B",
        "likelihood_letter": "B",
        "likelihood_correct": True,
    },
    {
        "image": "MVTec-AD/bottle/test/bad/001.png",
        "question_index": 0,
        "dataset": "MVTec-AD",
        "subtask": "Defect Classification",
        "question": "Which defect?",
        "options": {"A": "crack", "B": "hole"},
        "correct_letter": "A",
        "answer": "I think B",
        "letter": "B",
        "correct": False,
        "likelihood_answer": "",
        "likelihood_letter": "",
        "likelihood_correct": False,
    },
    {
        "image": "VisA/candle/test/good/002.png",
        "question_index": 1,
        "dataset": "VisA",
        "subtask": "Anomaly Detection",
        "question": "Is there a defect?",
        "options": {"A": "Yes", "B": "No"},
        "correct_letter": "B",
        "answer": "B",
        "letter": "B",
        "correct": True,
        "likelihood_answer": "",
        "likelihood_letter": "",
        "likelihood_correct": False,
    },
]
TABLES = "### Open-ended QA (%)\n\n| answers | ROUGE-L |\n|---|---:|\n| all | 67.43 |\n\nROUGE: F1 <i>\n"


@pytest.fixture
def run(tmp_path, shards) -> Path:
    """A run folder: ``evaluation`` (MAU-Set, with tables.md, a CSV and a figure), ``evaluation-2``
    (MMAD; the config names no data_root) and the Lightning ``config.yaml`` naming the shards."""
    data, records = shards
    folder = tmp_path / "version_0"
    evaluation = write_rows(folder / "evaluation", mauset_rows(records), TABLES)
    (evaluation / "scores.csv").write_text("metric,value\nrougeL,0.6743\n")
    Image.new("RGB", (30, 20), (0, 90, 200)).save(evaluation / "figure.png")
    write_rows(folder / "evaluation-2", MMAD_ROWS, "### Generation (accuracy %)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (folder / "config.yaml").write_text(
        f"data:\n  class_path: maugpt.data.MAUSetDataModule\n  init_args:\n    data_dir: {data}\n    batch_size: 2\n"
    )
    return folder


def thumbs_by_image(page: str) -> dict[str, Image.Image]:
    """The page's thumbnails by image id (the CSS class each gallery thumbnail names)."""
    uris = dict(re.findall(r'\.(t\d+)\{background-image:url\("data:image/jpeg;base64,([A-Za-z0-9+/=]+)"\)', page))
    tags = re.findall(r'<div class="thumb (t\d+)" role="img" aria-label="([^"]+)"', page)
    return {image: Image.open(io.BytesIO(base64.b64decode(uris[name]))) for name, image in tags}


def assert_self_contained(page: str) -> None:
    """Nothing on the page comes from elsewhere: images are data URIs, links go to sibling pages."""
    for value in re.findall(r'\bsrc="([^"]*)"', page) + re.findall(r'url\("?([^")]*)', page):
        assert value.startswith("data:"), value[:80]
    for value in re.findall(r'\bhref="([^"]*)"', page):
        assert value.startswith("data:") or re.fullmatch(r"[\w%.-]+\.html", value), value[:80]
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page)
    assert "@import" not in page


# -- pages as files --------------------------------------------------------------------------------
def test_a_run_gives_one_self_contained_page_per_evaluation_worst_answers_first(run, tmp_path, shards):
    written = write_html(run, tmp_path / "out")
    assert [p.name for p in written] == ["evaluation.html", "evaluation-2.html"]
    page = written[0].read_bytes().decode("utf-8")  # valid UTF-8: the lone surrogate became "?"
    assert_self_contained(page)
    rows = mauset_rows(shards[1])
    articles = ARTICLE.findall(page)
    assert len(articles) == len(rows) and f'<span id="total">{len(rows)}</span>' in page
    assert f'<span id="shown">{len(rows)}</span>' in page
    order = [page.index(f"<b>Prediction:</b> {text}") for text in ("WRONG False", "LOW", "MID")]
    assert order == sorted(order) and "WRONG False" in ARTICLE.split(page)[1]
    assert 'data-outcome="incorrect"' in articles[0] and articles[-1].endswith('data-outcome="unscored">')
    assert "score —" in page  # the row without scores, as older files have it
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; é ✓ ?" in page and "<script>alert" not in page
    assert "<h3>Open-ended QA (%)</h3>" in page and '<td class="r">67.43</td>' in page and "ROUGE: F1 &lt;i&gt;" in page
    assert 'download="scores.csv" href="data:text/csv;base64,' in page and 'alt="figure.png"' in page
    assert 'href="evaluation-2.html"' in page and 'href="evaluation.html"' in written[1].read_text()
    # every test image shown, and the anomalous ones (masks) outlined in red, the normal ones not
    thumbs = thumbs_by_image(page)
    anomalous = {r["key"]: r["is_anomalous"] for r in shards[1]}
    assert set(thumbs) == set(anomalous) and "Images: 4 of 4 images shown" in page
    assert all((red_pixels(t) > 10) == anomalous[key] for key, t in thumbs.items())
    mmad = written[1].read_text()
    assert "Images: none shown: " in mmad and "config.yaml gives no data.init_args.data_root" in mmad
    assert '<select id="filter-domain">' in mmad and "dataset <select" in mmad


def test_mmad_images_come_from_the_data_root_and_bad_ones_get_a_placeholder(tmp_path):
    root = tmp_path / "MMAD"
    (root / "MVTec-AD/bottle/test/good").mkdir(parents=True)
    (root / "MVTec-AD/bottle/test/bad").mkdir(parents=True)
    Image.new("RGB", (64, 48), (20, 160, 60)).save(root / MMAD_ROWS[0]["image"])
    (root / MMAD_ROWS[1]["image"]).write_bytes(b"not an image")  # VisA's image is missing altogether
    folder = write_rows(tmp_path / "evaluation", MMAD_ROWS)
    page = write_html(folder, tmp_path / "out", data_dir=root)[0].read_text()
    assert_self_contained(page)
    assert "Images: 1 of 3 images shown; no outlines" in page
    assert "; 1 rejected (1 not an image): placeholder shown; 1 not found in the data folder</p>" in page
    assert "image rejected: not an image" in page and "no tables.md" in page
    assert "I think B" in ARTICLE.split(page)[1]  # the wrong answer first
    assert thumbs_by_image(page)[MMAD_ROWS[0]["image"]].size == (64, 48)  # never enlarged
    assert '<option value="bottle">' in page and '<option value="Defect Classification">' in page


def test_the_gallery_is_capped_and_says_how_many_are_left_out(run, tmp_path):
    page = write_html(run / "evaluation", tmp_path / "out", max_gallery=2)[0].read_text()
    assert len(ARTICLE.findall(page)) == 2 and "left out" in page and "Images: 2 of 2 images shown" in page


def test_without_a_data_folder_the_page_says_so(tmp_path, shards):
    folder = write_rows(tmp_path / "evaluation", mauset_rows(shards[1])[:3])
    (folder / "predictions.jsonl").write_text((folder / "predictions.jsonl").read_text() + "{not json\n")
    page = write_html(folder, tmp_path / "out")[0].read_text()
    assert 'class="note">Images: none shown: ' in page and "1 unreadable lines skipped" in page
    assert page.count('class="thumb noimg">no image<') == 3


def test_a_sweep_gives_its_page_and_one_per_cell_linked(tmp_path, shards, monkeypatch):
    data, records = shards
    monkeypatch.chdir(tmp_path)  # the cells' config.yaml names the data folder relative to here
    shutil.copytree(data, tmp_path / "data")
    sweep = tmp_path / "sweep"
    cells = [
        {"name": "lora", "label": "LoRA", "group": "", "seed": None, "overrides": {}},
        {"name": "amoe", "label": "AMoE-LoRA", "group": "", "seed": None, "overrides": {}},
        {"name": "late", "label": "not run", "group": "", "seed": None, "overrides": {}},
    ]
    sweep.mkdir()
    (sweep / "sweep.json").write_text(
        json.dumps(
            {
                "spec": {"name": "ablation", "variant": "tiny", "cells": cells, "metrics": ["test/rougeL"]},
                "cells": [c["name"] for c in cells],
            }
        )
    )
    rows = mauset_rows(records)
    better = [
        r | {"prediction": "fixed", "verdict": "True", "correct": True} if r["prediction"] == "WRONG False" else r
        for r in rows
    ]
    for name, answers in (("lora", rows), ("amoe", better)):
        write_rows(sweep / "cells" / name / "evaluation", answers, TABLES)
    plain = sweep / "cells" / "amoe" / "evaluation" / "predictions.jsonl"  # a sweep cell keeps them gzipped
    write_gzip(plain.with_suffix(".jsonl.gz"), plain.read_bytes())
    plain.unlink()
    for name in ("lora", "amoe"):
        (sweep / "cells" / name / "config.yaml").write_text("data:\n  init_args:\n    data_dir: data\n")
        (sweep / "cells" / name / "metrics.json").write_text(json.dumps({"test/rougeL": 0.5}))
    (sweep / "report.md").write_text("### ablation (tiny)\n\n| cell | test/rougeL |\n|---|---:|\n| LoRA | 50.00 |\n")
    Image.new("RGB", (40, 30), (250, 250, 250)).save(sweep / "report.png")
    written = write_html(sweep, tmp_path / "out")
    assert [p.name for p in written] == ["index.html", "cell-lora.html", "cell-amoe.html"]
    index = written[0].read_text()
    assert_self_contained(index)
    assert 'href="cell-lora.html"' in index and 'href="cell-amoe.html"' in index
    assert "not run: no evaluation yet" in index and "Images: 4 of 4 images shown" in index
    assert '<td class="r">50.00</td>' in index and 'alt="report.png"' in index
    articles = ARTICLE.split(index)[1:]
    assert len(articles) == len({(r["key"], r.get("qa_index"), r["question"]) for r in rows})
    assert "LOW" in articles[0]  # wrong in both cells: before the question only one cell gets wrong
    mixed = next(i for i, a in enumerate(articles) if "WRONG False" in a)
    assert "fixed" in articles[mixed] and 'data-outcome="mixed"' in ARTICLE.findall(index)[mixed]
    assert all(len(re.findall(r'<div class="cell[ "]', a)) == 2 for a in articles)
    for cell in written[1:]:
        text = cell.read_text()
        assert 'href="index.html"' in text and "Images: " in text and "of" in text
        assert_self_contained(text)


def test_existing_pages_are_refused_and_overwritten_only_when_asked(run, tmp_path):
    write_html(run / "evaluation-2", tmp_path / "out")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "out" / "evaluation-2.html"))):
        write_html(run / "evaluation-2", tmp_path / "out")
    assert write_html(run / "evaluation-2", tmp_path / "out", overwrite=True)


def test_a_folder_that_is_no_evaluation_run_or_sweep_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is neither an evaluation folder \(predictions.jsonl\).*sweep.json"):
        write_html(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_markdown_tables_headings_and_paragraphs():
    html = markdown_html("# Title\n\nline one\nline <two>\n\n| a | b \\| c |\n|:---|---:|\n| x | 1 |\n| y | 2 |\ntail")
    assert html.splitlines() == [
        "<h1>Title</h1>",
        "<p>line one<br>line &lt;two&gt;</p>",
        '<table><tr><th>a</th><th class="r">b | c</th></tr><tr><td>x</td><td class="r">1</td>'
        '</tr><tr><td>y</td><td class="r">2</td></tr></table>',
        "<p>tail</p>",
    ]


def test_thumbnails_outline_boxes_and_mask_contours_in_red():
    grey = Image.new("RGB", (400, 200), (128, 128, 128))
    assert red_pixels(thumbnail(grey)) == 0
    boxed = thumbnail(grey, boxes=[[0.25, 0.25, 0.75, 0.75]])
    assert boxed.size == (160, 80) and is_red(boxed.getpixel((40, 40))) and not is_red(boxed.getpixel((80, 40)))
    mask = Image.new("L", (400, 200), 0)
    mask.paste(255, (100, 50, 300, 150))
    outlined = thumbnail(grey, mask=mask)  # the defect covers x 40–119, y 20–59 of the thumbnail
    assert is_red(outlined.getpixel((38, 40))) and is_red(outlined.getpixel((121, 40)))  # just outside it
    assert not any(is_red(outlined.getpixel(xy)) for xy in [(40, 40), (80, 40), (10, 10), (35, 40)])
    assert red_pixels(thumbnail(grey, mask=Image.new("L", (400, 200), 0), boxes=[[0, 0, 0.5, 0.5]])) > 0


# -- in the browser ----------------------------------------------------------------------------------
def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium once with its own profile folder; fail (not skip) when it is missing."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not on PATH: run tools/install_chromium.sh (make test does) to install it")
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console or threw (Chromium logs both as CONSOLE lines)."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[(:]", line)]


def visible(dom: str) -> tuple[int, int]:
    """The rows not hidden by the filters, and the shown counter's value."""
    rows = [tag for tag in ARTICLE.findall(dom) if not re.search(r'\shidden(=""|\s|>)', tag)]
    return len(rows), int(re.search(r'<span id="shown">(\d+)</span>', dom).group(1))


def test_the_page_filters_by_hash_shows_its_images_and_logs_nothing_in_chromium(run, tmp_path, shards):
    # the check can fail: a deliberate console error and an exception are both seen
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><p>x</p><script>console.error("boom"); missing();</script>')
    assert len(console_messages(chromium(tmp_path / "p0", "--dump-dom", broken.as_uri()).stderr)) == 2
    page = write_html(run, tmp_path / "out")[0]
    everything = chromium(tmp_path / "p1", "--dump-dom", page.as_uri())
    wrong = chromium(tmp_path / "p2", "--dump-dom", page.as_uri() + "#outcome=incorrect")
    task = next(r["task"] for r in mauset_rows(shards[1]) if r["prediction"] == "LOW")
    both = chromium(tmp_path / "p3", "--dump-dom", page.as_uri() + f"#outcome=incorrect&task={task}")
    shot = tmp_path / "shot.png"
    screenshot = chromium(tmp_path / "p4", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    for result in (everything, wrong, both, screenshot):
        assert console_messages(result.stderr) == []
    total = len(ARTICLE.findall(everything.stdout))
    assert visible(everything.stdout) == (total, total)
    assert visible(wrong.stdout) == (3, 3)  # WRONG, LOW and MID: ROUGE-L under 0.5
    expected = sum(
        r["task"] == task and r["prediction"] in ("WRONG False", "LOW", "MID") for r in mauset_rows(shards[1])
    )
    assert 0 < expected < 3 and visible(both.stdout) == (expected, expected)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000) and len(image.getcolors(1 << 24)) > 50
    assert red_pixels(image) > 20  # the outlined thumbnail of the wrong answer, at the top, rendered
