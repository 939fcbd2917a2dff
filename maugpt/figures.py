"""Fig. 5(c): a t-SNE of the anomaly-aware expert's generated cores, one point per test image,
coloured by product and by defect class.

The hypernetwork (Eq. 4–5) turns each sample's pooled condition into an ``r × r`` core; if it
learns what the paper claims, images of one product, and of one defect class, get similar cores.
:func:`collect_cores` records the cores of one adapted layer in teacher-forced forwards over a
split's prompts (one per image: an image's questions share its condition only if the condition
ignores the question, so the first prompt of each image is taken); :func:`tsne_figure` draws them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from maugpt.adapters import adapter_diagnostics
from maugpt.model.mau_gpt import model_inputs, recording

LABELS = ("product", "defect_class", "domain")


@torch.no_grad()
def collect_cores(
    module, batches: Iterable[dict], layer: str, max_samples: int = 1000
) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """The flattened cores ``(n, r·r)`` of the first adapted layer whose name contains ``layer``,
    the images' keys and their labels (product, defect class or ``normal``, domain)."""
    net = module.model
    module.eval()
    cores, keys, labels, seen = [], [], [], set()
    for batch in batches:
        with recording(net):
            net(**model_inputs(batch))
        found = [d["core"] for name, d in adapter_diagnostics(net.llm).items() if "core" in d and layer in name]
        if not found:
            raise ValueError(
                f"no adapted layer matching {layer!r} records a hypernetwork core: the model's adapter "
                "must be AMoE-LoRA and the layer one of its targets"
            )
        for core, meta, valid in zip(found[0].flatten(1).float().cpu(), batch["meta"], batch["valid"].tolist()):
            if valid and meta["key"] not in seen and len(keys) < max_samples:
                seen.add(meta["key"])
                cores.append(core.numpy())
                keys.append(meta["key"])
                labels.append(
                    {
                        "product": meta["product"],
                        "defect_class": str(meta.get("defect_class") or "normal"),
                        "domain": meta["domain"],
                    }
                )
        if len(keys) >= max_samples:
            break
    if len(keys) < 4:
        raise ValueError(f"only {len(keys)} images gave cores; a t-SNE needs at least 4")
    return np.stack(cores), keys, labels


def embed(cores: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the cores (scikit-learn; perplexity capped below a third of the points)."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, (len(cores) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(cores)


def tsne_figure(points: np.ndarray, labels: list[dict[str, str]], title: str = "hypernetwork cores"):
    """Two panels, the same points coloured by product and by defect class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, by in zip(axes, ("product", "defect_class")):
        names = sorted({label[by] for label in labels})
        colours = plt.get_cmap("tab20", max(len(names), 1))
        for i, name in enumerate(names):
            chosen = np.array([label[by] == name for label in labels])
            ax.scatter(points[chosen, 0], points[chosen, 1], s=12, color=colours(i), label=name)
        ax.set_title(f"{title} by {by.replace('_', ' ')}")
        ax.set_xticks([])
        ax.set_yticks([])
        if len(names) <= 20:
            ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    return fig
