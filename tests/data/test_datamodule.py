"""MAUSetDataModule: equal batch counts per rank, exactly-once evaluation, packing, filters, bad input."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from maugpt.data.chat import IGNORE_INDEX
from maugpt.data.collate import collate
from maugpt.data.datamodule import MAUSetDataModule
from maugpt.data.shards import iter_samples


def datamodule(synthetic_dir, tokenizer_dir, vision_dir, **kwargs):
    args = dict(
        data_dir=str(synthetic_dir / "mauset"),
        tokenizer=str(tokenizer_dir),
        vision_encoder=str(vision_dir),
        image_tokens=4,
        batch_size=3,
        num_workers=2,
        max_length=1024,
        shuffle_buffer=8,
    )
    return MAUSetDataModule(**{**args, **kwargs})


def loader(dm, dataset, batch_size):
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=2, collate_fn=lambda b: collate(b, dm.format.pad_token_id)
    )


@pytest.mark.parametrize("packing", ["conversation", "qa"])
def test_validation_on_two_ranks_with_two_workers_sees_every_example_once(
    synthetic_dir, tokenizer_dir, vision_dir, packing
):
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, packing=packing)
    records = [s["json"] for s in iter_samples(synthetic_dir / "mauset" / "val")]
    expected = Counter((r["key"], i) for r in records for i in range(len(r["qa"])))
    seen, batches_per_rank = Counter(), []
    for rank in range(2):
        batches = list(loader(dm, dm.eval_dataset("val", rank, 2), 3))
        batches_per_rank.append(len(batches))
        for batch in batches:
            for meta, valid in zip(batch["meta"], batch["valid"].tolist()):
                if valid:
                    seen.update((meta["key"], i) for i in meta["qa_index"])
    assert seen == expected  # every QA pair of every image exactly once
    assert batches_per_rank[0] == batches_per_rank[1] > 0


def test_training_gives_every_rank_the_same_number_of_full_batches(synthetic_dir, tokenizer_dir, vision_dir):
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, batches_per_epoch=5, packing="qa")
    dm.setup()
    for rank in range(2):
        batches = []
        for _ in range(2):  # two epochs
            from maugpt.data.streams import EpochLoader

            dataset = dm.train_dataset(rank, 2)
            batches.append(
                list(
                    EpochLoader(
                        dataset,
                        5,
                        lambda: 0,
                        batch_size=3,
                        num_workers=2,
                        drop_last=True,
                        collate_fn=lambda b: collate(b, dm.format.pad_token_id),
                    )
                )
            )
        assert [len(b) for b in batches] == [5, 5]
        for batch in batches[0]:
            assert batch["input_ids"].shape[0] == 3 and batch["pixel_values"].shape[1:] == (1, 32, 32, 3)
            normalised = dm.on_after_batch_transfer(dict(batch), 0)["pixel_values"]
            assert normalised.dtype == torch.float32 and normalised.shape[1:] == (1, 3, 32, 32)
            labelled = batch["labels"] != IGNORE_INDEX
            assert labelled.any(1).all()  # every example has supervised tokens
            assert not (labelled & ~batch["attention_mask"]).any()
            assert not (labelled & batch["condition_mask"]).any()  # the condition never sees an answer


def test_default_epoch_length_is_about_one_pass(synthetic_dir, tokenizer_dir, vision_dir):
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, batch_size=2)
    samples = json.loads((synthetic_dir / "mauset" / "train" / "index.json").read_text())["samples"]
    assert dm.default_batches_per_epoch(world_size=2) == samples // 4
    assert len(dm.train_dataloader()) == samples // 2


def test_filters_by_task_domain_and_source(synthetic_dir, tokenizer_dir, vision_dir):
    dm = datamodule(
        synthetic_dir, tokenizer_dir, vision_dir, packing="qa", tasks=["detection"], domains=["Electronic Components"]
    )
    dm.setup()
    records = [s["json"] for s in iter_samples(synthetic_dir / "mauset" / "val")]
    expected = sum(
        1 for r in records if r["domain"] == "Electronic Components" for qa in r["qa"] if qa["task"] == "detection"
    )
    examples = [e for e in dm.eval_dataset("val") if e["valid"]]
    assert len(examples) == expected > 0
    assert all(e["meta"]["tasks"] == ["detection"] and e["meta"]["domain"] == "Electronic Components" for e in examples)
    dm_none = datamodule(synthetic_dir, tokenizer_dir, vision_dir, sources=["mvtec_ad"])
    assert list(dm_none.eval_dataset("val")) == []
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['detect'\]"):
        datamodule(synthetic_dir, tokenizer_dir, vision_dir, tasks=["detect"])


def test_a_corrupt_image_in_a_shard_is_skipped_counted_and_keeps_counts_equal(
    synthetic_dir, tokenizer_dir, vision_dir, tmp_path
):
    import io
    import tarfile

    data = tmp_path / "mauset"
    shutil.copytree(synthetic_dir / "mauset", data)
    shard = sorted((data / "val").glob("shard-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken = next(
        m.name for m, _ in members if m.name.endswith(".png") and "mask" not in m.name and "ref" not in m.name
    )
    with tarfile.open(shard, "w") as tar:
        for member, payload in members:
            payload = b"\x89PNG broken" if member.name == broken else payload
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    dm = MAUSetDataModule(str(data), str(tokenizer_dir), str(vision_dir), image_tokens=4, batch_size=2, num_workers=0)
    examples = list(dm.eval_dataset("val"))
    clean = list(datamodule(synthetic_dir, tokenizer_dir, vision_dir).eval_dataset("val"))
    assert len(examples) == len(clean)  # the damaged sample's place is kept, flagged invalid
    assert sum(not e["valid"] for e in examples) == 1 and sum(e["skipped"] for e in examples) == 1


def test_pipe_urls_need_explicit_permission(synthetic_dir, tokenizer_dir, vision_dir, tmp_path):
    (tmp_path / "train").mkdir()
    shards = [{"name": "x.tar", "count": 1}, {"name": "pipe:curl -s https://example.org/y.tar", "count": 1}]
    (tmp_path / "train" / "index.json").write_text(json.dumps({"samples": 2, "shards": shards}))
    dm = MAUSetDataModule(str(tmp_path), str(tokenizer_dir), str(vision_dir))
    with pytest.raises(ValueError, match="lists pipe: URLs, which run shell commands; set allow_pipe_urls"):
        dm.urls("train")
    allowed = MAUSetDataModule(str(tmp_path), str(tokenizer_dir), str(vision_dir), allow_pipe_urls=True)
    assert allowed.urls("train") == [str(tmp_path / "train" / "x.tar"), "pipe:curl -s https://example.org/y.tar"]


def test_a_folder_without_shards_names_what_it_expected(tokenizer_dir, vision_dir, tmp_path):
    dm = MAUSetDataModule(str(tmp_path), str(tokenizer_dir), str(vision_dir))
    with pytest.raises(
        FileNotFoundError, match=r"train/index.json is missing: .*\(expected shard-\*\.tar files with index\.json\)"
    ):
        dm.train_dataloader()


def test_the_datamodule_is_configurable_as_a_lightningcli_subclass(synthetic_dir, tokenizer_dir, vision_dir):
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    config = parser.parse_args(
        [
            "--data",
            "maugpt.data.MAUSetDataModule",
            "--data.data_dir",
            str(synthetic_dir / "mauset"),
            "--data.tokenizer",
            str(tokenizer_dir),
            "--data.vision_encoder",
            str(vision_dir),
            "--data.packing",
            "qa",
            "--data.tasks",
            "[detection, localization]",
        ]
    )
    dm = parser.instantiate(config).data
    assert isinstance(dm, MAUSetDataModule) and dm.hparams.packing == "qa"
    assert dm.hparams.tasks == ["detection", "localization"]
    with pytest.raises(Exception, match="packing"):
        parser.parse_args(
            [
                "--data",
                "maugpt.data.MAUSetDataModule",
                "--data.data_dir",
                "x",
                "--data.tokenizer",
                "t",
                "--data.vision_encoder",
                "v",
                "--data.packing",
                "pairs",
            ]
        )


def test_fewer_examples_than_worker_slots_still_give_equal_batch_counts(synthetic_dir, tokenizer_dir, vision_dir):
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir)
    counts, seen = [], []
    for rank in range(2):
        dataset = dm.eval_dataset("val", rank, 2)
        dataset.plan = dataset.plan[:3]  # 3 examples for 2 ranks × 2 workers
        batches = list(loader(dm, dataset, 2))
        counts.append(len(batches))
        seen += [m["key"] for b in batches for m, v in zip(b["meta"], b["valid"].tolist()) if v]
    assert counts[0] == counts[1] == 2  # each worker yields one example: one batch per worker
    assert sorted(seen) == sorted(key for _, key, _ in dataset.plan)


def test_training_filters_that_match_nothing_fail_instead_of_spinning(synthetic_dir, tokenizer_dir, vision_dir):
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, sources=["mvtec_ad"])
    dataset = dm.train_dataset()
    dataset.max_barren = 50
    with pytest.raises(RuntimeError, match="do the tasks/domains/sources filters match anything"):
        next(iter(dataset))


def copy_dataset(synthetic_dir, tmp_path):
    data = tmp_path / "mauset"
    shutil.copytree(synthetic_dir / "mauset", data)
    return data


def test_a_rank_whose_shards_are_all_unreadable_fails_naming_them(synthetic_dir, tokenizer_dir, vision_dir, tmp_path):
    data = copy_dataset(synthetic_dir, tmp_path)
    shards = sorted((data / "train").glob("*.tar"))
    assert len(shards) >= 2
    shards[0].write_bytes(b"not a tar file" * 10)  # unreadable
    for shard in shards[1:]:
        shard.unlink()  # missing, though index.json lists it
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, data_dir=str(data))
    with pytest.raises(
        RuntimeError,
        match=rf"rank 0: none of its {len(shards)} training shard\(s\) can be read: "
        r".*shard-\d+\.tar \((ReadError|FileNotFoundError)",
    ):
        next(iter(dm.train_dataset()))


def test_one_readable_shard_keeps_the_stream_going(synthetic_dir, tokenizer_dir, vision_dir, tmp_path):
    data = copy_dataset(synthetic_dir, tmp_path)
    shards = sorted((data / "train").glob("*.tar"))
    for shard in shards[1:]:
        shard.write_bytes(b"\0" * 1024)  # an empty tar stream: reads, but holds nothing
    shards[1].unlink()
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, data_dir=str(data))
    stream = iter(dm.train_dataset())
    examples = [next(stream) for _ in range(30)]  # more than the good shard holds: it is drawn again and again
    assert {e["meta"]["key"] for e in examples} <= {
        s["json"]["key"]
        for s in iter_samples(synthetic_dir / "mauset" / "train")
        if s["__url__"].endswith(shards[0].name)
    }


def test_an_evaluation_shortfall_against_index_json_is_named(synthetic_dir, tokenizer_dir, vision_dir, tmp_path):
    import tarfile

    data = copy_dataset(synthetic_dir, tmp_path)
    index = json.loads((data / "test" / "index.json").read_text())
    first, second = (data / "test" / s["name"] for s in index["shards"][:2])
    full = datamodule(synthetic_dir, tokenizer_dir, vision_dir, data_dir=str(data)).eval_dataset("test")
    # the first shard cut in the middle of its third sample; the second loses one sample's JSON
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    cut = next(m for m in members if m.name.endswith(".json") and m.name.startswith(members[6].name.split(".")[0]))
    first.write_bytes(first.read_bytes()[: cut.offset_data + 10])
    with tarfile.open(second) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = next(m.name for m, _ in kept if m.name.endswith(".json"))
    with tarfile.open(second, "w") as tar:
        for member, content in kept:
            if member.name != dropped:
                tar.addfile(member, io.BytesIO(content))
    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, data_dir=str(data))
    found_first = sum(1 for m in members[: members.index(cut)] if m.name.endswith(".json"))
    with pytest.raises(
        ValueError,
        match=rf"{index['shards'][0]['count'] - found_first + 1} of the {index['samples']} "
        rf"samples that index\.json lists cannot be evaluated: .*{first.name} has "
        rf"{found_first} of {index['shards'][0]['count']} readable records; "
        rf".*{second.name} has {index['shards'][1]['count'] - 1} of .*allow_missing_eval",
    ):
        dm.eval_dataset("test")
    lenient = datamodule(synthetic_dir, tokenizer_dir, vision_dir, data_dir=str(data), allow_missing_eval=True)
    planned = lenient.eval_dataset("test").plan
    assert 0 < len(planned) < len(full.plan)  # evaluated without them, and said so in the log


def worker_pids() -> list[int]:
    """The children this process's main thread started (the loader's workers, by fork)."""
    import os
    from pathlib import Path

    return [int(pid) for pid in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]


@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_workers_outlive_the_signals_slurm_sends_every_process(synthetic_dir, tokenizer_dir, vision_dir, split):
    import os
    import signal
    import time

    dm = datamodule(synthetic_dir, tokenizer_dir, vision_dir, batches_per_epoch=6, batch_size=1)
    dm.setup()
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    batches = iter(loader)
    next(batches), next(batches)  # one batch from each worker: both have started (see the known limits)
    workers = worker_pids()
    assert len(workers) == 2
    for pid in workers:  # as SLURM signals every process of a job, and a terminal's Ctrl+C its group
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            os.kill(pid, signum)
    time.sleep(0.5)
    assert sum(1 for _ in batches) > 0  # the workers go on: the main process decides when to stop
    assert worker_pids() == []  # and the loader ended them when it was done
