"""MMAD scoring on a hand-made mmad.json: every number below is worked out by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maugpt.mmad.scoring import extract_letter, load_questions, match_predictions, score

YES_NO = {"A": "Yes.", "B": "No."}


def q(kind: str, answer: str, options: dict | None = None, text: str | None = None) -> dict:
    options = options or {"A": "first", "B": "second", "C": "third", "D": "fourth"}
    return {"Question": text or f"{kind}?", "Options": options, "Answer": answer, "type": kind, "annotation": True}


MMAD = {
    "DS-MVTec/bottle/image/good/000.png": {
        "conversation": [q("Anomaly Detection", "B", YES_NO), q("Object Classification", "A")]
    },
    "DS-MVTec/bottle/image/broken_large/000.png": {
        "conversation": [
            q("Anomaly Detection", "A", YES_NO),
            q("Defect Classification", "A"),
            q("Object Structure", "B"),
            q("Object Details", "A"),
        ]
    },
    "DS-MVTec/bottle/image/broken_large/001.png": {"conversation": [q("Anomaly Detection", "A", YES_NO)]},
    "VisA/candle/image/good/000.png": {
        "conversation": [q("Anomaly Detection", "B", YES_NO), q("Object Classification", "A")]
    },
    "VisA/candle/image/wax/000.png": {
        "conversation": [
            q("Anomaly Detection", "A", YES_NO),
            q("Defect Localization", "C"),
            q("Defect Description", "B"),
            q("Defect Analysis", "D"),
        ]
    },
}
ANSWERS = [  # (image, question index, raw answer): in this order
    ("DS-MVTec/bottle/image/good/000.png", 0, "B"),  # right
    ("DS-MVTec/bottle/image/good/000.png", 1, "The answer is A."),  # right
    ("DS-MVTec/bottle/image/broken_large/000.png", 0, "A"),  # right
    ("DS-MVTec/bottle/image/broken_large/000.png", 1, "C"),  # wrong
    ("DS-MVTec/bottle/image/broken_large/000.png", 2, "B"),  # right (Object Structure)
    ("DS-MVTec/bottle/image/broken_large/000.png", 3, "B"),  # wrong (Object Details)
    ("DS-MVTec/bottle/image/broken_large/001.png", 0, "B"),  # wrong
    ("VisA/candle/image/good/000.png", 0, ""),  # unparsable
    ("VisA/candle/image/good/000.png", 1, "A"),  # right
    ("VisA/candle/image/wax/000.png", 0, "Yes."),  # no letter: closest option text → A, right
    ("VisA/candle/image/wax/000.png", 1, "I think C. Actually D"),  # last letter D wrong; first letter C right
    ("VisA/candle/image/wax/000.png", 2, "B"),  # right
    ("VisA/candle/image/wax/000.png", 3, "D"),  # right
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
        "DS-MVTec": {
            "Anomaly Detection": 75.0,
            "Object Classification": 100.0,
            "Defect Classification": 0.0,
            "Object Analysis": 50.0,
        },
        # AD balanced: normal 0/1 (unparsable), anomalous 1/1 → 50
        "VisA": {
            "Anomaly Detection": 50.0,
            "Object Classification": 100.0,
            "Defect Localization": 0.0,
            "Defect Description": 100.0,
            "Defect Analysis": 100.0,
        },
    }
    assert scores.row_average("DS-MVTec") == 56.25 and scores.row_average("VisA") == 70.0
    assert scores.average == 63.125 and scores.subtask_average("Anomaly Detection") == 62.5
    assert (scores.unparsable, scores.dropped) == (1, 0)
    table = scores.markdown().splitlines()
    assert table[2] == "| DS-MVTec | 75.00 | 0.00 | — | — | — | 100.00 | 50.00 | 56.25 |"
    assert table[4] == "| **average** | 62.50 | 0.00 | 0.00 | 100.00 | 100.00 | 100.00 | 50.00 | 63.12 |"
    assert table[-1] == "unparsable answers: 1 (unparsable = wrong)"
    assert scores.csv().splitlines()[-1].startswith("average,62.5000,0.0000,0.0000,100.0000")


def test_first_letter_extraction(mmad):
    first = score(match_predictions(load_questions(mmad), predictions()), last_letter=False)
    assert first.table["VisA"]["Defect Localization"] == 100.0 and first.average == 73.125


# Official handling (helper/summary.py caculate_accuracy_mmad @ f9a0e6fd), worked by hand from its rules:
# a record whose letter is not A-E is removed inside the loop and the record after it is never
# visited; every dataset x type seen in the answers is a cell, 0 when nothing was graded, and
# enters the row mean; an empty normal/anomalous group adds 0 to balanced accuracy.


def test_official_handling_with_a_script_that_has_no_fallback(mmad):
    # internvl/gpt4v extraction: last letter, no closest-option fallback. In ANSWERS' order:
    # #8 VisA good AD "" → dropped, so #9 VisA good OC "A" (right) is never visited;
    # #10 VisA wax AD "Yes." → no letter, dropped, so #11 VisA wax DL is never visited.
    s = score(
        match_predictions(load_questions(mmad), predictions()), "official", last_letter=True, closest_option=False
    )
    assert (s.unparsable, s.dropped, s.skipped) == (2, 2, 2)
    # DS-MVTec: AD (1/1 + 1/2)/2 = 75, OC 100, DC 0, OA 1/2 = 50, and DL, DD, DA have no record: 0
    assert s.table["DS-MVTec"] == {
        "Anomaly Detection": 75.0,
        "Object Classification": 100.0,
        "Defect Classification": 0.0,
        "Object Analysis": 50.0,
        "Defect Localization": 0.0,
        "Defect Description": 0.0,
        "Defect Analysis": 0.0,
    }
    # VisA: both AD groups empty → (0 + 0)/2; OC skipped → 0; DD 1/1, DA 1/1
    assert s.table["VisA"] == {
        "Anomaly Detection": 0.0,
        "Object Classification": 0.0,
        "Defect Classification": 0.0,
        "Object Analysis": 0.0,
        "Defect Localization": 0.0,
        "Defect Description": 100.0,
        "Defect Analysis": 100.0,
    }
    assert s.row_average("DS-MVTec") == pytest.approx(225 / 7) and s.row_average("VisA") == pytest.approx(200 / 7)
    assert s.average == pytest.approx(425 / 14)  # 30.357…, the official CSV's Average/Average
    assert s.markdown().splitlines()[-1] == (
        "unparsable answers: 2 (official summary: 2 records dropped, 2 records right after them never checked)"
    )


def test_official_handling_maps_every_answer_with_the_closest_option_scripts(mmad):
    # qwen extraction (last letter, closest option): "" goes through difflib too; every ratio is 0
    # and the largest option text wins: "Yes." > "No." → A, wrong for VisA's normal image. Nothing dropped.
    s = score(match_predictions(load_questions(mmad), predictions()), "official", last_letter=True)
    assert (s.unparsable, s.dropped, s.skipped) == (0, 0, 0)
    # VisA: AD (0/1 + 1/1)/2 = 50, OC 100, DC 0, OA 0, DL 0/1 ("… Actually D"), DD 100, DA 100 → 350/7
    assert s.table["VisA"]["Anomaly Detection"] == 50.0 and s.row_average("VisA") == 50.0
    assert s.average == pytest.approx((225 / 7 + 50) / 2)  # 41.071…
    llava = score(match_predictions(load_questions(mmad), predictions()), "official", last_letter=False)
    assert llava.table["VisA"]["Defect Localization"] == 100.0 and llava.average == pytest.approx(
        (225 / 7 + 450 / 7) / 2
    )


def test_official_handling_never_visits_the_record_after_a_dropped_one(mmad):
    questions = load_questions(mmad)
    pairs = [
        (questions[0], "none"),
        (questions[1], "A"),
        (questions[2], "no idea"),
        (questions[3], "no"),
        (questions[4], "B"),
    ]
    s = score(pairs, "official", closest_option=False)
    # #0 dropped → #1 (right) never visited; #2 dropped → #3 (unparsable) never visited; #4 right
    assert (s.unparsable, s.dropped, s.skipped) == (3, 2, 2)
    assert s.table == {
        "DS-MVTec": {
            "Anomaly Detection": 0.0,
            "Object Classification": 0.0,
            "Defect Classification": 0.0,
            "Object Analysis": 100.0,
        }
    }
    corrected = score(pairs, "wrong", closest_option=False)  # every record graded, unparsable = wrong
    assert corrected.table["DS-MVTec"] == {
        "Anomaly Detection": 0.0,
        "Object Classification": 100.0,
        "Defect Classification": 0.0,
        "Object Analysis": 100.0,
    }


def test_official_handling_drops_a_correct_letter_past_e():
    six = {
        "X/obj/good/0.png": {
            "conversation": [
                {"Question": "d?", "Options": YES_NO, "Answer": "B", "type": "Anomaly Detection"},
                {
                    "Question": "c?",
                    "Options": dict(zip("ABCDEF", ["one", "two", "three", "four", "five", "sixth"])),
                    "Answer": "F",
                    "type": "Object Classification",
                },
            ]
        }
    }
    questions = load_questions("unused", six)
    pairs = [(questions[0], "B"), (questions[1], "sixth")]  # the second: the closest option is F, right
    official = score(pairs, "official")
    # F is not in A-E: dropped; AD has only a normal image: (1/1 + 0)/2
    assert official.table == {"X": {"Anomaly Detection": 50.0, "Object Classification": 0.0}} and official.dropped == 1
    assert score(pairs).table == {"X": {"Anomaly Detection": 100.0, "Object Classification": 100.0}}


def test_a_prediction_whose_image_was_unreadable_has_no_answer(mmad):
    rows = predictions()
    rows[9] = {**rows[9], "error": "cannot identify image file"}  # "Yes." would be right by its option text
    pairs = match_predictions(load_questions(mmad), rows)
    assert pairs[9][1] is None
    assert score(pairs).table["VisA"]["Anomaly Detection"] == 0.0  # normal unparsable, anomalous now unparsable
    assert score(pairs, "official").unparsable == 1  # only the unreadable one: "" goes to difflib officially


@pytest.mark.parametrize(
    "text, last, first",
    [
        ("A", "A", "A"),
        ("Answer: (B)", "B", "B"),
        ("The answer is B, not A", "A", "B"),
        ("E", "E", "E"),  # parsed, though no option E exists: scored wrong, not unparsable
        ("B.\nExplanation: option A is a scratch", "A", "B"),
        ("", None, None),
        ("   ", None, None),
    ],
)
def test_letter_extraction_on_tricky_strings(text, last, first):
    options = {"A": "first", "B": "second"}
    assert extract_letter(text, options) == last
    assert extract_letter(text, options, last=False) == first


def test_no_letter_falls_back_to_the_closest_option_text():
    options = {"A": "A scratch on the surface.", "B": "No defect.", "C": "A missing cap."}
    assert extract_letter("there is no defect", options) == "B"
    assert extract_letter("missing cap", options) == "C"
    assert extract_letter("ABC", {"A": "yes", "B": "ABCD"}) == "B"  # "ABC" holds no standalone letter
    assert extract_letter("there is no defect", options, closest_option=False) is None
    # officially an empty answer is matched too: all ratios tie at 0, the largest text wins
    assert extract_letter("", options) is None and extract_letter("", options, official=True) == "B"
    assert extract_letter("", YES_NO, official=True) == "A"  # "Yes." > "No."


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


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("Options", None, "field 'Options' must be a dict"),
        ("type", "Defect Counting", "field 'type' is 'Defect Counting'"),
        ("Answer", "F", "field 'Answer' 'F' is not one of the options"),
    ],
)
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
    done = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--questions",
            str(mmad),
            "--predictions",
            str(answers),
            "--csv",
            str(tmp_path / "t5.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| **average** | 62.50 | 0.00 | 0.00 | 100.00 | 100.00 | 100.00 | 50.00 | 63.12 |" in done.stdout
    assert (tmp_path / "t5.csv").read_text().splitlines()[0].startswith("dataset,Anomaly Detection,")
    assert done.stdout.splitlines()[0] == "letter extraction: last letter A–E, else the closest option text"
    internvl = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--questions",
            str(mmad),
            "--predictions",
            str(answers),
            "--script",
            "internvl",
            "--unparsable",
            "official",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert internvl.returncode == 0, internvl.stderr
    assert "| **average** |" in internvl.stdout and "| 30.36 |" in internvl.stdout  # as worked out above
    assert "2 records dropped, 2 records right after them never checked" in internvl.stdout
    again = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--questions",
            str(mmad),
            "--predictions",
            str(answers),
            "--csv",
            str(tmp_path / "t5.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0 and "t5.csv exists" in again.stderr
    answers.write_text("{not json\n")
    bad = subprocess.run(
        [sys.executable, str(tool), "--questions", str(mmad), "--predictions", str(answers)],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    with pytest.raises(
        ValueError,
        match=r"prediction 7: 'options' .* are not the options of "
        r"DS-MVTec/bottle/image/broken_large/001.png #0",
    ):
        match_predictions(questions, rows)
