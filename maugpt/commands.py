"""The ``maugpt`` sub-commands over the library: building, inspecting, scoring, judging, sweeping.

Each is a plain typed function whose signature and docstring are its ``--help`` (jsonargparse);
``maugpt.cli`` registers them and ``tools/*.py`` run the same functions as scripts. Heavy imports
happen inside each command, so that ``maugpt --help`` and the light commands start fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Literal

from maugpt.download import HUB_RELEASES
from maugpt.evaluation.judge import SYSTEM, USER_TEMPLATE
from maugpt.mauset.sources import SOURCES

#: ``maugpt build --source``: every registered source, or all of them.
SourceChoice = Literal[(*SOURCES, "all")]  # type: ignore[valid-type]  # built from the registry
DownloadChoice = Literal[(*SOURCES, "all", *HUB_RELEASES)]  # type: ignore[valid-type]


def build(
    *,
    source: SourceChoice,
    root: Path,
    out: Path,
    seed: int = 0,
    test: float = 0.2,
    val: float = 0.05,
    max_side: int = 512,
    image_format: Literal["jpg", "png"] = "jpg",
    maxcount: int = 1000,
    maxsize: float = 1e9,
    overwrite: bool = False,
    partial: bool = False,
    paper_subset: bool = False,
    knowledge: Path | None = None,
) -> None:
    """Scan, split (fixed ratio per source and class), build QA, and write shards with statistics.

    Args:
        source: one source, or ``all`` (then ``root/<source>`` holds each release).
        root: the release folder of the source (or the folder of all releases).
        out: output folder; ``train/``, ``val/`` and ``test/`` are written into it.
        seed: seed of the split and of the question sampling.
        test: fraction of each source's normal and of its abnormal images that goes to test.
        val: fraction that goes to validation.
        max_side: images are scaled down so that their longer side is at most this.
        image_format: encoding of the stored images.
        maxcount: samples per shard at most.
        maxsize: bytes per shard at most.
        overwrite: replace the split folders of a non-empty ``out``.
        partial: build from part of a release on purpose; without it a source that yields fewer
            than 90 % of its release's images fails (a missing folder, another packaging).
        paper_subset: keep the paper's Table 1 normal and abnormal counts per source (a seeded,
            even draw over products; all images where a release has fewer).
        knowledge: a folder of your own products.yaml / questions.yaml / defects.yaml, merged over
            the packaged ones (new products or defect classes of a release, edited texts). Defect
            classes found in neither get a generic description, marked and listed in the stats.

    A mistake in the input (a folder without the release's layout, a missing root or class folder,
    too few images, an unknown product, a non-empty ``out``) exits with one ``build: …`` message.
    """
    import yaml

    from maugpt.mauset.build import BuildError, build_mauset
    from maugpt.mauset.knowledge import Knowledge

    sources = list(SOURCES) if source == "all" else [source]
    try:
        merged = Knowledge(overlay=knowledge)
    except (FileNotFoundError, ValueError, yaml.YAMLError) as err:  # the overlay folder or its files
        raise SystemExit(f"build: {err}") from None
    try:
        build_mauset(
            sources,
            root,
            out,
            knowledge=merged,
            seed=seed,
            test=test,
            val=val,
            max_side=max_side,
            image_format=image_format,
            maxcount=maxcount,
            maxsize=maxsize,
            overwrite=overwrite,
            partial=partial,
            paper_subset=paper_subset,
        )
    except BuildError as err:  # the user's to fix; anything else is a bug and keeps its traceback
        raise SystemExit(f"build: {err}") from None


def download(source: DownloadChoice, *, root: Path, accept_licence: bool = False) -> None:
    """Download a source's public release (or ``all`` seven), verify it and unpack it into
    ``root/<source>``, the layout ``maugpt build --source all --root ROOT`` reads; or MMAD
    (``mmad``: ``root/MMAD``, the ``data_root`` of ``configs/eval/mmad.yaml``) or LLaVA-Pretrain
    (``llava-pretrain``: ``root/LLaVA-Pretrain/{blip_laion_cc_sbu_558k.json,images/}``, what
    ``maugpt build-llava`` reads) from the Hugging Face Hub, through ``huggingface_hub`` and its
    cache (``HF_HUB_OFFLINE=1`` uses a cached copy).

    Each file comes from the release's own distribution point, resumed after a cut connection and
    checked against its SHA-256 (where the hash comes from is printed with it); a verified,
    unpacked source is not downloaded again. A file offered only behind a form or a login is not
    fetched: its page, file name and folder are printed, and what you save there is verified.

    Args:
        source: one source, ``all`` seven, ``mmad`` or ``llava-pretrain``.
        root: the folder of all releases; the downloads themselves stay in ``root/.downloads``.
        accept_licence: accept the printed licence(s); needed once per source and ``root`` (several
            releases are for non-commercial research only).

    A licence not accepted, a wrong hash (the file is removed), an HTTP error or a download cut too
    often (the part is kept for the next run) exits with one ``download: …`` message per source.
    """
    from maugpt.download import HUB_RELEASES, DownloadError, Downloads, install_hub

    downloads, failed = Downloads(root), []
    if source in HUB_RELEASES:
        try:
            install_hub(downloads, source, HUB_RELEASES[source], accept_licence=accept_licence)
        except DownloadError as err:
            raise SystemExit(f"download: {err}") from None
        return
    for name in list(SOURCES) if source == "all" else [source]:
        release = SOURCES[name].release
        if release is None:
            failed.append(f"{name}: no public release to download is recorded for it")
            continue
        try:
            downloads.install(name, release, accept_licence=accept_licence)
        except DownloadError as err:
            failed.append(str(err))
    if failed:
        raise SystemExit("download: " + "\ndownload: ".join(failed))


def build_llava(
    *,
    annotations: Path,
    images: Path,
    out: Path,
    max_side: int = 512,
    image_format: Literal["jpg", "png"] = "jpg",
    maxcount: int = 5000,
    limit: int | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``out/train`` shards with one caption pair per image (task ``caption``).

    Args:
        annotations: the ``blip_laion_cc_sbu_558k.json`` file.
        images: the folder the records' image paths are relative to.
        out: output folder.
        max_side: images are scaled down so that their longer side is at most this.
        image_format: encoding of the stored images.
        maxcount: samples per shard at most.
        limit: convert only the first N records.
        overwrite: replace the shards of a non-empty ``out``.

    A missing annotation file or image folder, an annotation file that is not a JSON list, or a
    non-empty ``out`` exits with one ``build_llava: …`` message.
    """
    from maugpt.mauset.llava import convert_llava_pretrain
    from maugpt.mauset.stats import format_statistics

    try:
        stats = convert_llava_pretrain(annotations, images, out, max_side, image_format, maxcount, limit, overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # what the converter raises for its inputs
        raise SystemExit(f"build_llava: {err}") from None
    print(format_statistics(stats, "llava_pretrain train"))


def synth(
    *,
    out: Path,
    images: int = 700,
    seed: int = 0,
    image_size: int = 224,
    captions: int | None = None,
    anomaly_fraction: float = 0.5,
    test: float = 0.2,
    val: float = 0.05,
    references: int = 0,
    overwrite: bool = False,
) -> None:
    """Procedural images of 14 products in the 6 domains, with defects drawn at known positions.

    Args:
        out: output folder: ``mauset/{train,val,test}`` and ``captions/{train,val}``.
        images: number of MAU-Set images.
        seed: the seed; the same seed writes the same data.
        image_size: side of the square images, in pixels.
        captions: number of caption images (default: as many as ``images``).
        anomaly_fraction: share of images with a defect.
        test: fraction of each class that goes to test.
        val: fraction that goes to validation.
        references: normal reference images of the same product stored with each sample.
        overwrite: replace the shards of a non-empty ``out``.

    Fractions out of range or a non-empty ``out`` exit with one ``synth: …`` message.
    """
    from maugpt.mauset.stats import format_statistics
    from maugpt.mauset.synthetic import build_synthetic

    # checked here, before build_synthetic clears anything (it splits after preparing the folders)
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise SystemExit(f"synth: --test and --val must be fractions in [0, 1) with test + val < 1, got {test}, {val}")
    try:
        stats = build_synthetic(
            out,
            images=images,
            seed=seed,
            image_size=image_size,
            captions=captions,
            anomaly_fraction=anomaly_fraction,
            test=test,
            val=val,
            references=references,
            overwrite=overwrite,
        )
    except FileExistsError as err:  # a non-empty out without --overwrite
        raise SystemExit(f"synth: {err}") from None
    for name, split_stats in stats.items():
        print(format_statistics(split_stats, name))


def inspect_shards(folder: Path, samples: int = 2) -> None:
    """Summarise every split folder under ``folder`` (or ``folder`` itself), decoding every sample.

    Args:
        folder: a split folder (with index.json) or a folder of split folders.
        samples: how many decoded samples to print per split.

    A sample counts only if training and evaluation can use it (the reader's one rule: a valid
    record and a decodable image); the others are reported as skipped, by reason, as the data
    modules skip them.
    """
    from maugpt.data.shards import SkipCounter, iter_samples
    from maugpt.mauset.stats import format_statistics, split_statistics

    splits = [folder] if (folder / "index.json").is_file() else sorted(p.parent for p in folder.glob("**/index.json"))
    if not splits:
        raise SystemExit(f"inspect_shards: no index.json under {folder}: not a folder of maugpt shards")
    for split in splits:
        counter = SkipCounter()
        try:
            stream = iter_samples(split, counter)  # reads index.json now
        except ValueError as err:
            raise SystemExit(f"inspect_shards: {err}") from None
        decoded = list(stream)
        stats = {**split_statistics(s["json"] for s in decoded), "skipped_unreadable": counter.count}
        print(format_statistics(stats, str(split)))
        if counter.count:
            print(
                f"-- skipped {counter.count} sample(s) that cannot be used ("
                + ", ".join(f"{n} {reason}" for reason, n in counter.reasons.items())
                + "); first: "
                + "; ".join(counter.notes)
            )
        for sample in islice(decoded, samples):
            members = {
                k: (f"image {v.size[0]}x{v.size[1]}" if hasattr(v, "size") else "record")
                for k, v in sample.items()
                if not k.startswith("__")
            }
            print(f"-- sample {sample['__key__']}: {members}")
            print(json.dumps(sample["json"], indent=1)[:1500])


def tiny_base(
    *,
    shards: Path,
    out: Path,
    seed: int = 0,
    vit_steps: int = 900,
    llm_steps: int = 150,
    vit_extra_images: int = 6000,
    overwrite: bool = False,
) -> None:
    """Train the tokenizer, build and briefly pretrain the tiny LM and ViT, save them in standard formats.

    Args:
        shards: the folder tools/synth_mauset.py wrote (with mauset/ and captions/).
        out: output folder: llm/ (transformers) and vision/ (timm) are written into it.
        seed: the seed of initialisation and pretraining.
        vit_steps: pretraining steps of the ViT (product and defect classification).
        llm_steps: pretraining steps of the LM (the synthetic questions and answers).
        vit_extra_images: procedural images of another seed added to the ViT's pretraining data.
        overwrite: replace llm/ and vision/ in a non-empty ``out``.

    Shards without ``mauset/train`` and ``captions/train`` or a non-empty ``out`` exit with one
    ``make_tiny_base: …`` message.
    """
    from maugpt.data.shards import read_index
    from maugpt.tiny_base import make_tiny_base

    for split in (shards / "mauset" / "train", shards / "captions" / "train"):
        try:
            read_index(split)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"make_tiny_base: {err}; --shards is the folder maugpt synth wrote") from None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SystemExit(f"make_tiny_base: {out} is not empty; pass --overwrite true to replace llm/ and vision/")
        for name in ("llm", "vision"):
            shutil.rmtree(out / name, ignore_errors=True)
    paths = make_tiny_base(
        out, shards, seed=seed, vit_steps=vit_steps, llm_steps=llm_steps, vit_extra_images=vit_extra_images
    )
    print(f"tiny base written: llm {paths['llm']}, vision {paths['vision']}")


#: The text fields every MAU-Set prediction row needs (as ``maugpt test`` writes them).
FIELDS = ("style", "task", "domain", "question", "reference", "prediction")


def score_mauset(
    predictions: Path,
    *,
    bleu_tokenize: Literal["none", "13a"] = "none",
    rouge_stemmer: bool = False,
    model: str = "model",
    out: Path | None = None,
) -> None:
    """Print the discriminative accuracy (per domain, macro and pooled) and ROUGE/BLEU tables; with
    ``out``, also write them and the predictions with each answer's own scores.

    Args:
        predictions: a ``predictions.jsonl`` as ``maugpt test`` writes it, or the evaluation folder
            of a run (every ``predictions*.jsonl`` in it); any
            model's rows with the same fields (style, task, domain, question, reference,
            prediction) score the same way.
        bleu_tokenize: sacrebleu's tokenizer for BLEU-4: ``none`` (whitespace, as ``maugpt test``
            by default) or ``13a``.
        rouge_stemmer: stem tokens (Porter) before ROUGE.
        model: the model's name in Table 2's row.
        out: also write ``tables.md`` (with the breakdowns per source, product, defect class and
            task × domain), ``scores.csv``, ``breakdown.csv`` and ``predictions.jsonl`` (the rows with
            each answer's scores, as ``maugpt test`` writes them) into this folder (never over
            existing ones).
    """
    from maugpt.evaluation.mauset import MAUSetScores, tables, write_tables
    from maugpt.evaluation.run import read_jsonl, write_jsonl

    written = ("tables.md", "scores.csv", "breakdown.csv", "predictions.jsonl")
    if out is not None and any((out / name).exists() for name in written):
        raise SystemExit(f"score_mauset: {out} already holds one of {', '.join(written)}; choose another --out")
    files = sorted(predictions.glob("predictions*.jsonl")) if predictions.is_dir() else [predictions]
    from tqdm import tqdm

    scores = MAUSetScores(bleu_tokenize, rouge_stemmer)
    rows = []
    try:
        for path in files:
            read = read_jsonl(path)
            for line, row in enumerate(tqdm(read, desc=f"scoring {path.name}", unit="answer", leave=False), 1):
                missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
                if missing:
                    raise ValueError(f"{path}, line {line}: needs text fields {missing}")
                rows.append({**row, **scores.add(row, row["prediction"])})
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"score_mauset: {err}") from None
    if not rows:
        raise SystemExit(f"score_mauset: no predictions in {predictions}")
    results = scores.compute()
    if out is None:
        print(f"{len(rows)} predictions\n\n{tables(results, model=model, settings=scores.settings)[0]}", end="")
        return
    out.mkdir(parents=True, exist_ok=True)
    markdown = write_tables(out, results, rows, model=model, settings=scores.settings)
    write_jsonl(out / "predictions.jsonl", rows)
    print(f"{len(rows)} predictions\n\n{markdown}\ntables, breakdowns and scored predictions written to {out}")


def score_mmad(
    *,
    questions: Path,
    predictions: Path,
    unparsable: Literal["wrong", "official"] = "wrong",
    script: Literal["llava", "qwen", "internvl", "gpt4v"] | None = None,
    first_letter: bool | None = None,
    closest_option: bool | None = None,
    field: str = "answer",
    csv: Path | None = None,
    scored: Path | None = None,
    overwrite: bool = False,
) -> None:
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
        scored: also write the predictions here with each answer's extracted ``letter`` and whether
            it is ``correct`` (``likelihood_letter``/``likelihood_correct`` for that field).
        overwrite: replace an existing CSV or scored file.
    """
    from maugpt.evaluation.run import read_jsonl, write_jsonl
    from maugpt.mmad.prompts import query_script
    from maugpt.mmad.scoring import load_questions, match_predictions, score, score_rows

    for path in (csv, scored):
        if path is not None and path.exists() and not overwrite:
            raise SystemExit(f"score_mmad: {path} exists; pass --overwrite true to replace it")
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
    from tqdm import tqdm

    progress = tqdm(pairs, desc=f"scoring {predictions.name}", unit="answer", leave=False)
    scores = score(progress, unparsable=unparsable, last_letter=last, closest_option=closest)
    print(
        f"letter extraction: {'last' if last else 'first'} letter A–E"
        f"{', else the closest option text' if closest else ', no fallback'}"
    )
    print(scores.markdown())
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text(scores.csv())
        print(f"CSV written to {csv}")
    if scored is not None:
        score_rows(rows, pairs, scores, "likelihood_" if field == "likelihood_answer" else "")
        scored.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(scored, rows)
        print(f"scored predictions written to {scored}")


def judge_with_progress(judge, rows: list[dict]) -> list:
    """``judge.judge(rows)`` behind a progress bar (on stderr) that counts the answers judged,
    taken from the verdict cache and left unjudged."""
    from tqdm import tqdm

    counts = dict.fromkeys(("judged", "cached", "unjudged"), 0)
    with tqdm(total=len(rows), desc="judge", unit="answer", dynamic_ncols=True) as bar:

        def progress(outcome: str) -> None:
            counts[outcome] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update()

        return judge.judge(rows, progress=progress)


def judge(
    predictions: Path,
    *,
    base_url: str | None = None,
    model: str = "gpt-4o",
    api_key_env: str = "OPENAI_API_KEY",
    cache: Path | None = None,
    concurrency: int = 4,
    retries: int = 4,
    system: str = SYSTEM,
    template: str = USER_TEMPLATE,
    max_unjudged: float = 0.01,
    timeout: float = 60.0,
    deadline: float = 0.0,
    max_reply_bytes: int = 1 << 20,
) -> None:
    """Judge the open-ended answers of a predictions file (``maugpt test`` writes one).

    After the table it prints why answers stayed unjudged, counted by reason (``HTTP 503``,
    ``timeout``, ``reply too large``, ``not JSON``, ``overall deadline`` …).

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
        timeout: seconds one request may take in all (connecting, waiting, reading the whole
            reply); a server that stalls or trickles is cut off then (and retried).
        deadline: seconds the whole run may take; 0: no limit (the default: a run's length grows
            with the answers and the endpoint's rate limit; each answer is bounded anyway by
            ``timeout`` and ``retries``, and a cut run resumes from the cache). When it passes,
            answers not yet judged stay unjudged (``overall deadline``) and nothing waits longer.
        max_reply_bytes: the longest reply read (default 1 MiB; a verdict is about 1 KB); a longer
            one is abandoned unread and its answer stays unjudged (``reply too large``).
    """
    from maugpt.evaluation.judge import MACRO, POOLED, Judge, failure_counts, judged_accuracy
    from maugpt.evaluation.run import read_jsonl

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
    missing = [
        i
        for i, r in enumerate(rows, 1)
        if not all(isinstance(r.get(k), str) for k in ("question", "reference", "prediction"))
    ]
    if missing:
        raise SystemExit(
            f"judge: {len(missing)} open-ended rows lack question/reference/prediction text (e.g. rows {missing[:3]})"
        )
    if not rows:
        raise SystemExit(f"judge: {predictions} holds no open-ended answer to judge")
    cache = cache or predictions.parent / f"judge-{model.replace('/', '_')}.jsonl"
    try:
        judge = Judge(
            base_url,
            model,
            cache,
            api_key_env=api_key_env,
            concurrency=concurrency,
            retries=retries,
            system=system,
            template=template,
            timeout=timeout,
            deadline=deadline,
            max_reply_bytes=max_reply_bytes,
        )
    except ValueError as err:
        raise SystemExit(f"judge: {err}") from None
    verdicts = judge_with_progress(judge, rows)
    table = judged_accuracy(rows, verdicts)
    print(f"| answers | LLM-judged accuracy % ({model}) | judged | unjudged |\n|---|---:|---:|---:|")
    for group in [g for g in table if g not in (MACRO, POOLED)] + [MACRO, POOLED]:
        row = table[group]
        print(f"| {group} | {row['accuracy']:.2f} | {row['judged']} | {row['unjudged']} |")
    if reasons := failure_counts(verdicts):
        print("unjudged by reason: " + ", ".join(f"{count} {reason}" for reason, count in reasons.items()))
    print(f"requests sent: {judge.requests}; verdict cache: {cache}")
    unjudged = table[POOLED]["unjudged"]
    if unjudged > max_unjudged * len(rows):
        print(
            f"WARNING: {unjudged} of {len(rows)} answers ({100 * unjudged / len(rows):.1f} %) stayed unjudged, "
            f"more than --max_unjudged {max_unjudged:g}; they are left out of the accuracies above. "
            "Run again to ask for them (verdicts already given are cached).",
            file=sys.stderr,
        )
        raise SystemExit(1)


def sweep(
    spec: Path,
    *,
    variant: str = "tiny",
    out: Path | None = None,
    parallel: int = 1,
    slurm: bool = False,
    partition: str | None = None,
    gpus: int = 1,
    hours: int = 24,
    dry_run: bool = False,
) -> None:
    """Run an ablation sweep: ``maugpt fit`` then ``maugpt test`` per cell, resumable.

    Args:
        spec: the sweep spec (experiments/*.yaml).
        variant: which of the spec's variants (``tiny``: synthetic data on CPU; ``full``: real scale).
        out: the sweep folder (default: experiments/results/<name>-<variant>).
        parallel: cells run at once on this machine.
        slurm: write <out>/slurm.sh (one array task per cell) instead of running.
        partition: SLURM partition.
        gpus: GPUs per SLURM array task.
        hours: SLURM time limit per task.
        dry_run: check the spec and write the cell folders, run nothing.
    """
    from maugpt.sweep import SweepError, load_spec, prepare, run_cells, write_slurm

    try:
        sweep = load_spec(spec, variant)
        folder = prepare(sweep, out or Path("experiments/results") / f"{sweep.name}-{variant}")
    except (SweepError, FileNotFoundError) as err:
        raise SystemExit(f"sweep: {err}") from None
    labels = ", ".join(dict.fromkeys(c.label for c in sweep.cells))
    seeds = f" × seeds {sweep.seeds}" if sweep.seeds else ""
    print(f"{sweep.name} ({variant}): {len(sweep.cells)} cells in {folder}: {labels}{seeds}")
    if slurm:
        print(f"SLURM array script: {write_slurm(folder, partition, gpus, hours)}  (sbatch it)")
        return
    if dry_run:
        return
    start = time.perf_counter()
    outcomes = run_cells(folder, parallel)
    for name, outcome in outcomes.items():
        print(
            f"  {name}: {outcome}"
            + (f" (log: {folder}/cells/{name}/logs/)" if outcome in ("failed", "stopped") else "")
        )
    print(f"{time.perf_counter() - start:.0f} s; report: maugpt report {folder}")
    if {"failed", "stopped", "busy"} & set(outcomes.values()):  # stopped cells resume when run again
        raise SystemExit(1)


def report(sweep_dir: Path, *, scale: float = 100.0, tensorboard: bool = True, resamples: int = 2000) -> None:
    """Write report.md, report.csv and report.png into the sweep folder and print the table; with
    seeds in the spec also the cells over seeds and the paired comparisons with the reference cell.

    Args:
        sweep_dir: a folder made by tools/sweep.py.
        scale: multiply metrics by this in the Markdown table (100: fractions as %).
        tensorboard: also log the table and plot under <sweep_dir>/tensorboard/report.
        resamples: bootstrap resamples and random permutations of the intervals and tests.
    """
    from maugpt.report import write_report

    try:
        written = write_report(sweep_dir, scale, tensorboard, resamples)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"report: {err}") from None
    print(written["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))


def report_html(
    source: Path, *, out: Path, data_dir: Path | None = None, max_gallery: int = 2000, overwrite: bool = False
) -> None:
    """Self-contained HTML pages (no server, no network) of an evaluation, a run or a sweep: the
    tables with their breakdowns and intervals, the figures, and a gallery of the test images with
    each question, reference, answer and score, worst first, filterable by domain, task, product
    and outcome (for a sweep: the cells side by side, and a page per cell).

    Args:
        source: an evaluation folder (``predictions.jsonl``), a run folder holding ``evaluation*/``,
            or a sweep folder (``sweep.json``).
        out: the output folder.
        data_dir: where the test images are (the MAU-Set data folder, or MMAD's data root); default:
            the run's ``config.yaml`` (pages without images say so).
        max_gallery: at most this many answers in a gallery, the worst.
        overwrite: replace existing pages.
    """
    from maugpt.report_html import write_html

    try:
        pages = write_html(source, out, data_dir=data_dir, max_gallery=max_gallery, overwrite=overwrite)
    except (ValueError, FileExistsError) as err:
        raise SystemExit(f"report-html: {err}") from None
    print("written: " + ", ".join(str(p) for p in pages))


def figure_cores(
    *,
    config: Path,
    ckpt_path: Path,
    out: Path,
    layer: str = "self_attn.q_proj",
    split: Literal["test", "val"] = "test",
    max_samples: int = 1000,
    batch_size: int = 16,
    perplexity: float = 30.0,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Fig. 5(c): a t-SNE of AMoE-LoRA's hypernetwork cores of a split's images, coloured by product
    and by defect class (``cores_tsne.png``, ``cores.npz``, ``cores_tsne.csv`` and TensorBoard's
    figure and embedding projector under ``out/tensorboard``).

    Args:
        config: the stage-2 config the checkpoint was trained with (model and data).
        ckpt_path: the checkpoint (its trainable tensors are loaded onto the config's model).
        out: output folder.
        layer: the adapted layer whose cores are shown (a name pattern; the first match).
        split: the MAU-Set split whose images are embedded.
        max_samples: at most this many images.
        batch_size: prompts per forward.
        perplexity: t-SNE perplexity (capped below a third of the images).
        seed: t-SNE seed.
        overwrite: replace earlier outputs in ``out``.
    """
    import numpy as np
    import torch
    from lightning.pytorch.utilities import move_data_to_device
    from torch.utils.data import DataLoader
    from torch.utils.tensorboard import SummaryWriter

    from maugpt.figures import LABELS, collect_cores, embed, tsne_figure
    from maugpt.training.cli import run

    written = [out / name for name in ("cores_tsne.png", "cores.npz", "cores_tsne.csv")]
    if not overwrite and any(path.exists() for path in written):
        raise SystemExit(
            f"figure-cores: {out} already holds {', '.join(p.name for p in written if p.exists())}; "
            "pass --overwrite true or choose another --out"
        )
    cli = run(
        ["--config", str(config), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"],
        subcommand=False,
    )
    module, data = cli.model, cli.datamodule
    module.load_trainable(str(ckpt_path))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    dataset = data.eval_dataset(split, prompts=True)
    loader = DataLoader(dataset, **{**data.loader_kwargs(batch_size, prompts=True), "num_workers": 0})
    # as the trainer does: move each batch, then let the data module finish its images there
    batches = (data.on_after_batch_transfer(move_data_to_device(batch, device), 0) for batch in loader)
    try:
        cores, keys, labels = collect_cores(module, batches, layer, max_samples)
    except ValueError as err:
        raise SystemExit(f"figure-cores: {err}") from None
    points = embed(cores, perplexity, seed)
    out.mkdir(parents=True, exist_ok=True)
    fig = tsne_figure(points, labels, f"hypernetwork cores ({layer}, {len(keys)} {split} images)")
    fig.savefig(written[0], dpi=120)
    np.savez(
        written[1], cores=cores, keys=np.array(keys), **{k: np.array([label[k] for label in labels]) for k in LABELS}
    )
    written[2].write_text(
        "key,x,y,"
        + ",".join(LABELS)
        + "\n"
        + "".join(
            f"{key},{x:.6f},{y:.6f}," + ",".join(label[k] for k in LABELS) + "\n"
            for key, (x, y), label in zip(keys, points, labels)
        )
    )
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_figure("figures/cores_tsne", fig)
        writer.add_embedding(
            torch.from_numpy(cores),
            metadata=[[label[k] for k in LABELS] for label in labels],
            metadata_header=list(LABELS),
            tag=f"hypernetwork_cores/{layer}",
        )
    print(f"{len(keys)} {split} images; written: " + ", ".join(str(p) for p in written) + f", {out / 'tensorboard'}")


def sweep_cell(sweep_dir: Path, index: int, *, wait: bool = False) -> None:
    """Run one cell of a prepared sweep, as each task of ``maugpt sweep --slurm``'s array does:
    skipped when finished, resumed from its last checkpoint, logged under ``cells/<name>/logs/``.
    One runner at a time: another runner's cell is refused naming its host and PID (exit status
    1), or waited for. SIGTERM, SIGINT and SIGUSR1 reach the fit, which saves at its next step;
    the cell is not tested and the exit status is 128 + the signal. In a SLURM job, SIGUSR1 (the
    array script's warning before the time limit) also requeues the task, which then resumes.

    Args:
        sweep_dir: a folder made by ``maugpt sweep`` (with ``sweep.json``).
        index: the cell's position in the spec (``$SLURM_ARRAY_TASK_ID``).
        wait: wait for a cell another runner holds instead of exiting.
    """
    import signal

    from maugpt import slurm
    from maugpt.runner import Runner
    from maugpt.sweep import prepared_cells, run_cell

    try:
        names = prepared_cells(sweep_dir)
    except FileNotFoundError:
        raise SystemExit(f"sweep-cell: {sweep_dir} has no sweep.json: run maugpt sweep --slurm true first") from None
    if not 0 <= index < len(names):
        raise SystemExit(f"sweep-cell: index {index} is outside the sweep's {len(names)} cells (0-{len(names) - 1})")
    job = slurm.job_id()
    with Runner(requeues=job is not None).handling_signals() as runner:
        outcome = run_cell(sweep_dir / "cells" / names[index], runner, wait=wait)
    logs = sweep_dir / "cells" / names[index] / "logs"
    where = f" (log: {logs}/)" if outcome in ("failed", "stopped") and logs.is_dir() else ""
    print(f"{names[index]}: {outcome}{where}", flush=True)
    if outcome == "stopped":
        print(
            f"sweep-cell: stopped by {signal.Signals(runner.stopped).name}; running the cell again resumes it "
            "from its last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        if job is not None and runner.stopped == signal.SIGUSR1:  # the array's warning before the time limit
            slurm.requeue(job, "sweep-cell")
        raise SystemExit(128 + runner.stopped)
    if outcome in ("failed", "busy"):
        raise SystemExit(1)
