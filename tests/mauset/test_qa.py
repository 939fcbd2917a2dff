"""Every question and answer the builders can write, scanned for doubled words and a/an errors."""

from __future__ import annotations

import re

import pytest

from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.qa import answer, question_text, tidy
from maugpt.mauset.synthetic import SOURCE, caption
from maugpt.schema import TASKS, SourceImage

DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)
ARTICLE = re.compile(r"\b(a|an)\s+([a-z]\w*)", re.IGNORECASE)
LOCATION = {"region": "top left", "box": [0.1, 0.2, 0.3, 0.4]}


def article_errors(text: str) -> list[str]:
    """ "a" before a vowel letter or "an" before a consonant, with the few words whose sound differs."""
    errors = []
    for article, word in ARTICLE.findall(text):
        w = word.lower()
        vowel = w[0] in "aeiou" and not w.startswith(("uni", "use", "one", "eu")) or w.startswith("hour")
        if (article.lower() == "an") != vowel and not word.isupper():
            errors.append(f"{article} {word}")
    return errors


def every_text(knowledge: Knowledge) -> list[str]:
    """Each question of each task for each product, and each answer for each of the product's defect
    classes (and for a normal image), located and unlocated."""
    texts = []
    for source in knowledge.sources():
        for folder, product in knowledge.products(source).items():
            known = knowledge.defect_classes(source, folder)
            defects = [knowledge.defect(source, folder, c) for c in known] + [None]
            several = [
                {"name": d.name, "count": n, "regions": ["top left", "center"][:n]}
                for d, n in zip(defects[:2], (2, 1))
                if d is not None
            ]  # as a DeepPCB board's record
            for task in TASKS:
                for question in knowledge.questions(task, product.domain, product.name):
                    texts.append(question_text(question, product))
                    texts += [answer(knowledge, question, product, d, loc) for d in defects for loc in (LOCATION, None)]
                    if len(several) == 2:
                        texts.append(answer(knowledge, question, product, defects[0], LOCATION, several))
    return texts


def test_no_rendered_question_or_answer_has_a_doubled_word_or_a_wrong_article():
    texts = every_text(Knowledge())
    assert len(texts) > 20000  # all sources, products, classes, tasks and templates
    doubled = sorted({m.group(0) for t in texts for m in DOUBLED.finditer(t)})
    articles = sorted({e for t in texts for e in article_errors(t)})
    assert doubled == [] and articles == []


def test_synthetic_captions_are_tidy_too():
    knowledge = Knowledge()
    texts = []
    for folder in knowledge.products(SOURCE):
        known = knowledge.defect_classes(SOURCE, folder)
        for cls in [None, *known]:
            item = SourceImage(SOURCE, folder, "k", None, is_anomalous=cls is not None, defect_class=cls)
            texts += [caption(item, knowledge, LOCATION), caption(item, knowledge, None)]
    assert not [t for t in texts if DOUBLED.search(t) or article_errors(t)]


@pytest.mark.parametrize(
    "text, tidied",
    [
        ("The tile has a oil stain defect.", "The tile has an oil stain defect."),
        ("A integrated circuit", "An integrated circuit"),
        ("an scratch", "a scratch"),
        ("The magnetic tile has a uneven surface defect.", "The magnetic tile has an uneven surface defect."),
        ("The sheet has a texture defect defect.", "The sheet has a texture defect."),
        ("on the commutator surface surface, such as", "on the commutator surface, such as"),
        ("a unit", "a unit"),
        ("an hour", "an hour"),
        ("a PCB", "a PCB"),
        ("an LED", "an LED"),
    ],
)
def test_tidy(text, tidied):
    assert tidy(text) == tidied


def test_every_product_has_expert_questions_of_its_own():
    knowledge = Knowledge()
    general = {q.text for q in knowledge.questions("understanding")}
    products = {p.name: p for s in knowledge.sources() for p in knowledge.products(s).values()}
    assert len(products) >= 35
    pools = {
        name: {q.text for q in knowledge.questions("understanding", p.domain, name)} - general
        for name, p in products.items()
    }
    domain_wide = {  # without a product, a domain's expert questions are those not limited to products
        domain: {q.text for q in knowledge.questions("understanding", domain)} - general
        for domain in {p.domain for p in products.values()}
    }
    for name, pool in pools.items():
        own = pool - domain_wide[products[name].domain]
        assert len(own) >= 2, name  # specific to this product (or its group: DAGM's textures, BTAD's products)
    # a product's questions never reach another product of the same domain
    assert not {q for q in pools["bottle"] if "{product} still hold and protect" in q} & pools["capsule"]
    assert all(
        q.aspect in ("causes", "impact", "remedy")
        for q in knowledge.questions("understanding", "Mechanical Parts", "screw")
    )


def test_an_expert_question_naming_an_unknown_product_is_refused(tmp_path):
    (tmp_path / "questions.yaml").write_text(
        "understanding:\n  expert:\n    Mechanical Parts:\n"
        "      - {aspect: impact, products: [sprocket], text: 'Will the {product} mesh?'}\n"
    )
    with pytest.raises(ValueError, match=r"names products \['sprocket'\] that products.yaml does not have"):
        Knowledge(overlay=tmp_path)
