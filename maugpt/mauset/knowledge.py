"""The MAU-Set data files: products and their domains, question pools, the defect knowledge base.

They live under ``configs/mauset/`` (installed inside the package as ``maugpt/configs/mauset``) so
that a researcher edits data, not code:
``products.yaml`` (source folder → display name, domain, texture or object), ``questions.yaml``
(the five tasks' question pools and answer templates) and ``defects.yaml`` (defect kinds with
appearance, causes, impact and remedy, and each source's defect classes mapped to a kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from maugpt.configs import ROOT
from maugpt.schema import DOMAINS, TASKS

CONFIG_DIR = ROOT / "mauset"


@dataclass(frozen=True)
class Product:
    source: str
    folder: str
    name: str
    domain: str
    kind: str  # "texture" or "object"


@dataclass(frozen=True)
class Defect:
    name: str
    kind: str
    appearance: str
    causes: str
    impact: str
    remedy: str
    generic: bool = False  # the class is not in the knowledge base: the generic description


def merge(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


@dataclass(frozen=True)
class Question:
    task: str
    style: str  # "discriminative" or "open"
    text: str
    aspect: str | None = None  # understanding questions: "causes", "impact" or "remedy"


class Knowledge:
    """Read-only access to the three data files, validated once at load.

    Args:
        root: the folder of the three files (default: the packaged ``configs/mauset``).
        overlay: a folder of the user's own ``products.yaml``, ``questions.yaml`` and/or
            ``defects.yaml``, merged over ``root``'s (mappings key by key, other values replaced):
            new products, defect classes or kinds of a new release, or edited texts.
    """

    def __init__(self, root: str | Path = CONFIG_DIR, overlay: str | Path | None = None) -> None:
        self.root = Path(root)
        self.overlay = Path(overlay) if overlay is not None else None
        if self.overlay is not None and not self.overlay.is_dir():
            raise FileNotFoundError(
                f"knowledge overlay {self.overlay} is not a folder (expected products.yaml, "
                "questions.yaml and/or defects.yaml in it)"
            )
        self._products = self._load("products.yaml")
        self._questions = self._load("questions.yaml")
        self._defects = self._load("defects.yaml")
        self._validate()

    def _load(self, name: str) -> dict:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"MAU-Set data file {path} is missing (expected {name} in {self.root})")
        with open(path) as f:
            data = yaml.safe_load(f)
        extra = self.overlay / name if self.overlay is not None else None
        if extra is not None and extra.is_file():
            with open(extra) as f:
                mine = yaml.safe_load(f) or {}
            if not isinstance(mine, dict):
                raise ValueError(f"{extra}: expected a mapping like {path}'s, got {type(mine).__name__}")
            data = merge(data, mine)
        return data

    def _validate(self) -> None:
        for source, products in self._products["sources"].items():
            for folder, entry in products.items():
                if entry["domain"] not in DOMAINS:
                    raise ValueError(
                        f"products.yaml: {source}/{folder} has domain {entry['domain']!r}; "
                        f"expected one of {list(DOMAINS)}"
                    )
        kinds = self._defects["kinds"]
        for source, products in self._defects["classes"].items():
            for product, classes in products.items():
                for cls, spec in classes.items():
                    kind = spec if isinstance(spec, str) else spec["kind"]
                    if kind not in kinds:
                        raise ValueError(f"defects.yaml: {source}/{product}/{cls} maps to unknown kind {kind!r}")
        for task in (*TASKS, "caption"):
            if len(self._questions[task]["questions"]) < 10:
                raise ValueError(f"questions.yaml: task {task!r} needs at least 10 phrasings")
        names = {entry["name"] for products in self._products["sources"].values() for entry in products.values()}
        for domain, questions in self._questions["understanding"].get("expert", {}).items():
            for q in questions:
                if q.get("aspect") not in ("causes", "impact", "remedy"):
                    raise ValueError(
                        f"questions.yaml: expert question {q.get('text')!r} ({domain}) needs an aspect: "
                        "causes, impact or remedy (its answer comes from that aspect)"
                    )
                unknown = sorted(set(q.get("products", [])) - names)
                if unknown:
                    raise ValueError(
                        f"questions.yaml: expert question {q['text']!r} ({domain}) names products "
                        f"{unknown} that products.yaml does not have (it lists display names)"
                    )

    # -- products -----------------------------------------------------------------------
    def sources(self) -> list[str]:
        """The sources whose products the knowledge base lists."""
        return list(self._products["sources"])

    def products(self, source: str) -> dict[str, Product]:
        """The product folders known for ``source``."""
        entries = self._products["sources"].get(source)
        if entries is None:
            raise KeyError(f"unknown source {source!r}; products.yaml knows {sorted(self._products['sources'])}")
        return {folder: Product(source, folder, **entry) for folder, entry in entries.items()}

    def product(self, source: str, folder: str) -> Product:
        products = self.products(source)
        if folder not in products:
            raise KeyError(
                f"{source} product folder {folder!r} is not in {self.root / 'products.yaml'}; "
                f"known: {sorted(products)} (add it, with its domain, in a --knowledge overlay)"
            )
        return products[folder]

    # -- defects --------------------------------------------------------------------------
    def defect_classes(self, source: str, product: str) -> list[str]:
        """The defect classes the knowledge base lists for ``product`` (or for all the source's: ``*``)."""
        by_product = self._defects["classes"].get(source, {})
        return list(by_product.get(product) or by_product.get("*") or {})

    def defect(self, source: str, product: str, defect_class: str, generic: bool = False) -> Defect:
        """The knowledge-base entry of one defect class of one product; with ``generic``, a class the
        knowledge base does not list gets the ``generic`` kind's description (marked ``generic``)."""
        by_product = self._defects["classes"].get(source, {})
        known = by_product.get(product) or by_product.get("*") or {}
        if defect_class in known:
            spec = known[defect_class]
        elif generic:
            spec = "generic"
        else:
            raise KeyError(
                f"defect class {defect_class!r} of {source}/{product} is not in "
                f"{self.root / 'defects.yaml'}; known: {sorted(known)} (add it with a --knowledge overlay)"
            )
        spec = {"kind": spec} if isinstance(spec, str) else spec
        name = spec.get("name", defect_class.replace("_", " "))
        display = self.product(source, product).name
        texts = {k: v.format(product=display) for k, v in self._defects["kinds"][spec["kind"]].items()}
        return Defect(name=name, kind=spec["kind"], **texts, generic=defect_class not in known)

    # -- questions ------------------------------------------------------------------------
    def questions(self, task: str, domain: str | None = None, product: str | None = None) -> list[Question]:
        """The task's question pool; for ``understanding`` plus the domain's expert questions, those
        with a ``products`` list only for those product display names (``product``)."""
        entry = self._questions[task]
        pool = list(entry["questions"])
        if task == "understanding" and domain is not None:
            pool += [
                q for q in entry.get("expert", {}).get(domain, []) if "products" not in q or product in q["products"]
            ]
        return [
            Question(task, entry["style"], q["text"], q["aspect"])
            if isinstance(q, dict)
            else Question(task, entry["style"], q)
            for q in pool
        ]

    def answer_template(self, task: str, key: str) -> str:
        return self._questions[task]["answers"][key]

    @cached_property
    def defect_kinds(self) -> dict[str, dict[str, str]]:
        return self._defects["kinds"]
