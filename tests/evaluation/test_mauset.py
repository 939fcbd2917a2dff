"""MAU-Set scores: hand-worked values on fixed strings, the reference implementations (rouge-score,
sacrebleu), 2 ranks equal to 1, and the written tables."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sacrebleu
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rouge_score import rouge_scorer

from maugpt.evaluation.mauset import MAUSetScores, tables
from maugpt.evaluation.statistics import corpus_bleu
from maugpt.evaluation.true_false import parse_true_false

IND, ELEC = "Industrial Components", "Electronic Components"


def disc(domain: str, reference: str) -> dict:
    return {"style": "discriminative", "task": "detection", "domain": domain, "reference": reference}


def open_qa(domain: str, task: str, reference: str) -> dict:
    return {"style": "open", "task": task, "domain": domain, "reference": reference}


ANSWERS = [
    (disc(IND, "True"), "True, there is a scratch."),  # right
    (disc(IND, "False"), "Yes."),  # wrong (yes = True)
    (disc(IND, "True"), "I cannot tell."),  # unparsable → wrong
    (disc(ELEC, "False"), "false"),  # right
    (open_qa(IND, "classification", "the nut has a crack defect"), "the nut has a crack defect"),
    (open_qa(ELEC, "localization", "the crack is in the top left"), "a crack at the bottom"),
]


def test_discriminative_accuracy_per_domain_and_overall():
    scores = MAUSetScores()
    for meta, answer in ANSWERS:
        scores.add(meta, answer)
    results = scores.compute()
    assert results["detection_accuracy/Industrial Components"] == pytest.approx(1 / 3)
    assert results["detection_accuracy/Electronic Components"] == 1.0
    assert results["detection_accuracy"] == 0.5 and results["detection_unparsed"] == 1.0
    assert math.isnan(results["detection_accuracy/Optical Inspection"])
    # macro: the mean of the two domains with questions, (1/3 + 1)/2; pooled: 2 of 4 questions
    assert results["detection_accuracy_macro"] == pytest.approx(2 / 3) and results["detection_domains"] == 2


def test_rouge_and_bleu_against_hand_computed_values():
    scores = MAUSetScores()
    for meta, answer in ANSWERS:
        scores.add(meta, answer)
    r = scores.compute()
    # identical answer: every score is 1
    assert [r[f"{m}/task:classification"] for m in ("rouge1", "rouge2", "rougeL", "bleu4")] == [1.0, 1.0, 1.0, 1.0]
    # "a crack at the bottom" vs "the crack is in the top left": unigrams in common {crack, the} →
    # P = 2/5, R = 2/7, F1 = 1/3; no common bigram; LCS "crack … the" = 2 → ROUGE-L F1 = 1/3
    assert r["rouge1/task:localization"] == pytest.approx(1 / 3)
    assert r["rouge2/task:localization"] == 0.0 and r["rougeL/task:localization"] == pytest.approx(1 / 3)
    assert r["bleu4/task:localization"] == 0.0  # no 4-gram in common
    # overall ROUGE is the mean over answers; corpus BLEU pools n-gram counts
    assert r["rouge1"] == pytest.approx((1 + 1 / 3) / 2) and r["rougeL/domain:Electronic Components"] == pytest.approx(
        1 / 3
    )
    assert math.isnan(r["rouge1/task:description"])


QUESTION = "Is there any defect in this image of a bottle? Answer True or False."


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("False", False),
        ("YES", True),
        ("Yes.", True),
        ("no", False),
        ("True, there is a scratch.", True),
        (QUESTION + " Answer: False", False),  # an echoed question: its words are not the answer
        ("True or False: False", False),  # the offered choices are not the answer
        ("It is not true.", False),
        ("untrue", False),
        ("The answer is not False.", True),
        ("Incorrect.", False),
        ("Correct", True),
        ("Defective", True),
        ("Anomalous", True),
        ("The bottle is abnormal.", True),
        ("Normal", False),
        ("The product is defect-free.", False),
        ("The bottle is not normal.", True),
        ("No, it is not defective.", False),
        ("There is no visible defect on the bottle.", False),
        ("No defect.", False),
        ("It isn't damaged.", False),
        ("False. It is True that the surface is clean", False),  # the first verdict word, then the explanation
        ("I cannot tell.", None),
        ("There is a scratch.", None),
        ("", None),
    ],
)
def test_true_false_parsing_reads_the_final_verdict(answer, verdict):
    assert parse_true_false(answer) is verdict


def test_the_echoed_question_is_removed_when_known():
    echo = QUESTION + " False."  # no answer marker: without the question, "defect" would come first
    assert parse_true_false(echo, QUESTION) is False and parse_true_false(echo) is False  # verdict words come first
    assert parse_true_false("Is the bottle defective? Normal.", "Is the bottle defective?") is False
    assert parse_true_false("Is the bottle defective? Normal.") is True  # the echo's "defective" is read first


def _corpus(seed: int = 0, n: int = 60) -> tuple[list[str], list[str]]:
    """References and predictions sharing most words (so that 4-grams match), with punctuation,
    case and inflections that tokenizers and stemmers treat differently."""
    rng = random.Random(seed)
    words = "the a scratch scratches crack cracked on top-left surface of bottle, it's 3mm dent. Dent dents".split()
    references = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) for _ in range(n)]
    predictions = [" ".join(w if rng.random() < 0.8 else rng.choice(words) for w in r.split()) for r in references]
    return references, predictions


def test_each_answer_gets_its_own_verdict_or_scores():
    scores = MAUSetScores()
    own = [scores.add(meta, answer) for meta, answer in ANSWERS]
    assert own[:4] == [
        {"verdict": "True", "correct": True},
        {"verdict": "True", "correct": False},
        {"verdict": None, "correct": False},
        {"verdict": "False", "correct": True},
    ]
    assert own[4] == {
        "rouge1": 1.0,
        "rouge2": 1.0,
        "rougeL": 1.0,
        "bleu": {"hyp_len": 6, "ref_len": 6, "matches": [6, 5, 4, 3], "totals": [6, 5, 4, 3]},
    }
    # "a crack at the bottom" vs "the crack is in the top left": the hand-worked F1s above; 2 unigrams match
    assert own[5]["rouge1"] == pytest.approx(1 / 3) and own[5]["rouge2"] == 0.0
    assert own[5]["bleu"] == {"hyp_len": 5, "ref_len": 7, "matches": [2, 0, 0, 0], "totals": [5, 4, 3, 2]}


@pytest.mark.parametrize("stemmer", [False, True])
def test_rouge_equals_rouge_score(stemmer):
    references, predictions = _corpus()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stemmer)
    scores = MAUSetScores(rouge_stemmer=stemmer)
    expected = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL")}
    for reference, prediction in zip(references, predictions):
        own = scores.add(open_qa(IND, "description", reference), prediction)
        for key, value in scorer.score(reference, prediction).items():
            expected[key] += value.fmeasure / len(references)
            assert own[key] == pytest.approx(value.fmeasure, abs=1e-6), key  # each answer's own score too
    results = scores.compute()
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-6), key
    assert expected["rouge1"] > 0.5  # a corpus where the scores mean something


@pytest.mark.parametrize("tokenize", ["none", "13a"])
def test_bleu_equals_sacrebleu_without_smoothing(tokenize):
    references, predictions = _corpus(seed=1)
    scores = MAUSetScores(bleu_tokenize=tokenize)
    own = [
        scores.add(open_qa(ELEC, "localization", reference), prediction)["bleu"]
        for reference, prediction in zip(references, predictions)
    ]
    expected = sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize, smooth_method="none").score / 100
    assert scores.compute()["bleu4"] == pytest.approx(expected, abs=1e-6) and expected > 0.3
    # the answers' own statistics, summed, are the corpus BLEU's: a subset can be scored without the texts
    stats = np.array([[b["hyp_len"], b["ref_len"], *b["matches"], *b["totals"]] for b in own]).sum(axis=0)
    assert corpus_bleu(stats) == pytest.approx(expected, abs=1e-9)


def test_the_bleu_tokenizers_differ_and_bad_settings_are_named():
    references, predictions = _corpus(seed=1)
    results = []
    for tokenize in ("none", "13a"):
        scores = MAUSetScores(bleu_tokenize=tokenize)
        for reference, prediction in zip(references, predictions):
            scores.add(open_qa(ELEC, "localization", reference), prediction)
        results.append(scores.compute()["bleu4"])
    assert results[0] != pytest.approx(results[1])  # "bottle," is one token for none, two for 13a
    with pytest.raises(ValueError, match=r"bleu_tokenize must be one of \['none', '13a'\], got 'intl'"):
        MAUSetScores(bleu_tokenize="intl")


def test_an_unknown_domain_is_named():
    with pytest.raises(ValueError, match="unknown domain 'Space' in k1"):
        MAUSetScores().add({**disc(IND, "True"), "domain": "Space", "key": "k1"}, "True")


def _rank(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    scores = MAUSetScores()
    for meta, answer in ANSWERS[rank::world]:  # rank 1 has no classification answer at all
        scores.add(meta, answer)
    results = scores.compute()
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def test_two_ranks_give_the_scores_of_one():
    single = MAUSetScores()
    for meta, answer in ANSWERS:
        single.add(meta, answer)
    expected = single.compute()
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = 29500 + torch.randint(0, 2000, ()).item()
    procs = [context.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(value), key


def test_tables_lay_out_table_2_and_table_4():
    scores = MAUSetScores()
    for meta, answer in ANSWERS:
        scores.add(meta, answer)
    markdown, csv = tables(scores.compute(), model="tiny")
    lines = markdown.splitlines()
    assert lines[2].endswith("| macro avg. (2 domains) | pooled (all questions) |")
    assert "| tiny | 33.33 | 100.00 | — | — | — | — | 66.67 | 50.00 |" in lines
    assert "| task: classification | 100.00 | 100.00 | 100.00 | 100.00 |" in lines
    assert "unparsable True/False answers: 1 (counted as wrong)" in lines
    assert "detection_accuracy,0.500000" in csv.splitlines()
    assert "detection_accuracy_macro,0.666667" in csv.splitlines()
    assert lines[-1] == (
        "ROUGE: rouge-score F1, no stemming, averaged over answers; "
        "BLEU-4: corpus BLEU = sacrebleu tokenize='none', smooth_method='none'"
    )


def test_maugpt_test_writes_predictions_and_tables_without_overwriting(tiny_base, synthetic_dir, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from maugpt.data.shards import iter_samples
    from maugpt.training.cli import run
    from tests.training.conftest import AMOE, stage_config

    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=1, adapter=AMOE, max_new_tokens=3)
    run(["fit", "--config", config])
    last = str(tmp_path / "stage2" / "checkpoints" / "last.ckpt")
    first = run(["test", "--config", config, "--ckpt_path", last])
    folder = next((tmp_path / "tb" / "stage2").glob("version_*/evaluation"))
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    questions = [qa for s in iter_samples(synthetic_dir / "mauset" / "test") for qa in s["json"]["qa"]]
    assert len(rows) == len(questions) and len({(r["key"], r["qa_index"]) for r in rows}) == len(rows)
    common = {
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
        "prediction",
    }
    assert {frozenset(r) for r in rows} == {
        frozenset(common | {"verdict", "correct"}),
        frozenset(common | {"rouge1", "rouge2", "rougeL", "bleu"}),
    }
    assert all(r["correct"] == (r["verdict"] == r["reference"]) for r in rows if r["style"] == "discriminative")
    markdown = (folder / "tables.md").read_text()
    assert markdown.startswith("### Discriminative QA accuracy (%)") and "| task: localization |" in markdown
    accuracy = first.trainer.callback_metrics["test/detection_accuracy"].item()
    assert f"detection_accuracy,{accuracy:.6f}" in (folder / "scores.csv").read_text()
    # the standalone tool scores the written predictions to the same numbers; with 13a, the setting is written
    tool = Path(__file__).parents[2] / "tools" / "score_mauset.py"
    again = subprocess.run(
        [sys.executable, str(tool), str(folder), "--out", str(tmp_path / "re")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "re" / "scores.csv").read_text() == (folder / "scores.csv").read_text()
    rescored = [json.loads(line) for line in (tmp_path / "re" / "predictions.jsonl").read_text().splitlines()]
    assert rescored == rows  # the same per-answer scores from the written answers alone
    assert (tmp_path / "re" / "tables.md").read_text().replace("| model |", "") == markdown.replace("| model |", "")
    other = subprocess.run(
        [
            sys.executable,
            str(tool),
            str(folder / "predictions.jsonl"),
            "--bleu_tokenize",
            "13a",
            "--out",
            str(tmp_path / "re"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        other.returncode != 0
        and "already holds one of tables.md, scores.csv, breakdown.csv, predictions.jsonl" in other.stderr
    )
    other = subprocess.run(
        [sys.executable, str(tool), str(folder / "predictions.jsonl"), "--bleu_tokenize", "13a"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0 and "sacrebleu tokenize='13a'" in other.stdout
    run(
        [
            "test",
            "--config",
            config,
            "--ckpt_path",
            last,
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(folder.parent),
        ]
    )
    assert (folder / "tables.md").read_text() == markdown  # the earlier tables stay
    assert (folder.parent / "evaluation-2" / "tables.md").is_file()
