"""MMAD scoring on a hand-made mmad.json: every number below is worked out by hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maugpt.evaluation.mmad import extract_letter, load_questions, match_predictions, score

YES_NO = {"A": "Yes.", "B": "No."}


def q(kind: str, answer: str, options: dict | None = None, text: str | None = None) -> dict:
    options = options or {"A": "first", "B": "second", "C": "third", "D": "fourth"}
    return {"Question": text or f"{kind}?", "Options": options, "Answer": answer, "type": kind, "annotation": True}


MMAD = {
    "DS-MVTec/bottle/image/good/000.png": {"conversation": [
        q("Anomaly Detection", "B", YES_NO), q("Object Classification", "A")]},
    "DS-MVTec/bottle/image/broken_large/000.png": {"conversation": [
        q("Anomaly Detection", "A", YES_NO), q("Defect Classification", "A"), q("Object Structure", "B"),
        q("Object Details", "A")]},
    "DS-MVTec/bottle/image/broken_large/001.png": {"conversation": [q("Anomaly Detection", "A", YES_NO)]},
    "VisA/candle/image/good/000.png": {"conversation": [
        q("Anomaly Detection", "B", YES_NO), q("Object Classification", "A")]},
    "VisA/candle/image/wax/000.png": {"conversation": [
        q("Anomaly Detection", "A", YES_NO), q("Defect Localization", "C"), q("Defect Description", "B"),
        q("Defect Analysis", "D")]},
}
ANSWERS = [  # (image, question index, raw answer): in this order
    ("DS-MVTec/bottle/image/good/000.png", 0, "B"),                    # right
    ("DS-MVTec/bottle/image/good/000.png", 1, "The answer is A."),     # right
    ("DS-MVTec/bottle/image/broken_large/000.png", 0, "A"),            # right
    ("DS-MVTec/bottle/image/broken_large/000.png", 1, "C"),            # wrong
    ("DS-MVTec/bottle/image/broken_large/000.png", 2, "B"),            # right (Object Structure)
    ("DS-MVTec/bottle/image/broken_large/000.png", 3, "B"),            # wrong (Object Details)
    ("DS-MVTec/bottle/image/broken_large/001.png", 0, "B"),            # wrong
    ("VisA/candle/image/good/000.png", 0, ""),                         # unparsable
    ("VisA/candle/image/good/000.png", 1, "A"),                        # right
    ("VisA/candle/image/wax/000.png", 0, "Yes."),                      # no letter: closest option text → A, right
    ("VisA/candle/image/wax/000.png", 1, "I think C. Actually D"),     # last letter D wrong; first letter C right
    ("VisA/candle/image/wax/000.png", 2, "B"),                         # right
    ("VisA/candle/image/wax/000.png", 3, "D"),                         # right
]


@pytest.fixture
def mmad(tmp_path) -> Path:
    path = tmp_path / "mmad.json"
    path.write_text(json.dumps(MMAD))
    return path


def predictions(rows=ANSWERS) -> list[dict]:
    return [{"image": image, "question_index": index, "answer": answer} for image, index, answer in rows]


def test_scores_follow_the_official_protocol_with_unparsable_answers_wrong(mmad):
    scores = score(match_predictions(load_questions(mmad), predictions()))
    assert scores.table == {
        # AD balanced: normal 1/1, anomalous 1/2 → 75; Object Analysis = Structure + Details: 1/2
        "DS-MVTec": {"Anomaly Detection": 75.0, "Object Classification": 100.0, "Defect Classification": 0.0,
                     "Object Analysis": 50.0},
        # AD balanced: normal 0/1 (unparsable), anomalous 1/1 → 50
        "VisA": {"Anomaly Detection": 50.0, "Object Classification": 100.0, "Defect Localization": 0.0,
                 "Defect Description": 100.0, "Defect Analysis": 100.0}}
    assert scores.row_average("DS-MVTec") == 56.25 and scores.row_average("VisA") == 70.0
    assert scores.average == 63.125 and scores.subtask_average("Anomaly Detection") == 62.5
    assert (scores.unparsable, scores.dropped) == (1, 0)
    table = scores.markdown().splitlines()
    assert table[2] == "| DS-MVTec | 75.00 | 0.00 | — | — | — | 100.00 | 50.00 | 56.25 |"
    assert table[4] == "| **average** | 62.50 | 0.00 | 0.00 | 100.00 | 100.00 | 100.00 | 50.00 | 63.12 |"
    assert table[-1] == "unparsable answers: 1 (unparsable = wrong)"
    assert scores.csv().splitlines()[-1].startswith("average,62.5000,0.0000,0.0000,100.0000")


def test_official_handling_drops_unparsable_answers_and_the_first_letter_option(mmad):
    official = score(match_predictions(load_questions(mmad), predictions()), unparsable="official")
    # VisA's only normal AD answer is dropped: balanced accuracy over the anomalous group alone
    assert official.table["VisA"]["Anomaly Detection"] == 100.0 and official.row_average("VisA") == 80.0
    assert official.average == 68.125 and (official.unparsable, official.dropped) == (1, 1)
    first = score(match_predictions(load_questions(mmad), predictions()), last_letter=False)
    assert first.table["VisA"]["Defect Localization"] == 100.0 and first.average == 73.125


def test_official_handling_never_checks_the_record_after_a_dropped_one(mmad):
    questions = load_questions(mmad)
    pairs = [(questions[0], ""), (questions[1], ""), (questions[2], ""), (questions[3], "A")]
    scores = score(pairs, unparsable="official")
    # 1st dropped; 2nd escapes the check and counts as wrong; 3rd dropped; 4th right
    assert (scores.unparsable, scores.dropped) == (3, 2)
    assert scores.table["DS-MVTec"] == {"Object Classification": 0.0, "Defect Classification": 100.0}


@pytest.mark.parametrize("text, last, first", [
    ("A", "A", "A"), ("Answer: (B)", "B", "B"), ("The answer is B, not A", "A", "B"),
    ("E", "E", "E"),  # parsed, though no option E exists: scored wrong, not unparsable
    ("B.\nExplanation: option A is a scratch", "A", "B"), ("", None, None), ("   ", None, None)])
def test_letter_extraction_on_tricky_strings(text, last, first):
    options = {"A": "first", "B": "second"}
    assert extract_letter(text, options) == last
    assert extract_letter(text, options, last=False) == first


def test_no_letter_falls_back_to_the_closest_option_text():
    options = {"A": "A scratch on the surface.", "B": "No defect.", "C": "A missing cap."}
    assert extract_letter("there is no defect", options) == "B"
    assert extract_letter("missing cap", options) == "C"
    assert extract_letter("ABC", {"A": "yes", "B": "ABCD"}) == "B"  # "ABC" holds no standalone letter


def test_a_question_may_be_named_by_its_text(mmad):
    rows = predictions()
    rows[0] = {"image": rows[0]["image"], "question": "Anomaly Detection?", "answer": "B"}
    assert score(match_predictions(load_questions(mmad), rows)).average == 63.125


def test_mismatched_predictions_list_a_few_with_counts(mmad):
    rows = predictions()[:-2] + [predictions()[0], {"image": "VisA/nope.png", "question_index": 0, "answer": "A"}]
    with pytest.raises(ValueError) as err:
        match_predictions(load_questions(mmad), rows)
    message = str(err.value)
    assert "1 unknown (e.g. line 13: VisA/nope.png / 0)" in message
    assert "1 duplicate (e.g. line 12: DS-MVTec/bottle/image/good/000.png #0)" in message
    assert "2 unanswered (e.g. VisA/candle/image/wax/000.png #2, VisA/candle/image/wax/000.png #3)" in message


@pytest.mark.parametrize("field, value, expected", [
    ("Options", None, "field 'Options' must be a dict"), ("type", "Defect Counting", "field 'type' is 'Defect Counting'"),
    ("Answer", "F", "field 'Answer' 'F' is not one of the options")])
def test_a_malformed_entry_names_its_key_and_field(tmp_path, field, value, expected):
    broken = json.loads(json.dumps(MMAD))
    broken["VisA/candle/image/wax/000.png"]["conversation"][1][field] = value
    path = tmp_path / "mmad.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=f"entry 'VisA/candle/image/wax/000.png', question 1: {expected}"):
        load_questions(path)


def test_score_mmad_tool_prints_table_5_and_writes_csv(mmad, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(p) for p in predictions()) + "\n")
    tool = Path(__file__).parents[2] / "tools" / "score_mmad.py"
    done = subprocess.run([sys.executable, str(tool), "--questions", str(mmad), "--predictions", str(answers),
                           "--csv", str(tmp_path / "t5.csv")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| **average** | 62.50 | 0.00 | 0.00 | 100.00 | 100.00 | 100.00 | 50.00 | 63.12 |" in done.stdout
    assert (tmp_path / "t5.csv").read_text().splitlines()[0].startswith("dataset,Anomaly Detection,")
    again = subprocess.run([sys.executable, str(tool), "--questions", str(mmad), "--predictions", str(answers),
                            "--csv", str(tmp_path / "t5.csv")], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "t5.csv exists" in again.stderr
    answers.write_text("{not json\n")
    bad = subprocess.run([sys.executable, str(tool), "--questions", str(mmad), "--predictions", str(answers)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "answers.jsonl, line 1: not JSON" in bad.stderr


def test_predictions_with_shuffled_options_are_scored_by_option_text(mmad):
    questions = load_questions(mmad)
    rows = predictions()
    # broken_large/001.png shown with the options swapped: "B" now means "Yes.", the right answer
    rows[6] = {**rows[6], "options": {"A": "No.", "B": "Yes."}, "answer": "B"}
    pairs = match_predictions(questions, rows)
    assert pairs[6][0].options == {"A": "No.", "B": "Yes."} and pairs[6][0].answer == "B"
    assert score(pairs).table["DS-MVTec"]["Anomaly Detection"] == 100.0  # was 75: this answer is now right
    rows[6]["options"] = {"A": "No.", "B": "Maybe."}
    with pytest.raises(ValueError, match=r"prediction 7: 'options' .* are not the options of "
                                         r"DS-MVTec/bottle/image/broken_large/001.png #0"):
        match_predictions(questions, rows)
