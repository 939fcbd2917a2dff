"""Intervals and paired tests of maugpt.evaluation.statistics, checked against numpy, scipy and sacrebleu."""

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from scipy import stats

from maugpt.evaluation.statistics import METRICS, align, compare, corpus_bleu, metric_values, question_id, summarize

N = 200


def rows(correct, *, shuffle=None):
    """Discriminative MAU-Set rows, one per question; ``shuffle`` seeds a random row order."""
    out = [
        {"key": f"img{i // 3}", "qa_index": i % 3, "style": "discriminative", "correct": bool(c)}
        for i, c in enumerate(correct)
    ]
    if shuffle is not None:
        np.random.default_rng(shuffle).shuffle(out)
    return out


def hits(*ranges_and_items):
    """A (N,) bool array that is True on the given ranges / question indices."""
    mask = np.zeros(N, bool)
    for r in ranges_and_items:
        mask[list(r) if isinstance(r, range) else [r]] = True
    return mask


# Reference: 3 seeds, right on questions 0..99 and one extra each (150, 151, 152): 101/200 each.
# Cell: 2 seeds, right on 0..119 and extras {150, 151} or none: on average 0.10 above the reference.
REFERENCE = {f"seed {k}": rows(hits(range(100), 150 + k), shuffle=k) for k in range(3)}
CELL = {"seed 0": rows(hits(range(120), 150, 151)), "seed 1": rows(hits(range(120)), shuffle=7)}


def seed_averaged(runs):
    """Per-question means over the runs, in question order (an unshuffled run first fixes the order)."""
    return align({"order": rows(np.zeros(N)), **runs}, "detection_accuracy")[1][1:].mean(axis=0)


def test_corpus_bleu_matches_sacrebleu():
    hyps = [
        "the cat sat on the mat today",
        "a scratch on the left edge",
        "no defect",
        "the screw is bent",
        "there is a crack near the top of the bottle",
    ]
    refs = [
        "the cat sat on a mat",
        "a small scratch on the left edge of the part",
        "no defect is visible",
        "the screw head is bent",
        "there is a crack near the top of the bottle",
    ]
    per_sentence = np.array(
        BLEU(smooth_method="none", tokenize="none")._extract_corpus_statistics(hyps, [refs]), dtype=float
    )
    for chosen in ([0, 1, 2, 3, 4], [0, 1], [1, 4], [2], [4], [0, 3]):
        expected = (
            sacrebleu.corpus_bleu(
                [hyps[i] for i in chosen], [[refs[i] for i in chosen]], smooth_method="none", tokenize="none"
            ).score
            / 100
        )
        assert corpus_bleu(per_sentence[chosen].sum(axis=0)) == pytest.approx(expected, abs=1e-9)
    assert corpus_bleu(per_sentence[2]) == 0.0  # "no defect" has no 3-gram: BLEU-4 is 0 unsmoothed
    assert 0 < corpus_bleu(per_sentence[1]) < 1  # shorter than its reference: brevity penalty < 1
    assert corpus_bleu(np.zeros(10)) == 0.0  # an empty hypothesis
    batch = np.stack([per_sentence[[0, 1]].sum(0), per_sentence[[1, 4]].sum(0), per_sentence[4]]).reshape(3, 1, 10)
    result = corpus_bleu(np.broadcast_to(batch, (3, 2, 10)))
    assert result.shape == (3, 2)
    np.testing.assert_array_equal(result[:, 1], [corpus_bleu(b[0]) for b in batch])
    assert result[2, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="10"):
        corpus_bleu(np.zeros(9))


def test_question_ids_and_metric_values():
    assert question_id({"key": "a/b.png", "qa_index": 2}) == "a/b.png#2"
    assert question_id({"image": "x.png", "question_index": 0}) == "x.png#0"
    with pytest.raises(ValueError, match="answer.*image|image.*answer"):
        question_id({"image": "x.png", "answer": "A"})
    ids, values = metric_values(rows([True, False, True]), "detection_accuracy")
    assert ids == ["img0#0", "img0#1", "img0#2"] and values.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="rouge2"):
        metric_values(rows([True]), "rouge2")
    assert len(METRICS) == 6


def test_difference_interval_and_p_value_of_a_known_improvement():
    result = compare(CELL, REFERENCE, "detection_accuracy")
    assert result.difference == pytest.approx(0.10, abs=1e-12)
    assert result.low < 0.10 < result.high and result.high - result.low < 0.15
    assert result.p_value < 0.01 and result.significant
    assert result.questions == N and result.cell_runs == ("seed 0", "seed 1") and len(result.reference_runs) == 3
    # The same numbers from scipy called directly on the per-question seed averages.
    a, b = seed_averaged(CELL), seed_averaged(REFERENCE)
    d = a - b
    assert sorted(np.unique(np.round(d, 9))) == pytest.approx([-1 / 3, 0, 1 / 6, 1])
    boot = stats.bootstrap((d,), np.mean, n_resamples=2000, method="percentile", random_state=np.random.default_rng(0))
    assert (result.low, result.high) == (boot.confidence_interval.low, boot.confidence_interval.high)
    test = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=2000,
        random_state=np.random.default_rng(0),
    )
    assert result.p_value == test.pvalue
    # With the seeds: the bootstrap's variance plus each cell's variance of a seed mean, s²/S.
    runs_a = [np.mean([r["correct"] for r in run]) for run in CELL.values()]
    runs_b = [np.mean([r["correct"] for r in run]) for run in REFERENCE.values()]
    error = np.sqrt(boot.standard_error**2 + np.var(runs_a, ddof=1) / 2 + np.var(runs_b, ddof=1) / 3)
    assert result.seed_p_value == pytest.approx(2 * stats.norm.sf(0.10 / error), rel=1e-12)
    assert (result.seed_low, result.seed_high) == pytest.approx(
        (0.10 - 1.959963985 * error, 0.10 + 1.959963985 * error)
    )
    # The reversed comparison mirrors it.
    reverse = compare(REFERENCE, CELL, "detection_accuracy")
    assert reverse.difference == pytest.approx(-0.10, abs=1e-12) and reverse.significant


def test_identical_cells_do_not_differ():
    result = compare(CELL, CELL, "detection_accuracy", resamples=500)
    assert result.difference == 0.0 and (result.low, result.high) == (0.0, 0.0)
    assert result.p_value == 1.0 and not result.significant


def test_a_difference_within_the_seeds_spread_is_not_significant():
    # Two seeds 40 points apart, 5 points above the reference on average: each pair of trained models
    # differs beyond the questions' noise, but another seed could as well reverse the order.
    cell = {"seed 0": rows(hits(range(110))), "seed 1": rows(hits(range(190)))}  # 0.55, 0.95
    reference = {"seed 0": rows(hits(range(140))), "seed 1": rows(hits(range(140)))}  # 0.70, 0.70
    result = compare(cell, reference, "detection_accuracy", resamples=1000)
    assert result.difference == pytest.approx(0.05) and result.p_value < 0.05  # the questions alone
    assert result.seed_low < 0 < result.seed_high and result.seed_p_value > 0.5 and not result.significant
    one_seed = compare({"seed 0": cell["seed 1"]}, reference, "detection_accuracy", resamples=1000)
    assert np.isnan(one_seed.seed_p_value) and one_seed.significant  # no spread to add: the questions decide


def test_small_differences_are_not_significant():
    # The cell is ahead by one question in 200 on average: no evidence at 0.05.
    result = compare(CELL, {"r": rows(hits(range(117), 150, 151, 152))}, "detection_accuracy")
    assert result.difference == pytest.approx(0.005, abs=1e-12) and result.low < 0 < result.high
    assert result.p_value > 0.05 and not result.significant


def test_summarize_matches_numpy_and_scipy():
    summary = summarize(REFERENCE | {"seed 3": rows(hits(range(95)))}, "detection_accuracy")
    per_run = [np.mean(hits(range(100), 150 + k)) for k in range(3)] + [0.475]
    assert summary.per_run == pytest.approx(per_run, rel=1e-12)
    assert summary.mean == pytest.approx(np.mean(per_run), rel=1e-12)
    assert summary.std == pytest.approx(np.std(per_run, ddof=1), rel=1e-12)
    assert summary.questions == N and summary.runs == ("seed 0", "seed 1", "seed 2", "seed 3")
    # Interval = mean ± z sqrt(v_q + s²/S), v_q the bootstrap variance of the seed-averaged question means.
    values = align(REFERENCE | {"seed 3": rows(hits(range(95)))}, "detection_accuracy")[1]
    boot = stats.bootstrap(
        (values.mean(axis=0),), np.mean, n_resamples=2000, method="percentile", random_state=np.random.default_rng(0)
    )
    half = stats.norm.ppf(0.975) * np.sqrt(boot.standard_error**2 + summary.std**2 / 4)
    assert (summary.low, summary.high) == pytest.approx((summary.mean - half, summary.mean + half), rel=1e-9)
    assert "4" in summary.method and "one seed" not in summary.method


def test_one_run_interval_is_the_bootstrap_interval():
    one = summarize({"only": CELL["seed 0"]}, "detection_accuracy", confidence=0.9)
    values = hits(range(120), 150, 151).astype(float)
    assert np.isnan(one.std) and one.mean == pytest.approx(0.61) and "one seed" in one.method
    boot = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=2000,
        method="percentile",
        confidence_level=0.9,
        random_state=np.random.default_rng(0),
    )
    # Same resampled questions, so the standard error is scipy's exactly ...
    assert one.high - one.mean == pytest.approx(stats.norm.ppf(0.95) * boot.standard_error, rel=1e-9)
    # ... and the normal interval is within resampling noise (steps of 1/200, quantile error) of the percentile one.
    assert one.low == pytest.approx(boot.confidence_interval.low, abs=0.01)
    assert one.high == pytest.approx(boot.confidence_interval.high, abs=0.01)


def open_rows(scores, *, bleu=None):
    """Open-ended MAU-Set rows with ROUGE F1s ``scores`` and, if given, sacrebleu statistics."""
    out = []
    for i, s in enumerate(scores):
        row = {"key": f"img{i}", "qa_index": 0, "style": "open", "rouge1": s, "rouge2": s / 2, "rougeL": s}
        if bleu is not None:
            row["bleu"] = {
                "hyp_len": int(bleu[i][0]),
                "ref_len": int(bleu[i][1]),
                "matches": [int(x) for x in bleu[i][2:6]],
                "totals": [int(x) for x in bleu[i][6:]],
            }
        out.append(row)
    return out + rows([True])  # a discriminative row the open-ended metrics must ignore


def test_rouge_goes_through_summarize_and_compare():
    rng = np.random.default_rng(3)
    good = [rng.uniform(0.4, 0.9, 60) for _ in range(2)]
    bad = [g - rng.uniform(0.0, 0.2, 60) for g in good]
    summary = summarize({"a": open_rows(good[0]), "b": open_rows(good[1])}, "rouge2")
    assert summary.per_run == pytest.approx([np.mean(g) / 2 for g in good], rel=1e-12)
    assert summary.low < summary.mean < summary.high and summary.questions == 60
    result = compare({"a": open_rows(good[0]), "b": open_rows(good[1])}, {"a": open_rows(bad[0])}, "rouge1")
    assert result.difference == pytest.approx(np.mean((good[0] + good[1]) / 2 - bad[0]), rel=1e-12)
    assert result.low < result.difference < result.high and result.p_value < 0.01


def test_bleu_goes_through_summarize_and_compare():
    rng = np.random.default_rng(5)
    words = np.array("scratch crack dent stain hole edge top left right part screw metal bottle cap the a".split())
    refs = [" ".join(rng.choice(words, rng.integers(8, 13))) for _ in range(40)]

    def corrupt(ref, k):  # replace k words of the reference
        tokens = ref.split()
        for j in rng.choice(len(tokens), k, replace=False):
            tokens[j] = "zzz"
        return " ".join(tokens)

    bleu = BLEU(smooth_method="none", tokenize="none")
    hyps = {name: [corrupt(r, k) for r in refs] for name, k in (("good 0", 1), ("good 1", 2), ("bad", 4))}
    runs = {name: open_rows(np.zeros(40), bleu=bleu._extract_corpus_statistics(h, [refs])) for name, h in hyps.items()}
    expected = {
        name: sacrebleu.corpus_bleu(h, [refs], smooth_method="none", tokenize="none").score / 100
        for name, h in hyps.items()
    }
    summary = summarize({k: runs[k] for k in ("good 0", "good 1")}, "bleu4")
    assert summary.per_run == pytest.approx([expected["good 0"], expected["good 1"]], abs=1e-9)
    assert summary.low < summary.mean < summary.high
    result = compare({k: runs[k] for k in ("good 0", "good 1")}, {"bad": runs["bad"]}, "bleu4")
    assert result.difference == pytest.approx((expected["good 0"] + expected["good 1"]) / 2 - expected["bad"])
    assert result.low < result.difference < result.high and result.p_value < 0.01 and result.significant
    assert "BLEU" in result.method


def test_mismatched_questions_are_named():
    a, moved = rows([True] * 10), {**rows([True] * 10)[9], "qa_index": 7}
    with pytest.raises(ValueError, match="run 'lora seed 1' has no answer to question 'img3#0' that run 'lora seed 0'"):
        align({"lora seed 0": a, "lora seed 1": a[:9] + [moved]}, "detection_accuracy")
    with pytest.raises(ValueError, match="run 'lora seed 1' answered question 'img3#7' that run 'lora seed 0' did not"):
        align({"lora seed 0": a, "lora seed 1": a + [moved]}, "detection_accuracy")
    with pytest.raises(ValueError, match="run 'lora seed 1' answered question 'img1#2' more than once"):
        align({"lora seed 0": a, "lora seed 1": a + [a[5]]}, "detection_accuracy")
    with pytest.raises(ValueError, match=r"'seed 0 \(reference\)' has no answer to question 'img0#1'.*'seed 0 \(cell"):
        compare({"seed 0": a}, {"seed 0": a[:1] + a[2:]}, "detection_accuracy")
    ids, values = align({"x": a, "y": a[::-1]}, "detection_accuracy")  # order differs, questions the same
    assert ids[:2] == ["img0#0", "img0#1"] and values.shape == (2, 10)


def test_mmad_rows():
    def mmad(correct):
        return [
            {"image": f"MVTec/bottle/{i}.png", "question_index": i % 4, "correct": c, "answer": "A"}
            for i, c in enumerate(correct)
        ]

    better, worse = hits(range(150)), hits(range(100))
    summary = summarize({"s0": mmad(better), "s1": mmad(better)}, "mmad_accuracy")
    assert summary.per_run == (0.75, 0.75) and summary.std == 0.0
    result = compare({"s0": mmad(better)}, {"s0": mmad(worse)}, "mmad_accuracy")
    assert result.difference == pytest.approx(0.25) and result.significant
    with pytest.raises(ValueError, match="detection_accuracy"):
        summarize({"s0": mmad(better)}, "detection_accuracy")


def test_batches_give_the_same_numbers(monkeypatch):
    # Large sweeps resample in batches to bound memory; the random stream, and so every number, is unchanged.
    whole = compare(CELL, REFERENCE, "detection_accuracy", resamples=300), summarize(CELL, "detection_accuracy")
    monkeypatch.setattr("maugpt.evaluation.statistics._CAP", 1000)
    batched = compare(CELL, REFERENCE, "detection_accuracy", resamples=300), summarize(CELL, "detection_accuracy")
    assert batched == whole
