"""Counts of a MAU-Set split: per source, domain, product, defect class and task."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def split_statistics(records: Iterable[dict]) -> dict:
    """Counts over decoded records (products and defect classes keyed ``source/product[/class]``)."""
    counts = {
        k: Counter() for k in ("source", "domain", "product", "defect_class", "generic_defect_class", "task", "style")
    }
    images = normal = qa = 0
    for r in records:
        images += 1
        normal += not r["is_anomalous"]
        counts["source"][r["source"]] += 1
        counts["domain"][r["domain"]] += 1
        counts["product"][f"{r['source']}/{r['product']}"] += 1
        if r.get("defects"):  # every defect type on the image (several on DeepPCB boards)
            classes = [d["class"] for d in r["defects"]]
        else:
            classes = [r["defect_class"]] if r.get("defect_class") else []
        for cls in classes:
            counts["defect_class"][f"{r['source']}/{r['product']}/{cls}"] += 1
        if r.get("generic_defect"):  # described by the generic fallback, not the knowledge base
            counts["generic_defect_class"][f"{r['source']}/{r['product']}/{r['defect_class']}"] += 1
        for pair in r["qa"]:
            qa += 1
            counts["task"][pair["task"]] += 1
            counts["style"][pair["style"]] += 1
    return {
        "images": images,
        "normal": normal,
        "abnormal": images - normal,
        "qa_pairs": qa,
        "products": len(counts["product"]),
        "defect_classes": len(counts["defect_class"]),
        **{k: dict(sorted(v.items())) for k, v in counts.items()},
    }


def format_statistics(stats: dict, title: str) -> str:
    """A plain-text table of one split's statistics."""
    lines = [
        f"== {title}: {stats['images']} images ({stats['normal']} normal, {stats['abnormal']} abnormal), "
        f"{stats['qa_pairs']} QA pairs, {stats['products']} products, {stats['defect_classes']} defect classes"
        + (f", {stats['skipped_unreadable']} unreadable skipped" if stats.get("skipped_unreadable") else "")
    ]
    for section in ("source", "domain", "task", "style", "product", "defect_class", "generic_defect_class"):
        entries = stats[section]
        if not entries:
            continue
        width = max(len(k) for k in entries)
        lines.append(f"-- {section}")
        lines += [f"   {k:<{width}}  {v:>7}" for k, v in entries.items()]
    return "\n".join(lines)
