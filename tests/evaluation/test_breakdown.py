"""MAU-Set breakdowns from the answers' own scores: hand-counted groups, generic defects marked."""

from __future__ import annotations

import pytest

from maugpt.evaluation.breakdown import mauset_breakdowns
from maugpt.evaluation.mauset import MAUSetScores

IND, ELEC = "Industrial Components", "Electronic Components"


def row(source, product, defect, answer, reference, generic=False, domain=IND):
    meta = {
        "key": f"{source}/{product}/{defect}",
        "qa_index": 0,
        "source": source,
        "product": product,
        "defect_class": defect,
        "is_anomalous": defect is not None,
        "generic_defect": generic,
        "domain": domain,
        "task": "detection",
        "style": "discriminative",
        "question": "Is there a defect?",
        "reference": reference,
    }
    return meta, answer


def open_row(task, domain, answer, reference):
    meta = {
        "key": f"{task}-{domain}-{answer}",
        "qa_index": 1,
        "source": "visa",
        "product": "pcb1",
        "defect_class": "bent",
        "is_anomalous": True,
        "generic_defect": False,
        "domain": domain,
        "task": task,
        "style": "open",
        "question": "Describe it.",
        "reference": reference,
    }
    return meta, answer


def scored(pairs):
    scores = MAUSetScores()
    return [{**meta, "prediction": answer, **scores.add(meta, answer)} for meta, answer in pairs]


def test_detection_per_source_product_and_defect_class_with_generic_classes_marked():
    rows = scored(
        [
            row("mvtec_ad", "bottle", "crack", "True", "True"),  # right
            row("mvtec_ad", "bottle", None, "True", "False"),  # wrong (a normal image)
            row("mvtec_ad", "bottle", None, "False", "False"),  # right
            row("visa", "pcb1", "melt", "no", "True", generic=True),  # wrong
            row("visa", "pcb1", "crack", "yes", "True"),
        ]
    )  # right
    other = scored([row("elsewhere", "bolt", None, "True", "True")])[0]  # another model's row: no image labels
    del other["is_anomalous"]
    markdown, csv = mauset_breakdowns(rows + [other])
    lines = markdown.splitlines()
    assert "| mvtec_ad | 66.67 | 3 |" in lines and "| visa | 50.00 | 2 |" in lines
    assert "| bottle | 66.67 | 3 |" in lines and "| pcb1 | 50.00 | 2 |" in lines
    assert "| crack | 100.00 | 2 |" in lines and "| normal | 50.00 | 2 |" in lines
    assert "| melt (generic) | 0.00 | 1 |" in lines and "| unknown | 100.00 | 1 |" in lines
    assert 'detection per defect class,"melt (generic)",detection_accuracy,0.000000,1' in csv.splitlines()
    assert csv.splitlines()[0] == "table,group,metric,value,answers"


def test_open_answers_per_task_and_domain_pool_their_bleu_statistics():
    pairs = [
        open_row("description", IND, "the nut has a crack defect", "the nut has a crack defect"),
        open_row("description", IND, "a crack at the bottom", "the crack is in the top left"),
        open_row("localization", ELEC, "top left corner", "the top left corner"),
    ]
    rows = scored(pairs)
    markdown, csv = mauset_breakdowns(rows)
    # the same two answers scored as a group by the corpus metrics give the group's row
    group = MAUSetScores()
    for meta, answer in pairs[:2]:
        group.add(meta, answer)
    expected = group.compute()
    values = {
        line.split(",")[2]: float(line.split(",")[3])
        for line in csv.splitlines()
        if line.startswith(f'open per task x domain,"description / {IND}"')
    }
    for name in ("rouge1", "rouge2", "rougeL", "bleu4"):
        assert values[name] == pytest.approx(expected[name], abs=1e-6), name
    assert f"| localization | {ELEC} |" in markdown


def test_rows_without_their_own_scores_are_named():
    meta, answer = row("mvtec_ad", "bottle", "crack", "True", "True")
    with pytest.raises(
        ValueError,
        match=r"prediction 'mvtec_ad/bottle/crack' has no per-answer scores .* "
        r"maugpt score-mauset --out",
    ):
        mauset_breakdowns([{**meta, "prediction": answer}])
