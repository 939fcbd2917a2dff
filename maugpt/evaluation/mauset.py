"""MAU-Set scores of generated answers: the paper's Table 2 (discriminative accuracy per domain) and
Table 4 (ROUGE-1/2/L and BLEU-4 of open-ended answers), overall, per task and per domain.

Discriminative accuracy is reported both ways, labelled: the macro mean over the domains that have
questions, and the pooled (micro) accuracy over all questions (the paper's Table 2 mixes the two:
most of its rows are macro means). Text metrics, and the reference implementations they equal
(checked by tests/evaluation/test_mauset.py):

- ROUGE-1/2/L: torchmetrics ``rouge_score`` F1, each answer against its reference, averaged over
  answers = Google's ``rouge-score`` (``RougeScorer``, lower-cased alphanumeric tokens, sentence-level
  ROUGE-L), without stemming unless ``rouge_stemmer`` (its Porter stemmer, as ``use_stemmer=True``).
- BLEU-4: corpus BLEU with uniform weights, no smoothing, one reference = ``sacrebleu.corpus_bleu``
  with ``smooth_method="none"`` and ``tokenize=bleu_tokenize`` (``none``: whitespace tokens, the
  default; ``13a``: sacrebleu's standard tokenizer), through torchmetrics ``SacreBLEUScore``.

Every state is a torchmetrics state, so scores computed on several ranks equal those of one.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.functional.text import rouge_score
from torchmetrics.text import SacreBLEUScore

from maugpt.evaluation.breakdown import mauset_breakdowns
from maugpt.evaluation.run import evaluation_folder, write_predictions
from maugpt.evaluation.true_false import parse_true_false
from maugpt.schema import DOMAINS, TASKS
from maugpt.tensorboard import tensorboard

TEXT_METRICS = ("rouge1", "rouge2", "rougeL", "bleu4")
BLEU_TOKENIZERS = ("none", "13a")
log = logging.getLogger(__name__)


class DomainAccuracy(Metric):
    """Correct, total and unparsable discriminative answers per domain (summed over ranks)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("correct", "total", "unparsed"):
            self.add_state(name, default=torch.zeros(len(DOMAINS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, domain: str, parsed: bool | None, truth: bool) -> None:
        i = DOMAINS.index(domain)
        self.total[i] += 1
        self.correct[i] += float(parsed is not None and parsed == truth)
        self.unparsed[i] += float(parsed is None)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"correct": self.correct, "total": self.total, "unparsed": self.unparsed}


class MeanRouge(Metric):
    """ROUGE-1/2/L F1 averaged over answers, kept as sums (torchmetrics' ``ROUGEScore`` keeps
    per-answer lists, which cannot be synced when a rank has no answer of a group)."""

    full_state_update = False
    KEYS = ("rouge1", "rouge2", "rougeL")

    def __init__(self, stemmer: bool = False) -> None:
        super().__init__()
        self.stemmer = stemmer
        self.add_state("sums", default=torch.zeros(len(self.KEYS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: dict[str, float]) -> None:
        """Add one answer's F1 scores (``rouge1``, ``rouge2``, ``rougeL``), from :func:`answer_rouge`."""
        self.sums += torch.tensor([scores[k] for k in self.KEYS], dtype=torch.float64, device=self.sums.device)
        self.count += 1

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {k: float("nan") for k in self.KEYS}
        return {k: float(v) for k, v in zip(self.KEYS, self.sums / self.count)}


def answer_rouge(prediction: str, reference: str, stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one answer against its reference (see the module docstring)."""
    scores = rouge_score(prediction, reference, rouge_keys=MeanRouge.KEYS, use_stemmer=stemmer)
    return {k: float(scores[f"{k}_fmeasure"]) for k in MeanRouge.KEYS}


class SentenceBleu:
    """One answer's BLEU-4 sufficient statistics, with the tokenizer of the corpus BLEU: summed over
    answers they give the corpus BLEU-4 (so a subset of answers, e.g. a bootstrap resample, can be
    scored again without the texts)."""

    def __init__(self, tokenize: str = "none") -> None:
        self.metric = SacreBLEUScore(n_gram=4, tokenize=tokenize)

    def __call__(self, prediction: str, reference: str) -> dict:
        """``{"hyp_len", "ref_len", "matches": [4 n-gram orders], "totals": [4]}``."""
        self.metric.reset()
        self.metric.update([prediction], [[reference]])
        m = self.metric
        return {
            "hyp_len": int(m.preds_len),
            "ref_len": int(m.target_len),
            "matches": [int(v) for v in m.numerator],
            "totals": [int(v) for v in m.denominator],
        }


def _group_key(group: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")


def metric_settings(bleu_tokenize: str = "none", rouge_stemmer: bool = False) -> str:
    """The line that says what the text metrics are, for the tables."""
    return (
        f"ROUGE: rouge-score F1, {'Porter stemming' if rouge_stemmer else 'no stemming'}, averaged over answers; "
        f"BLEU-4: corpus BLEU = sacrebleu tokenize='{bleu_tokenize}', smooth_method='none'"
    )


class MAUSetScores(nn.Module):
    """Scores of (meta, answer) pairs, ``meta`` as the data module's test batches carry it
    (``style``, ``task``, ``domain``, ``reference``, ``question``).

    Discriminative answers are parsed for their True/False verdict
    (:func:`~maugpt.evaluation.true_false.parse_true_false`; unparsable ones count as wrong and
    are counted); open-ended answers get ROUGE-1/2/L F1 and corpus BLEU-4 overall, per task and
    per domain (see the module docstring for the implementations).

    Args:
        bleu_tokenize: sacrebleu's tokenizer for BLEU: ``none`` (whitespace) or ``13a``.
        rouge_stemmer: stem tokens before ROUGE (Porter, as rouge-score's ``use_stemmer``; needs nltk).
    """

    GROUPS = ("all", *(f"task:{t}" for t in TASKS), *(f"domain:{d}" for d in DOMAINS))

    def __init__(self, bleu_tokenize: str = "none", rouge_stemmer: bool = False) -> None:
        super().__init__()
        if bleu_tokenize not in BLEU_TOKENIZERS:
            raise ValueError(f"bleu_tokenize must be one of {list(BLEU_TOKENIZERS)}, got {bleu_tokenize!r}")
        if rouge_stemmer and importlib.util.find_spec("nltk") is None:  # torchmetrics' Porter stemmer
            raise ImportError("rouge_stemmer needs the nltk package (pip install nltk)")
        self.settings = metric_settings(bleu_tokenize, rouge_stemmer)
        self.stemmer = rouge_stemmer
        self.sentence_bleu = SentenceBleu(bleu_tokenize)
        self.discriminative = DomainAccuracy()
        self.rouge = nn.ModuleDict({_group_key(g): MeanRouge(rouge_stemmer) for g in self.GROUPS})
        self.bleu = nn.ModuleDict(
            {_group_key(g): SacreBLEUScore(n_gram=4, tokenize=bleu_tokenize) for g in self.GROUPS}
        )

    def add(self, meta: dict, answer: str) -> dict:
        """Score one answer into the totals and return its own scores: ``verdict`` (``"True"``,
        ``"False"`` or None: unparsable) and ``correct`` for a discriminative question; ``rouge1``,
        ``rouge2``, ``rougeL`` and ``bleu`` (:class:`SentenceBleu`'s statistics) for an open one."""
        if meta["domain"] not in DOMAINS:
            raise ValueError(f"unknown domain {meta['domain']!r} in {meta.get('key')}; expected one of {DOMAINS}")
        if meta["style"] == "discriminative":
            verdict = parse_true_false(answer, meta.get("question"))
            truth = meta["reference"] == "True"
            self.discriminative.update(meta["domain"], verdict, truth)
            return {"verdict": None if verdict is None else str(verdict), "correct": verdict == truth}
        rouge = answer_rouge(answer, meta["reference"], self.stemmer)
        for group in ("all", f"task:{meta['task']}", f"domain:{meta['domain']}"):
            key = _group_key(group)
            self.rouge[key].update(rouge)
            self.bleu[key].update([answer], [[meta["reference"]]])
        return {**rouge, "bleu": self.sentence_bleu(answer, meta["reference"])}

    def compute(self) -> dict[str, float]:
        """Flat results: ``detection_accuracy`` (pooled over all discriminative questions),
        ``detection_accuracy_macro`` (mean of the domains with questions), ``…/<domain>``,
        ``detection_unparsed``, and ``rouge1|rouge2|rougeL|bleu4`` with ``/task:…`` and ``/domain:…``."""
        counts = self.discriminative.compute()
        correct, total, unparsed = (counts[k].cpu() for k in ("correct", "total", "unparsed"))
        nan = float("nan")
        results = {
            "detection_accuracy": float(correct.sum() / total.sum()) if total.sum() else nan,
            "detection_unparsed": float(unparsed.sum()),
        }
        for i, domain in enumerate(DOMAINS):
            results[f"detection_accuracy/{domain}"] = float(correct[i] / total[i]) if total[i] else nan
        present = total > 0
        results["detection_accuracy_macro"] = (
            float((correct[present] / total[present]).mean()) if present.any() else nan
        )
        results["detection_domains"] = float(present.sum())
        with warnings.catch_warnings():  # torchmetrics warns about groups without answers on a rank
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            for group in self.GROUPS:
                key = _group_key(group)
                suffix = "" if group == "all" else f"/{group}"
                rouge = self.rouge[key].compute()  # every rank computes every group: the syncs match
                results.update({f"{name}{suffix}": value for name, value in rouge.items()})
                bleu = float(self.bleu[key].compute())
                results[f"bleu4{suffix}"] = bleu if rouge["rouge1"] == rouge["rouge1"] else nan
        self.reset()
        return results

    def reset(self) -> None:
        self.discriminative.reset()
        for metric in [*self.rouge.values(), *self.bleu.values()]:
            metric.reset()


def tables(results: dict[str, float], model: str = "model", settings: str | None = None) -> tuple[str, str]:
    """Table 2 (discriminative accuracy % per domain, their macro mean and the pooled accuracy) and
    Table 4 (open-ended scores overall, per task and per domain) as Markdown, with the metric
    ``settings`` line, and the same numbers as CSV rows."""
    fmt = lambda v: "—" if v != v else f"{100 * v:.2f}"  # noqa: E731  (NaN: no such question)
    domains = int(results.get("detection_domains", len(DOMAINS)))
    t2 = [
        "| model | " + " | ".join(DOMAINS) + f" | macro avg. ({domains} domains) | pooled (all questions) |",
        "|---" + "|---:" * (len(DOMAINS) + 2) + "|",
        f"| {model} | "
        + " | ".join(fmt(results[f"detection_accuracy/{d}"]) for d in DOMAINS)
        + f" | {fmt(results['detection_accuracy_macro'])} | {fmt(results['detection_accuracy'])} |",
        "",
        f"unparsable True/False answers: {int(results['detection_unparsed'])} (counted as wrong)",
    ]
    rows = (
        [("all", "")]
        + [(f"task: {t}", f"/task:{t}") for t in TASKS if t != "detection"]
        + [(f"domain: {d}", f"/domain:{d}") for d in DOMAINS]
    )
    t4 = ["| answers | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU-4 |", "|---|---:|---:|---:|---:|"]
    t4 += [
        f"| {label} | " + " | ".join(fmt(results[f"{m}{suffix}"]) for m in TEXT_METRICS) + " |"
        for label, suffix in rows
    ]
    markdown = (
        "\n".join(
            [
                "### Discriminative QA accuracy (%)",
                "",
                *t2,
                "",
                "### Open-ended QA (%)",
                "",
                *t4,
                "",
                settings or metric_settings(),
            ]
        )
        + "\n"
    )
    csv = "metric,value\n" + "".join(f"{name},{value:.6f}\n" for name, value in results.items())
    return markdown, csv


PREDICTION_FIELDS = (
    "key",
    "qa_index",
    "source",
    "domain",
    "product",
    "defect_class",
    "generic_defect",
    "is_anomalous",
    "task",
    "style",
    "question",
    "reference",
)


class MAUSetEvaluation(nn.Module):
    """The :class:`~maugpt.evaluation.run.Evaluation` of MAU-Set test shards: :class:`MAUSetScores`
    plus the predictions, written with Tables 2 and 4 by :func:`write_evaluation`.

    Args:
        bleu_tokenize: see :class:`MAUSetScores`.
        rouge_stemmer: see :class:`MAUSetScores`.
    """

    def __init__(self, bleu_tokenize: str = "none", rouge_stemmer: bool = False) -> None:
        super().__init__()
        self.scores = MAUSetScores(bleu_tokenize, rouge_stemmer)
        self.predictions: list[dict] = []

    def add(self, meta: dict, answer: str, choice_logprobs: list[float] | None = None) -> None:
        scores = self.scores.add(meta, answer)
        row = {k: meta.get(k) for k in PREDICTION_FIELDS}
        if isinstance(row["qa_index"], list):  # a test prompt asks one question: its index in the record
            row["qa_index"] = row["qa_index"][0]
        self.predictions.append({**row, "prediction": answer, **scores})

    def finish(self, trainer: L.Trainer) -> dict[str, float]:
        results = self.scores.compute()
        write_evaluation(trainer, results, self.predictions, self.scores.settings)
        self.predictions = []
        return results


def write_tables(
    folder: Path, results: dict[str, float], rows: list[dict], model: str = "model", settings: str | None = None
) -> str:
    """``tables.md`` (Tables 2 and 4, then the breakdowns), ``scores.csv`` and ``breakdown.csv``
    into ``folder``; returns the Markdown."""
    markdown, csv = tables(results, model=model, settings=settings)
    sections, rows_csv = mauset_breakdowns(rows)
    markdown = f"{markdown}\n{sections}"
    (folder / "tables.md").write_text(markdown)
    (folder / "scores.csv").write_text(csv)
    (folder / "breakdown.csv").write_text(rows_csv)
    return markdown


def write_evaluation(
    trainer: L.Trainer, results: dict[str, float], predictions: list[dict], settings: str | None = None
) -> Path:
    """Write the test predictions (``predictions.jsonl``, every rank's rows, as MMAD's) and, on rank 0,
    Tables 2 and 4 with the breakdowns (:mod:`~maugpt.evaluation.breakdown`) as Markdown and CSV
    into the run's evaluation folder (a new one each time), and log the tables to TensorBoard."""
    folder = evaluation_folder(trainer)
    rows = write_predictions(trainer, folder, predictions)
    if trainer.is_global_zero:
        markdown = write_tables(folder, results, rows, settings=settings)
        writer = tensorboard(trainer)
        if writer is not None:
            writer.add_text("test/tables", markdown, trainer.global_step)
        log.info("test predictions and tables written to %s", folder)
    return folder
