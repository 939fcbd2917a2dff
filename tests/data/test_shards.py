"""The shard reader's one rule of a usable sample, shared by ``maugpt inspect`` and the data modules."""

from __future__ import annotations

import io
import json
import re
import tarfile
from itertools import islice
from pathlib import Path

import pytest

from maugpt.cli import main
from maugpt.data.datamodule import MAUSetDataModule
from maugpt.data.shards import SkipCounter, iter_samples, read_index

#: How webdataset cuts a member name into the sample's key and the member's extension.
MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def shard_with_a_linked_image(source: Path, folder: Path) -> tuple[dict, str]:
    """A one-shard split folder of two samples copied from ``source``: the first whole, the second
    with its image member replaced by a symlink to the first's (the reader extracts no links).
    Returns the whole sample's record and the linked sample's key."""
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    keys = list(dict.fromkeys(MEMBER.match(m.name).group(1) for m, _ in members))[:2]
    good, linked = keys
    folder.mkdir(parents=True)
    with tarfile.open(folder / "shard-000000.tar", "w") as tar:
        for member, payload in members:
            key, extension = MEMBER.match(member.name).groups()
            if key == linked and extension == "png":
                link = tarfile.TarInfo(member.name)
                link.type, link.linkname = tarfile.SYMTYPE, f"{good}.png"
                tar.addfile(link)
            elif key in keys:
                tar.addfile(member, io.BytesIO(payload))
    (folder / "index.json").write_text(json.dumps({"samples": 2, "shards": [{"name": "shard-000000.tar", "count": 2}]}))
    record = next(json.loads(p) for m, p in members if m.name == f"{good}.json")
    return record, linked


@pytest.fixture
def linked(synthetic_dir, tmp_path):
    source = sorted((synthetic_dir / "mauset" / "val").glob("shard-*.tar"))[0]
    record, linked_key = shard_with_a_linked_image(source, tmp_path / "mauset" / "train")
    return tmp_path / "mauset", record, linked_key


def test_a_sample_whose_image_is_a_link_is_skipped_alike_by_inspect_the_reader_and_the_data_module(
    linked, tokenizer_dir, vision_dir, capsys
):
    data, record, linked_key = linked
    folder = data / "train"
    counter = SkipCounter()
    assert [s["json"]["key"] for s in iter_samples(folder, counter)] == [record["key"]]
    assert counter.count == 1 and counter.reasons == {"no image": 1}

    main(["inspect", str(folder), "--samples", "0"])
    shown = capsys.readouterr().out
    label = "abnormal" if record["is_anomalous"] else "normal"
    assert f"== {folder}: 1 images (" in shown and f"1 {label}" in shown and ", 1 unreadable skipped" in shown
    assert f"-- skipped 1 sample(s) that cannot be used (1 no image); first: sample {linked_key!r}" in shown

    dm = MAUSetDataModule(
        str(data), str(tokenizer_dir), str(vision_dir), image_tokens=4, batch_size=2, num_workers=0, shuffle_buffer=2
    )
    evaluated = list(dm.eval_dataset("train"))  # the whole sample once; the linked one flagged and counted
    assert [e["meta"]["key"] for e in evaluated if e["valid"]] == [record["key"]]
    assert sum(e["skipped"] for e in evaluated) == 1
    trained = list(islice(iter(dm.train_dataset()), 6))  # the endless stream: only the whole sample
    assert {e["meta"]["key"] for e in trained} == {record["key"]} and sum(e["skipped"] for e in trained) >= 1


def test_a_damaged_index_is_named(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"index.json is not valid JSON .*expected \{\"samples\": N"):
        read_index(tmp_path)
    with pytest.raises(SystemExit, match=r"^inspect_shards: .*index.json is not valid JSON"):
        main(["inspect", str(tmp_path)])
