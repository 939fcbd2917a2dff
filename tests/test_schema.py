"""``MAUSetRecord``: the one record every builder makes and the reader checks, validated whole."""

from __future__ import annotations

import dataclasses

import pytest

from maugpt.mauset.location import region_name
from maugpt.schema import REGIONS, MAUSetRecord, validate_record

GOOD = dict(
    key="mvtec_ad/bottle/broken_large/000",
    source="mvtec_ad",
    product="bottle",
    product_name="bottle",
    domain="Consumer Products",
    split="test",
    is_anomalous=True,
    defect_class="broken_large",
    defect_name="large breakage",
    location={"box": [0.1, 0.2, 0.5, 0.6], "region": "top left"},
    qa=[{"task": "detection", "style": "discriminative", "question": "Is it defective?", "answer": "True"}],
    origin="bottle/test/broken_large/000.png",
)


def test_a_record_round_trips_and_stores_only_the_optional_fields_it_has():
    record = MAUSetRecord(**GOOD)
    assert list(record.to_dict()) == list(GOOD)  # no width/height/generic_defect/defects until set
    sized = dataclasses.replace(record, width=512, height=384, generic_defect=True)
    assert sized.to_dict() == {**GOOD, "width": 512, "height": 384, "generic_defect": True}
    assert MAUSetRecord.from_dict(sized.to_dict()) == sized
    assert validate_record(sized.to_dict()) == sized.to_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(is_anomalous="yes"), "field 'is_anomalous' should be bool, got str"),
        (dict(width=True), "field 'width' should be int or None, got bool"),
        (dict(domain="Food"), "field 'domain' is 'Food', expected one of ['Industrial Components'"),
        (dict(split="dev"), "field 'split' is 'dev', expected one of ['train', 'val', 'test']"),
        (dict(source="visa"), "field 'source' is 'visa', expected one of ['btad'"),
        (dict(is_anomalous=False), "a normal image has no defect_class, defect_name, location or defects"),
        (dict(location={"box": [0.1, 0.2, 1.5, 0.6], "region": "top left"}), "location should be {'box'"),
        (dict(location={"box": [0.5, 0.2, 0.1, 0.6], "region": "top left"}), "location should be {'box'"),
        (dict(location={"box": [0.1, 0.2, 0.5, 0.6], "region": "upper left"}), "location should be {'box'"),
        (
            dict(qa=[{"task": "detection", "style": "binary", "question": "q", "answer": "a"}]),
            "qa[0] has task 'detection' and style 'binary'",
        ),
        (
            dict(qa=[{"task": "detection", "style": "open", "question": "q", "answer": " "}]),
            "qa[0] has an empty question or answer",
        ),
        (dict(qa=[{"task": "detection", "question": "q", "answer": "a"}]), "qa[0] lacks text fields ['style']"),
    ],
)
def test_each_broken_field_is_named_with_the_key(change, message):
    with pytest.raises(ValueError) as caught:
        MAUSetRecord(**{**GOOD, **change})
    assert str(caught.value).startswith(f"record {GOOD['key']!r}: ") and message in str(caught.value)
    with pytest.raises(ValueError) as read:
        MAUSetRecord.from_dict({**GOOD, **change}, where="sample in shard-000000.tar")
    assert str(read.value).startswith(f"sample in shard-000000.tar {GOOD['key']!r}: ") and message in str(read.value)


def test_missing_and_unknown_fields_are_errors_from_a_shard():
    missing = {k: v for k, v in GOOD.items() if k != "origin"}
    with pytest.raises(
        ValueError,
        match=r"^sample in x.tar 'mvtec_ad/bottle/broken_large/000': missing field "
        r"'origin'$",
    ):
        MAUSetRecord.from_dict(missing, where="sample in x.tar")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]; a record has \['key', 'source'"):
        MAUSetRecord.from_dict({**GOOD, "colour": "red"})
    with pytest.raises(ValueError, match="record: expected a JSON object, got list"):
        MAUSetRecord.from_dict([GOOD])


def test_every_region_the_location_code_names_is_in_the_contract():
    names = {region_name(x / 10, y / 10) for x in range(11) for y in range(11)}
    assert names == set(REGIONS)
