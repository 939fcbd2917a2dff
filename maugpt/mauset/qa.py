"""The shared QA construction: every builder, real or synthetic, makes its questions here.

For each of the five tasks, 1–2 distinct questions are drawn from the task's pool (seeded per
image), and the answer is written from the record's facts and the defect knowledge base.
"""

from __future__ import annotations

import random
import re

from maugpt.mauset.knowledge import Defect, Knowledge, Product
from maugpt.schema import TASKS

_DOUBLED = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)
_ARTICLE = re.compile(r"\b([Aa]n?) (\w+)")
# Words whose first letter misleads: "a unit", "a one-off", "an hour".
_CONSONANT_SOUND = ("uni", "use", "usu", "uti", "ure", "one", "once", "eu")
_VOWEL_SOUND = ("hour", "honest", "honor", "heir")


def image_rng(seed: int, key: str) -> random.Random:
    """A generator that depends only on the build seed and the image key (not on build order)."""
    return random.Random(f"{seed}:{key}")


def _article(match: re.Match) -> str:
    article, word = match.groups()
    lower = word.lower()
    if word.isupper() and len(word) > 1:  # an acronym (a PCB, an LED): its letters' sound, left as written
        return match.group(0)
    vowel = (lower[0] in "aeiou" and not lower.startswith(_CONSONANT_SOUND)) or lower.startswith(_VOWEL_SOUND)
    wanted = "an" if vowel else "a"
    return (wanted.capitalize() if article[0] == "A" else wanted) + " " + word


def tidy(text: str) -> str:
    """Text assembled from templates and names, made grammatical: a word repeated where a name
    ends as the template goes on ("a texture defect defect", "the commutator surface surface")
    is written once, and "a"/"an" follow the sound of the next word ("a open" → "an open")."""
    return _ARTICLE.sub(_article, _DOUBLED.sub(r"\1", text))


def _box(location: dict) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in location["box"]) + "]"


def question_text(question, product: Product) -> str:
    """The question as asked about ``product``."""
    return tidy(question.text.format(product=product.name))


def and_join(items: list[str]) -> str:
    """``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def answer(
    knowledge: Knowledge,
    question,
    product: Product,
    defect: Defect | None,
    location: dict | None,
    defects: list[dict] | None = None,
) -> str:
    """The reference answer to ``question`` about one image. ``defects`` (the record's, for an image
    with several defect types, most boxes first; ``defect`` is the first) makes classification
    and localization list every type with its count and regions, and description name the others."""
    task = question.task
    facts = {"product": product.name}
    if defect is None:  # a normal image
        return tidy(knowledge.answer_template(task, "normal").format(**facts))
    facts.update(
        defect=defect.name,
        appearance=defect.appearance,
        causes=defect.causes,
        impact=defect.impact,
        remedy=defect.remedy,
    )
    if defects is not None and len(defects) > 1 and task in ("classification", "localization", "description"):
        facts.update(
            count=len(defects),
            defects=and_join([f"{d['name']} ({d['count']})" for d in defects]),
            others=and_join([d["name"] for d in defects[1:]]),
            locations="; ".join(
                f"the {d['name']} ({d['count']}) in the {and_join(list(dict.fromkeys(d['regions'])))}" for d in defects
            ),
        )
        text = knowledge.answer_template(task, "abnormal_several").format(**facts)
    elif task == "understanding":
        text = knowledge.answer_template(task, question.aspect).format(**facts)
    elif task == "localization" and location is None:
        text = knowledge.answer_template(task, "abnormal_unlocated").format(**facts)
    else:
        if location is not None:
            facts.update(region=location["region"], box=_box(location))
        text = knowledge.answer_template(task, "abnormal").format(**facts)
    return tidy(text[0].upper() + text[1:])


def build_qa(
    knowledge: Knowledge,
    product: Product,
    defect: Defect | None,
    location: dict | None,
    rng: random.Random,
    per_task: tuple[int, int] = (1, 2),
    defects: list[dict] | None = None,
) -> list[dict]:
    """1–2 QA pairs for each of the five tasks, in task order (``defects``: see :func:`answer`)."""
    pairs = []
    for task in TASKS:
        pool = knowledge.questions(task, product.domain, product.name)
        for question in rng.sample(pool, rng.randint(*per_task)):
            pairs.append(
                {
                    "task": task,
                    "style": question.style,
                    "question": question_text(question, product),
                    "answer": answer(knowledge, question, product, defect, location, defects),
                }
            )
    return pairs


def build_caption_qa(knowledge: Knowledge, caption: str, rng: random.Random) -> list[dict]:
    """One stage-1 caption pair: a brief-description instruction and the caption."""
    question = rng.choice(knowledge.questions("caption"))
    return [{"task": "caption", "style": question.style, "question": question.text, "answer": caption}]
