"""The verdict of a free-text answer to a MAU-Set discriminative question (the paper's Table 2).

Every discriminative question asks whether something is wrong with the product
(configs/mauset/questions.yaml), so True means abnormal. Models answer in many ways: "False",
"Answer: True", "No, it is not defective.", "The product is normal.", "It is not true.", or echo
the question first. :func:`parse_true_false` reads the final verdict:

1. the echoed question (when given) and the offered choices ("True or False", "yes or no") are
   removed, so that their words are not read as the answer;
2. after the last answer marker ("answer:", "the answer is", "final answer", "verdict:",
   "conclusion:") only what follows counts;
3. in what is left, the first verdict word wins: true/yes/correct or false/no/incorrect ("no"
   only when it stands alone, as in "No." or "No, …"; "no defect" is a negation). Without one,
   the first condition word: defective/defect/anomalous/anomaly/abnormal/damaged/faulty/flawed
   (True) or normal/defect-free/flawless/good/intact/ok (False);
4. a negation among the three words before it, in the same clause (not, no, never, without,
   n't, …), flips it: "not true", "isn't defective", "no visible defect", "not normal".

Anything else ("I cannot tell", "There is a scratch") is unparsable: None.
"""

from __future__ import annotations

import re

_ANSWER_MARKER = re.compile(r"\b(?:the answer is|final answer)\b|\b(?:answer|verdict|conclusion)\s*(?:is\s*)?[:\-]")
_CHOICES = re.compile(
    r"\b(?:true\s*(?:or|/)\s*false|false\s*(?:or|/)\s*true|yes\s*(?:or|/)\s*no|no\s*(?:or|/)\s*yes)\b"
)
_FREE = re.compile(r"\b(?:defect|anomaly|flaw|damage)[\s-]+free\b")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.,;:!?()]")
_VERDICT = {"true": True, "yes": True, "correct": True, "false": False, "incorrect": False, "untrue": False}
_CONDITION = {
    **dict.fromkeys(
        (
            "defective",
            "defect",
            "defects",
            "anomalous",
            "anomaly",
            "anomalies",
            "abnormal",
            "abnormality",
            "damaged",
            "faulty",
            "flawed",
            "flaw",
            "flaws",
        ),
        True,
    ),
    **dict.fromkeys(("normal", "flawless", "good", "intact", "ok", "okay", "nondefective"), False),
}
_NEGATION = {"not", "no", "never", "without", "none", "neither", "nor", "hardly", "cannot", "nothing"}
_CLAUSE_END = set(".,;:!?()")


def _negated(tokens: list[str], at: int) -> bool:
    flips = 0
    for token in reversed(tokens[max(0, at - 3) : at]):
        if token in _CLAUSE_END:
            break
        flips += token in _NEGATION or token.endswith("n't")
    return flips % 2 == 1


def _standalone_no(tokens: list[str], at: int) -> bool:
    """``no`` as an answer ("No.", "No, …", a final "no"), not a determiner ("no defect")."""
    return at + 1 == len(tokens) or tokens[at + 1] in _CLAUSE_END


def parse_true_false(answer: str, question: str | None = None) -> bool | None:
    """True (abnormal), False (normal) or None (no verdict) for ``answer``; see the module docstring."""
    text = answer.lower()
    if question:
        text = text.replace(question.lower().strip(), " ")
    text = _FREE.sub(" flawless ", _CHOICES.sub(" ", text))
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        text = text[markers[-1].end() :]
    tokens = _TOKEN.findall(text)
    for table in (_VERDICT, _CONDITION):
        for at, token in enumerate(tokens):
            if token in table or (table is _VERDICT and token == "no" and _standalone_no(tokens, at)):
                value = table.get(token, False)  # a standalone "no" is not a key: False
                return value != _negated(tokens, at)
    return None
