"""Helpers shared by the source builders: layout checks and file discovery."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class BuildError(ValueError):
    """A mistake in a build's input or options that the user can fix (a folder's layout, a count, an
    unknown product, a non-empty output folder): the commands print its message without a traceback.

    It is a ``ValueError``, and its subclasses are also the built-in error that callers caught
    before (``FileNotFoundError``, ``FileExistsError``, ``KeyError``), so that code catching those
    keeps working.
    """

    def __str__(self) -> str:  # the message as written, also for the KeyError subclass (which quotes it)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class LayoutError(BuildError, FileNotFoundError):
    """A source root does not have the release layout its builder reads."""

    def __init__(self, source: str, root: Path, expected: str, found: str) -> None:
        super().__init__(
            f"{source}: {root} does not have the expected layout.\n  expected: {expected}\n  found: {found}"
        )


def listing(root: Path, limit: int = 8) -> str:
    """A short description of what a folder holds, for layout errors."""
    if not root.exists():
        return "the folder does not exist"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    more = f", … ({len(entries)} entries)" if len(entries) > limit else ""
    return (", ".join(entries[:limit]) + more) if entries else "an empty folder"


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def descend(root: Path, wrapper: str) -> Path:
    """``root/wrapper`` if the release's wrapper folder is there, else ``root`` itself."""
    return root / wrapper if (root / wrapper).is_dir() else root


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The image in ``folder`` named ``stem`` with any image suffix."""
    for suffix in sorted(IMAGE_SUFFIXES) + [s.upper() for s in sorted(IMAGE_SUFFIXES)]:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None
