"""What every benchmark's ``maugpt test`` shares: the :class:`Evaluation` protocol that
``MAUGPTModule.test_step`` feeds, the run's evaluation folder, and gathering rows from all ranks.

A data module that can be tested by generation defines ``evaluation()`` returning an
:class:`Evaluation`; the LightningModule never branches on the benchmark.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch.distributed as dist

if TYPE_CHECKING:
    import lightning as L


class Evaluation(Protocol):
    """Scores generated answers of one test run.

    ``add`` receives each valid prompt's ``meta`` (as the data module made it), the generated
    answer and, when the batch asked for them (``choice_ids``), the log-probabilities of those
    tokens as the first answer token. ``finish`` computes the scores over all ranks, writes the
    run's files on rank 0 and returns the scalars to log (the same on every rank). An evaluation
    may also hold ``generate_kwargs``, the benchmark's decoding settings for ``generate()``.
    """

    def add(self, meta: dict, answer: str, choice_logprobs: list[float] | None = None) -> None: ...

    def finish(self, trainer: L.Trainer) -> dict[str, float]: ...


def evaluation_folder(trainer: L.Trainer) -> Path:
    """``<run folder>/evaluation``, or ``evaluation-N`` when an earlier test wrote there: never overwritten."""
    run = Path(trainer.log_dir or trainer.default_root_dir)
    folder, number = run / "evaluation", 1
    while trainer.is_global_zero and (folder / "tables.md").exists():
        number += 1
        folder = run / f"evaluation-{number}"
    folder = Path(trainer.strategy.broadcast(str(folder)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def gather_rows(trainer: L.Trainer, rows: list[dict]) -> list[dict]:
    """All ranks' rows on every rank (rank order), for scores that need every answer at once."""
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return list(rows)
    gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


def write_predictions(
    trainer: L.Trainer, folder: Path, rows: list[dict], order: Callable[[dict], Any] | None = None
) -> list[dict]:
    """Every rank's prediction rows gathered (sorted by ``order`` when given) and written once, by
    rank 0, to ``folder/predictions.jsonl``: one file per test run, whatever the number of ranks.
    Returns the gathered rows (on every rank)."""
    rows = gather_rows(trainer, rows)
    if order is not None:
        rows.sort(key=order)
    if trainer.is_global_zero:
        write_jsonl(folder / "predictions.jsonl", rows)
    return rows


def predictions_path(folder: Path) -> Path | None:
    """An evaluation folder's ``predictions.jsonl``, or its gzip archive ``predictions.jsonl.gz``
    (a sweep cell keeps its answers compressed: they are committed with the results)."""
    return next(
        (folder / name for name in ("predictions.jsonl", "predictions.jsonl.gz") if (folder / name).is_file()), None
    )


def read_text(path: Path, errors: str = "strict") -> str:
    """A text file's content, through gzip when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors=errors) as f:
            return f.read()
    return path.read_text(encoding="utf-8", errors=errors)


def write_gzip(path: Path, data: bytes) -> None:
    """``data`` gzipped into ``path``, without a timestamp: the same answers give the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file (predictions, answers; gzipped when named ``*.gz``); a
    malformed line raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err})") from None
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
