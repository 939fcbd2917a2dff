"""MAU-Set scores: hand-worked values on fixed strings, 2 ranks equal to 1, and the written tables."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maugpt.evaluation.mauset import MAUSetScores, parse_true_false, tables

IND, ELEC = "Industrial Components", "Electronic Components"


def disc(domain: str, reference: str) -> dict:
    return {"style": "discriminative", "task": "detection", "domain": domain, "reference": reference}


def open_qa(domain: str, task: str, reference: str) -> dict:
    return {"style": "open", "task": task, "domain": domain, "reference": reference}


ANSWERS = [
    (disc(IND, "True"), "True, there is a scratch."),        # right
    (disc(IND, "False"), "Yes."),                             # wrong (yes = True)
    (disc(IND, "True"), "I cannot tell."),                    # unparsable → wrong
    (disc(ELEC, "False"), "false"),                           # right
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
    assert r["rouge1"] == pytest.approx((1 + 1 / 3) / 2) and r["rougeL/domain:Electronic Components"] == pytest.approx(1 / 3)
    assert math.isnan(r["rouge1/task:description"])


def test_true_false_parsing_takes_the_first_verdict_word():
    assert parse_true_false("False. It is True that the surface is clean") is False
    assert parse_true_false("YES") is True and parse_true_false("untrue") is None and parse_true_false("") is None


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
    assert "| tiny | 33.33 | 100.00 | — | — | — | — | 50.00 |" in lines
    assert "| task: classification | 100.00 | 100.00 | 100.00 | 100.00 |" in lines
    assert "unparsable True/False answers: 1 (counted as wrong)" in lines
    assert "detection_accuracy,0.500000" in csv.splitlines()


def test_maugpt_test_writes_predictions_and_tables_without_overwriting(tiny_base, synthetic_dir, tmp_path):
    import json

    from maugpt.data.reader import iter_samples
    from maugpt.training.cli import run
    from tests.training.conftest import AMOE, stage_config

    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=1, adapter=AMOE, max_new_tokens=3)
    run(["fit", "--config", config])
    last = str(tmp_path / "stage2" / "checkpoints" / "last.ckpt")
    first = run(["test", "--config", config, "--ckpt_path", last])
    folder = next((tmp_path / "tb" / "stage2").glob("version_*/evaluation"))
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    questions = [qa for s in iter_samples(synthetic_dir / "mauset" / "test") for qa in s["json"]["qa"]]
    assert len(rows) == len(questions) and len({(r["key"], r["question"]) for r in rows}) == len(rows)
    assert set(rows[0]) == {"key", "source", "domain", "product", "task", "style", "question", "reference", "prediction"}
    markdown = (folder / "tables.md").read_text()
    assert markdown.startswith("### Discriminative QA accuracy (%)") and "| task: localization |" in markdown
    accuracy = first.trainer.callback_metrics["test/detection_accuracy"].item()
    assert f"detection_accuracy,{accuracy:.6f}" in (folder / "scores.csv").read_text()
    run(["test", "--config", config, "--ckpt_path", last, "--trainer.logger", "false",
         "--trainer.default_root_dir", str(folder.parent)])
    assert (folder / "tables.md").read_text() == markdown  # the earlier tables stay
    assert (folder.parent / "evaluation-2" / "tables.md").is_file()
