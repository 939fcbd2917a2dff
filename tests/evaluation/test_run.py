"""What test runs share: one predictions file per run, whatever the number of ranks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maugpt.evaluation.run import write_predictions


def _rank(rank: int, world: int, port: int, folder: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    trainer = SimpleNamespace(world_size=world, is_global_zero=rank == 0)
    rows = [{"key": f"r{rank}-{i}", "order": 10 * i + rank} for i in range(2 + rank)]  # ranks hold 2 and 3 rows
    gathered = write_predictions(trainer, Path(folder), rows, order=lambda r: r["order"])
    out.put((rank, [r["key"] for r in gathered]))
    dist.destroy_process_group()


def test_every_ranks_rows_go_into_one_file_written_by_rank_0(tmp_path):
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = 31500 + torch.randint(0, 2000, ()).item()
    procs = [context.Process(target=_rank, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = ["r0-0", "r1-0", "r0-1", "r1-1", "r1-2"]  # sorted by order: 0, 1, 10, 11, 21
    assert got == {0: expected, 1: expected}  # every rank gets all rows back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]  # no per-rank files
    written = [json.loads(line)["key"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert written == expected


def test_one_process_writes_its_rows_in_their_order(tmp_path):
    trainer = SimpleNamespace(world_size=1, is_global_zero=True)
    assert write_predictions(trainer, tmp_path, [{"a": 2}, {"a": 1}]) == [{"a": 2}, {"a": 1}]
    assert (tmp_path / "predictions.jsonl").read_text() == '{"a": 2}\n{"a": 1}\n'
