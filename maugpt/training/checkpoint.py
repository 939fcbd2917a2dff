"""Checkpoint files written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def free_space(folder: Path) -> str:
    """`` (N MiB free on FOLDER)`` for a message, or nothing when the system does not say."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return ""
    return f" ({stat.f_bavail * stat.f_frsize / 2**20:,.0f} MiB free in {folder})"


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` files of ``path`` whose writing process no longer exists."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


class CheckpointNotSaved(OSError):
    """A checkpoint that could not be written (a full disk, a quota, a read-only folder): the
    message names the file and the system's reason; the previous file of that name is intact."""


class RecordedWrites:
    """A file whose ``write`` errors are kept: torch's zip writer reports a failed write as its
    own ``unexpected pos`` error, which names neither the file nor the cause."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        return self._recorded(self.file.write, data)

    def flush(self) -> None:
        self._recorded(self.file.flush)

    def _recorded(self, call, *args):
        try:
            return call(*args)
        except OSError as err:
            self.error = err
            raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file beside the target and renames it into place.

    A run killed mid-write leaves the previous ``last.ckpt`` intact, never half a new one; the
    next save removes the temporary file such a run left behind. A write the system refuses
    (``no space left on device``, a quota, a read-only folder) raises :class:`CheckpointNotSaved`
    naming the checkpoint and the reason, and also leaves the previous file intact. Loading uses
    ``torch.load(weights_only=True)``: tensors and plain containers only.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        recorded = None
        try:
            with open(tmp, "wb") as f:  # closing flushes too: a full disk may first show there
                recorded = RecordedWrites(f)
                torch.save(checkpoint, recorded)
                recorded.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            cause = (recorded.error if recorded else None) or (err if isinstance(err, OSError) else None)
            if cause is None:
                raise
            reason = (cause.strerror or str(cause)).lower()
            raise CheckpointNotSaved(
                cause.errno,
                f"could not save checkpoint {path}: {reason}"
                f"{free_space(path.parent)}; the previous {path.name}, if any, is kept",
            ) from err
        finally:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
