"""Confidence intervals and paired tests for the cells of an ablation sweep, from prediction rows.

A *cell* is one model configuration trained with one or more seeds; every seed's run answered the
same questions. The value of a metric on a run is the mean of its per-answer values (detection
and MMAD accuracy, ROUGE F1) or, for ``bleu4``, the corpus BLEU of its summed n-gram statistics.

Per cell (:func:`summarize`), the seed mean ``m`` is uncertain for two reasons. The questions are a
sample: ``v_q`` is the bootstrap variance of ``m`` when questions are resampled with replacement, the
same resampled questions for every seed because all seeds answered the same questions (resampling
each seed on its own would count question variance once per seed). Training is noisy: the variance
of a mean of ``S`` seeds is ``s² / S``, ``s`` the standard deviation over seeds (``ddof=1``); one
seed cannot estimate it, so it is taken as 0 and ``method`` says so. The interval is
``m ± z · sqrt(v_q + s² / S)``, ``z`` the normal quantile of the confidence level: a normal
interval, because variances add while percentile intervals do not. With one run it is the
bootstrap standard-error interval over questions.

Against a reference (:func:`compare`) the question is the paired unit: both cells answered the
same questions, so question difficulty cancels in ``d_i = mean_seeds(cell_i) - mean_seeds(ref_i)``
and, for mean-type metrics, the difference is ``mean(d)``. Its interval is the percentile
bootstrap over questions (percentile rather than BCa: BCa's jackknife costs one statistic per
question and fails on a degenerate distribution such as two identical cells). The p-value is a
two-sided paired permutation test that swaps the two cells' answers to each question at random
(exact when ``2**n <= resamples``). For ``bleu4`` the difference and its interval use the seed
mean of corpus BLEU, as :func:`summarize` does; the permutation statistic is the corpus BLEU
difference of the per-question seed-averaged statistics, because only a question's pooled
statistics can be swapped between cells whose seeds are not paired.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import nan, sqrt

import numpy as np
import scipy.stats

METRICS = ("detection_accuracy", "rouge1", "rouge2", "rougeL", "bleu4", "mmad_accuracy")
_CAP = 2**22  # resampled values held at once (32 MiB of floats): larger sweeps run in batches


def question_id(row: Mapping) -> str:
    """``key#qa_index`` for a MAU-Set row, ``image#question_index`` for an MMAD row."""
    if "key" in row and "qa_index" in row:
        return f"{row['key']}#{row['qa_index']}"
    if "image" in row and "question_index" in row:
        return f"{row['image']}#{row['question_index']}"
    raise ValueError(f"row has neither key/qa_index nor image/question_index; its fields: {sorted(row)}")


def corpus_bleu(stats: np.ndarray) -> np.ndarray | float:
    """Corpus BLEU-4 (sacrebleu, ``smooth_method="none"``) of summed statistics.

    ``stats[..., :]`` = ``[hyp_len, ref_len, m1..m4, t1..t4]``, leading axes are batch axes.
    BLEU = BP · exp(¼ Σ_n log(m_n / t_n)), BP = 1 if hyp_len ≥ ref_len else exp(1 − ref_len / hyp_len),
    and 0 when some m_n = 0 or hyp_len = 0.
    """
    s = np.asarray(stats, dtype=float)
    if s.shape[-1] != 10:
        raise ValueError(f"BLEU statistics need a last axis of 10, got shape {s.shape}")
    hyp, ref, matches, totals = s[..., 0], s[..., 1], s[..., 2:6], s[..., 6:10]
    valid = (matches > 0).all(axis=-1) & (hyp > 0)  # m_n > 0 implies t_n > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # invalid entries are masked below
        log_bp = np.where(hyp >= ref, 0.0, 1.0 - ref / hyp)
        score = np.where(valid, np.exp(log_bp + np.log(matches / totals).mean(axis=-1)), 0.0)
    return float(score) if score.ndim == 0 else score


def metric_values(rows: Sequence[Mapping], metric: str) -> tuple[list[str], np.ndarray]:
    """The question ids and per-answer values of ``metric``, in row order: (n,) or, for bleu4, (n, 10)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")
    if metric == "mmad_accuracy":
        chosen = [r for r in rows if "question_index" in r]
    elif metric == "detection_accuracy":
        chosen = [r for r in rows if r.get("style") == "discriminative"]
    else:  # every MAU-Set style other than discriminative is open-ended
        chosen = [r for r in rows if "style" in r and r["style"] != "discriminative"]
    if not chosen:
        raise ValueError(f"no prediction rows for metric {metric!r}")
    if metric == "bleu4":
        values = np.array(
            [[r["bleu"]["hyp_len"], r["bleu"]["ref_len"], *r["bleu"]["matches"], *r["bleu"]["totals"]] for r in chosen],
            dtype=float,
        )
    else:
        field = "correct" if metric.endswith("accuracy") else metric
        values = np.array([float(r[field]) for r in chosen])
    return [question_id(r) for r in chosen], values


def align(runs: Mapping[str, Sequence[Mapping]], metric: str) -> tuple[list[str], np.ndarray]:
    """Values of every run on the same questions, in the first run's order: (runs, n[, 10])."""
    first, ids, arrays = "", [], []
    for name, rows in runs.items():
        run_ids, values = metric_values(rows, metric)
        position: dict[str, int] = {}
        for i, q in enumerate(run_ids):
            if q in position:
                raise ValueError(f"run {name!r} answered question {q!r} more than once")
            position[q] = i
        if not arrays:
            first, ids = name, run_ids
        else:
            missing = next((q for q in ids if q not in position), None)
            if missing is not None:
                raise ValueError(f"run {name!r} has no answer to question {missing!r} that run {first!r} answered")
            known = set(ids)
            extra = next((q for q in run_ids if q not in known), None)
            if extra is not None:
                raise ValueError(f"run {name!r} answered question {extra!r} that run {first!r} did not")
        arrays.append(values[[position[q] for q in ids]])
    if not arrays:
        raise ValueError("no runs given")
    return ids, np.stack(arrays)


def _run_metric(values: np.ndarray, metric: str) -> float:
    """The metric of one run from its (n,) values or (n, 10) BLEU statistics."""
    return float(corpus_bleu(values.sum(axis=0))) if metric == "bleu4" else float(values.mean())


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` questions occurs in each row of ``idx`` (..., k): (..., n) floats."""
    idx = np.asarray(idx, dtype=np.intp)
    rows = idx.reshape(-1, idx.shape[-1])
    flat = (rows + n * np.arange(len(rows))[:, None]).ravel()
    return np.bincount(flat, minlength=len(rows) * n).reshape(*idx.shape[:-1], n).astype(float)


def _seed_mean(values: np.ndarray, metric: str) -> Callable[..., np.ndarray]:
    """statistic(idx (..., n) question indices) = mean over seeds of the metric on those questions."""
    if metric == "bleu4":

        def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            sums = _counts(idx, values.shape[1]) @ values  # (S, resamples, 10): summed statistics
            return corpus_bleu(sums).mean(axis=0)
    else:
        per_question = values.mean(axis=0)  # mean over seeds of a mean = mean of per-question seed means

        def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            return per_question[np.asarray(idx, dtype=np.intp)].mean(axis=-1)

    return statistic


def _batch(width: int, resamples: int) -> int | None:
    """Resamples per vectorized call: all at once unless that would hold more than ``_CAP`` values."""
    return None if width * resamples <= _CAP else max(1, _CAP // width)


@dataclass(frozen=True)
class CellSummary:
    """One cell over its seeds: ``mean ± z · sqrt(v_q + std² / runs)`` (see the module docstring)."""

    metric: str
    runs: tuple[str, ...]
    per_run: tuple[float, ...]
    mean: float
    std: float  # over runs, ddof=1; nan with one run
    low: float
    high: float
    questions: int
    method: str


@dataclass(frozen=True)
class PairedComparison:
    """Cell − reference over the same questions, with its bootstrap interval and permutation p-value
    (the questions' noise), and, where both cells have several seeds, the interval and p-value that
    add the seeds' spread (training noise): ``significant`` is judged on the latter when it exists."""

    metric: str
    cell_runs: tuple[str, ...]
    reference_runs: tuple[str, ...]
    difference: float
    low: float
    high: float
    p_value: float
    significant: bool  # seed_p_value < alpha where there is one, else p_value < alpha
    questions: int
    method: str
    seed_low: float = nan  # normal interval of the difference with the seed spread added (nan: one seed)
    seed_high: float = nan
    seed_p_value: float = nan


def summarize(
    runs: Mapping[str, Sequence[Mapping]],
    metric: str,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> CellSummary:
    """Mean, std and interval over the seeds of one cell; ``runs`` maps a run name to its rows."""
    ids, values = align(runs, metric)
    n, seeds = len(ids), len(values)
    per_run = tuple(_run_metric(v, metric) for v in values)
    mean = float(np.mean(per_run))
    std = float(np.std(per_run, ddof=1)) if seeds > 1 else nan
    # Index trick: resample question indices once for all seeds; scipy hands us (resamples, n).
    boot = scipy.stats.bootstrap(
        (np.arange(n),),
        _seed_mean(values, metric),
        n_resamples=resamples,
        batch=_batch(n, resamples),
        vectorized=True,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    seed_var = std**2 / seeds if seeds > 1 else 0.0
    half = float(scipy.stats.norm.ppf(0.5 + confidence / 2)) * sqrt(boot.standard_error**2 + seed_var)
    noise = f"seed variance std²/{seeds}" if seeds > 1 else "seed variance 0 (one seed, not estimable)"
    method = (
        f"normal {confidence:.0%}: mean ± z·sqrt(v_q + seed var); v_q bootstrap over {n} questions "
        f"({resamples} resamples, same questions for every seed); {noise}"
    )
    return CellSummary(metric, tuple(runs), per_run, mean, std, mean - half, mean + half, n, method)


def compare(
    cell: Mapping[str, Sequence[Mapping]],
    reference: Mapping[str, Sequence[Mapping]],
    metric: str,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedComparison:
    """Paired difference ``cell − reference`` of the seed-mean metric over the questions both answered."""
    # Cells often share run names ("seed 0"): label them so align's messages say which cell is meant.
    labelled = {**{f"{k} (cell)": v for k, v in cell.items()}, **{f"{k} (reference)": v for k, v in reference.items()}}
    ids, values = align(labelled, metric)
    n, ours, theirs = len(ids), values[: len(cell)], values[len(cell) :]
    if metric == "bleu4":
        mean_ours, mean_theirs = _seed_mean(ours, metric), _seed_mean(theirs, metric)

        def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            return mean_ours(idx) - mean_theirs(idx)

        # x = arange(n), y = arange(n) + n index a stacked array; swapping x_i, y_i swaps question i.
        pooled = np.concatenate([ours.mean(axis=0), theirs.mean(axis=0)])

        def swapped(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.asarray(corpus_bleu(_counts(x, 2 * n) @ pooled) - corpus_bleu(_counts(y, 2 * n) @ pooled))

        samples, tested = (np.arange(n), np.arange(n) + n), "corpus BLEU of seed-averaged statistics"
    else:
        a, b = ours.mean(axis=0), theirs.mean(axis=0)
        statistic = _seed_mean((a - b)[None], metric)  # = mean of d_i over the resampled questions

        def swapped(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.mean(x - y, axis=axis)

        samples, tested = (a, b), "mean of d_i"
    difference = float(statistic(np.arange(n)))
    # A fresh generator per call, so either result can be reproduced by calling scipy alone.
    boot = scipy.stats.bootstrap(
        (np.arange(n),),
        statistic,
        n_resamples=resamples,
        batch=_batch(n, resamples),
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        random_state=np.random.default_rng(seed),
    )
    test = scipy.stats.permutation_test(
        samples,
        swapped,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        batch=_batch(2 * n, resamples),
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    p_value, kind = float(test.pvalue), "exact" if 2**n <= resamples else f"{resamples} random"
    method = (
        f"paired over {n} questions: {confidence:.0%} percentile bootstrap ({resamples} resamples); "
        f"p from a two-sided paired permutation test ({kind} swaps) of the {tested}"
    )
    seed_low = seed_high = seed_p = nan
    if len(ours) > 1 and len(theirs) > 1:
        # Both tests above hold the trained models fixed. Another seed gives another model, so the
        # variance of the difference of seed means adds s_a²/S_a + s_b²/S_b (as summarize does).
        runs_a, runs_b = ([_run_metric(v, metric) for v in side] for side in (ours, theirs))
        seed_var = np.var(runs_a, ddof=1) / len(runs_a) + np.var(runs_b, ddof=1) / len(runs_b)
        error = sqrt(boot.standard_error**2 + seed_var)
        half = scipy.stats.norm.ppf(0.5 + confidence / 2) * error
        seed_low, seed_high = difference - half, difference + half
        seed_p = float(2 * scipy.stats.norm.sf(abs(difference) / error)) if error > 0 else float(difference == 0)
        method += (
            f"; with the seeds: normal {confidence:.0%} interval and z-test of the difference with the "
            f"variance of the bootstrap plus s²/S of each cell's {len(runs_a)} and {len(runs_b)} seeds"
        )
    significant = (seed_p if seed_p == seed_p else p_value) < alpha
    return PairedComparison(
        metric,
        tuple(cell),
        tuple(reference),
        difference,
        float(boot.confidence_interval.low),
        float(boot.confidence_interval.high),
        p_value,
        significant,
        n,
        method,
        float(seed_low),
        float(seed_high),
        seed_p,
    )
