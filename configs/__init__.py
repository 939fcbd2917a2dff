"""The LightningCLI recipes and the MAU-Set data files, installed as the package ``maugpt.configs``
(pyproject.toml maps this folder there), so that a wheel install finds them without the checkout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def recipes() -> list[str]:
    """The recipe files, relative to :data:`ROOT` (``tiny/stage2.yaml`` …), the data files excluded."""
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*/*.yaml") if p.parent.name != "mauset")
