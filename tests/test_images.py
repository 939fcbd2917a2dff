"""Opening a user's image safely (``maugpt.images``): every image is generated here, none downloaded."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from maugpt.images import DEFAULT_MAX_PIXELS, ORIENTATION, ImageRejected, open_mask, open_rgb, orient, orient_box


def png(path: Path, width: int, height: int, depth: int, colour: int, rows) -> Path:
    """A PNG written chunk by chunk: ``rows`` yields each row's raw bytes (filter byte added here),
    compressed as they come, so a huge image costs one row of memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\0" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


# -- size: the header decides, before decoding ----------------------------------------------------
#: Run in a fresh interpreter: after importing, its address space is capped at what it holds plus
#: HEADROOM, so decoding the bomb (400 MB as 1-bit/L, 1.2 GB as RGB) must fail with MemoryError while
#: reading its header must not. The child first opens the bomb under the default max_pixels, then —
#: the control that shows the cap bites — under a max_pixels that lets it be decoded.
BOMB_CHILD = r"""
import json, os, resource, sys
import maugpt.images as images
from PIL import Image

HEADROOM = 200 * 2**20
held = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (held + HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
report = {"torch": "torch" in sys.modules, "limit": Image.MAX_IMAGE_PIXELS}

def outcome(max_pixels):
    try:
        images.open_rgb(sys.argv[1], max_pixels=max_pixels)
    except images.ImageRejected as err:
        return ["ImageRejected", err.reason, str(err)]
    except MemoryError as err:
        return ["MemoryError", "", str(err)]
    return ["opened", "", ""]

report["default"] = outcome(images.DEFAULT_MAX_PIXELS)
report["limit_after"] = Image.MAX_IMAGE_PIXELS
report["decoded"] = outcome(400_000_000)
report["limit_last"] = Image.MAX_IMAGE_PIXELS
print(json.dumps(report))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm are Linux's")
def test_a_bomb_is_rejected_from_its_header_without_decoding(tmp_path):
    row = bytes(20000 // 8)  # 1-bit black rows: 20000 x 20000 pixels in a 49 KB file
    bomb = png(tmp_path / "bomb.png", 20000, 20000, 1, 0, (row for _ in range(20000)))
    assert bomb.stat().st_size < 100_000
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, str(bomb)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["torch"] is False  # maugpt.images brings no torch (whose import would dwarf the cap)
    kind, reason, message = report["default"]
    assert (kind, reason) == ("ImageRejected", "too large")  # under the cap: nothing was decoded
    assert message == (
        f"{bomb}: too large: 20000x20000 = 400,000,000 pixels, more than max_pixels "
        "50,000,000 (read from the header, nothing decoded); raise max_pixels to accept it"
    )
    assert report["decoded"][0] == "MemoryError"  # the control: decoding it cannot fit under the cap
    # Pillow's own check, which refused to open it, is as it was after each call, in the child and here
    assert report["limit"] == report["limit_after"] == report["limit_last"] == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])  # Pillow checks PNG at open, TIFF at open and again at load
def test_an_image_pillow_calls_a_bomb_is_decoded_under_a_higher_max_pixels(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses more than 2000 pixels
    pixels = np.arange(50 * 100 * 3, dtype=np.uint32).reshape(50, 100, 3).astype(np.uint8)
    path = tmp_path / f"big.{fmt.lower()}"
    Image.fromarray(pixels).save(path, format=fmt)
    with pytest.raises(Image.DecompressionBombError), Image.open(path) as opened:
        opened.load()
    image = open_rgb(path, max_pixels=5000)
    assert image.size == (100, 50) and np.array_equal(np.asarray(image), pixels)
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted for that call only
    with pytest.raises(ImageRejected, match=r"100x50 = 5,000 pixels, more than max_pixels 4,999"):
        open_rgb(path, max_pixels=4999)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_only_when_asked(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (1500, 1000), (0, 128, 255)).save(path, quality=95)
    with pytest.raises(ImageRejected, match="1500x1000 = 1,500,000 pixels, more than max_pixels 400,000"):
        open_rgb(path, max_pixels=400_000)
    assert open_rgb(path, max_pixels=400_000, reduce_jpeg=True).size == (750, 500)  # 1/2: 375,000 pixels
    assert open_rgb(path, max_pixels=100_000, reduce_jpeg=True).size == (375, 250)  # 1/4
    with pytest.raises(ImageRejected, match="too large"):  # 1/8 is still 188 x 125
        open_rgb(path, max_pixels=20_000, reduce_jpeg=True)


# -- files that are not images --------------------------------------------------------------------
def test_a_truncated_jpeg_is_rejected_as_truncated(tmp_path):
    whole = tmp_path / "whole.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageRejected) as caught:
        open_rgb(cut, max_pixels=DEFAULT_MAX_PIXELS)
    assert caught.value.reason == "truncated"
    assert str(caught.value).startswith(f"{cut}: truncated: decoding failed (image file is truncated")


def test_a_damaged_png_is_rejected_as_corrupt(tmp_path):
    path = tmp_path / "damaged.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[100:110] = b"\xff" * 10  # inside the compressed pixels
    path.write_bytes(bytes(data))
    with pytest.raises(ImageRejected) as caught:
        open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    assert (caught.value.reason, str(caught.value)) == (
        "corrupt",
        f"{path}: corrupt: decoding failed (broken data stream when reading image file)",
    )


def test_an_empty_file_a_text_file_and_a_missing_file_are_rejected_with_their_reasons(tmp_path):
    empty, text, missing = tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "gone.png"
    empty.write_bytes(b"")
    text.write_text("not an image")
    expected = {
        empty: ("empty file", f"{empty}: empty file: 0 bytes, expected an image file"),
        text: (
            "not an image",
            f"{text}: not an image: Pillow recognises no image format in it "
            "(expected PNG, JPEG, BMP, TIFF or another format Pillow reads)",
        ),
        missing: ("unreadable", f"{missing}: unreadable: cannot read the file (No such file or directory)"),
    }
    for path, (reason, message) in expected.items():
        with pytest.raises(ImageRejected) as caught:
            open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
        assert (caught.value.reason, str(caught.value), caught.value.path) == (reason, message, path)
        assert isinstance(caught.value, OSError)  # every handler of unreadable images catches it


def test_the_error_survives_pickling_between_worker_processes(tmp_path):
    err = pickle.loads(pickle.dumps(ImageRejected(tmp_path / "a.png", "too large", "3x3")))
    assert (err.path, err.reason, err.detail, str(err)) == (
        tmp_path / "a.png",
        "too large",
        "3x3",
        f"{tmp_path / 'a.png'}: too large: 3x3",
    )


# -- modes: every one to 8-bit RGB ----------------------------------------------------------------
SIXTEEN = np.array([[0, 255, 256, 32767], [32768, 40000, 65280, 65535]], np.uint16)


def test_a_16_bit_grey_png_keeps_its_full_range(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(SIXTEEN).save(path)
    assert Image.open(path).mode == "I;16"
    image = open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    expected = np.floor(SIXTEEN / 256.0).astype(np.uint8)  # the high byte
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.repeat(expected[..., None], 3, axis=2))
    assert expected.tolist() == [[0, 0, 1, 127], [128, 156, 255, 255]]


def test_a_16_bit_rgb_png_keeps_its_full_range(tmp_path):
    values = np.stack([SIXTEEN, SIXTEEN[:, ::-1], 65535 - SIXTEEN], axis=2)
    path = png(tmp_path / "rgb16.png", 4, 2, 16, 2, (row.astype(">u2").tobytes() for row in values))
    image = open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    assert np.array_equal(np.asarray(image), np.floor(values / 256.0).astype(np.uint8))


def test_32_bit_integer_and_float_images_are_scaled_to_8_bits(tmp_path):
    Image.fromarray(np.array([[-5, 255, 256, 70000]], np.int32)).save(tmp_path / "i.tif")
    Image.fromarray(np.array([[0.0, 0.25, 1.0, np.nan]], np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray(np.array([[-1.0, 0.0, 3.0, np.inf]], np.float32)).save(tmp_path / "wide.tif")
    grey = {
        name: np.asarray(open_rgb(tmp_path / name, max_pixels=100))[..., 0].tolist()
        for name in ("i.tif", "unit.tif", "wide.tif")
    }
    assert grey == {
        "i.tif": [[0, 0, 1, 255]],  # 16-bit values, clipped
        "unit.tif": [[0, 64, 255, 0]],  # [0, 1] times 255, NaN 0
        "wide.tif": [[0, 64, 255, 0]],
    }  # stretched from -1..3, inf 0


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_image_is_converted_to_rgb(tmp_path, fmt):
    path = tmp_path / f"cmyk.{fmt.lower()}"
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(path, format=fmt)  # magenta ink
    assert Image.open(path).mode == "CMYK"
    assert np.unique(np.asarray(open_rgb(path, max_pixels=100)).reshape(-1, 3), axis=0).tolist() == [[255, 0, 255]]


def test_transparent_pixels_are_composited_over_white(tmp_path):
    rgba = np.array([[[200, 100, 0, 128], [10, 20, 30, 0], [1, 2, 3, 255], [250, 5, 77, 1]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    alpha = rgba[..., 3:] / 255.0
    expected = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "rgba.png", max_pixels=100)), expected)
    assert expected.tolist() == [[[227, 177, 127], [255, 255, 255], [1, 2, 3], [255, 254, 254]]]
    Image.fromarray(np.array([[[100, 0], [100, 255], [100, 51]]], np.uint8)).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert np.asarray(open_rgb(tmp_path / "la.png", max_pixels=100))[..., 0].tolist() == [[255, 100, 224]]


def test_palette_images_with_and_without_transparency(tmp_path):
    image = Image.fromarray(np.array([[0, 1, 2]], np.uint8)).convert("L").convert("P")
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    image.save(tmp_path / "p.png")
    image.save(tmp_path / "transparent.png", transparency=1)
    assert Image.open(tmp_path / "transparent.png").mode == "P"
    assert np.asarray(open_rgb(tmp_path / "p.png", max_pixels=100)).tolist() == [
        [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    ]
    assert np.asarray(open_rgb(tmp_path / "transparent.png", max_pixels=100)).tolist() == [
        [[10, 20, 30], [255, 255, 255], [70, 80, 90]]
    ]


def test_a_1_bit_image_is_black_and_white(tmp_path):
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    assert np.asarray(open_rgb(tmp_path / "one.png", max_pixels=100)).tolist() == [[[255, 255, 255], [0, 0, 0]]]


# -- orientation: upright, masks and boxes turned with the image ----------------------------------
STORED = np.zeros((20, 40, 3), np.uint8)
STORED[2:6, 3:9] = (255, 0, 0)  # a red mark near the stored top-left corner
#: The EXIF definitions, as numpy operations on the stored (rows, columns) array.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.rot90(a[:, ::-1], 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a[:, ::-1], -1),
    8: lambda a: np.rot90(a, 1),
}


def with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_the_image_its_mask_and_boxes(tmp_path, orientation):
    path = with_orientation(tmp_path / "photo.png", STORED, orientation)
    Image.fromarray(STORED[..., 0]).save(tmp_path / "mask.png")  # drawn on the stored grid, no EXIF
    image = open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    expected = UPRIGHT[orientation](STORED)
    assert image.size == expected.shape[1::-1] and np.array_equal(np.asarray(image), expected)
    assert image.info[ORIENTATION] == orientation
    mask = open_mask(tmp_path / "mask.png", max_pixels=DEFAULT_MAX_PIXELS, orientation=image.info[ORIENTATION])
    assert np.array_equal(np.asarray(mask), expected[..., 0])  # still on its image
    assert orient_box((3, 2, 9, 6), orientation, image.size) == mask.getbbox()
    assert np.array_equal(
        np.asarray(orient(Image.fromarray(STORED), orientation)),
        np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")),
    )


def test_a_camera_jpeg_marked_rotated_is_seen_upright(tmp_path):
    path = with_orientation(tmp_path / "phone.jpg", STORED, 6)  # "rotate 90 degrees clockwise to view"
    image = open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    assert image.size == (20, 40)
    red, green, _ = image.getpixel((15, 5))  # the stored top-left mark is now at the top right
    assert red > 200 and green < 60
    assert image.getpixel((4, 5))[0] < 60  # and not at the top left


def test_a_16_bit_label_mask_keeps_its_values_clipped_to_255(tmp_path):
    path = tmp_path / "mask16.png"
    Image.fromarray(np.array([[0, 1, 2, 255], [256, 1000, 32768, 65535]], np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    mask = np.asarray(open_mask(path, max_pixels=100))
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 1, 2, 255], [255, 255, 255, 255]]
    assert np.array_equal(mask, np.asarray(Image.open(path).convert("L")))  # the builders' old reading
    assert (mask > 0).tolist() == [[False, True, True, True], [True] * 4]  # a 0/1 label mask's defect stays


def test_32_bit_integer_and_float_masks_keep_their_values_clipped_to_255(tmp_path):
    Image.fromarray(np.array([[-5, 0, 1, 255, 256, 70000, 2**31 - 1]], np.int32)).save(tmp_path / "i.tif")
    Image.fromarray(np.array([[-1.0, 0.0, 0.6, 1.0, 254.7, 300.0, np.inf, -np.inf]], np.float32)).save(
        tmp_path / "f.tif"
    )
    Image.fromarray(np.array([[np.nan, 1.0]], np.float32)).save(tmp_path / "nan.tif")
    masks = {name: np.asarray(open_mask(tmp_path / name, max_pixels=100)) for name in ("i.tif", "f.tif", "nan.tif")}
    assert {name: mask.tolist() for name, mask in masks.items()} == {
        "i.tif": [[0, 0, 1, 255, 255, 255, 255]],  # clipped, not scaled
        "f.tif": [[0, 0, 0, 1, 254, 255, 255, 0]],  # clipped and truncated, +inf 255, -inf 0
        "nan.tif": [[0, 1]],
    }  # NaN 0
    for name in ("i.tif", "f.tif"):  # the builders' old reading (its NaN is C's undefined cast: not compared)
        assert np.array_equal(masks[name], np.asarray(Image.open(tmp_path / name).convert("L"))), name


def test_a_builder_turns_the_mask_and_the_boxes_with_the_image(tmp_path):
    import io
    import json

    from maugpt.mauset.knowledge import Knowledge
    from maugpt.mauset.writer import source_sample
    from maugpt.schema import SourceImage

    photo = with_orientation(tmp_path / "photo.png", STORED, 6)  # upright: 20 x 40, the mark at the top right
    Image.fromarray(STORED[..., 0]).save(tmp_path / "mask.png")
    masked = SourceImage(
        "mvtec_ad",
        "bottle",
        "mvtec_ad/bottle/0",
        photo,
        is_anomalous=True,
        defect_class="contamination",
        mask=tmp_path / "mask.png",
    )
    boxed = SourceImage(
        "deeppcb",
        "pcb",
        "deeppcb/pcb/0",
        photo,
        is_anomalous=True,
        defect_class="open",
        boxes=[(3, 2, 9, 6)],
        defects=[("open", (3, 2, 9, 6))],
    )
    knowledge = Knowledge()
    for src in (masked, boxed):
        sample = source_sample(src, "test", knowledge, seed=0, max_side=64, image_format="png")
        record = json.loads(sample["json"])
        assert (record["width"], record["height"]) == (20, 40)
        assert record["location"] == {"box": [0.7, 0.075, 0.9, 0.225], "region": "top right"}
    assert record["defects"][0]["boxes"] == [[0.7, 0.075, 0.9, 0.225]]
    mask = Image.open(io.BytesIO(source_sample(masked, "test", knowledge, 0, 64, "png")["mask.png"]))
    assert mask.size == (20, 40) and mask.getbbox() == (14, 3, 18, 9)  # on the red mark of the stored image


def test_reduce_jpeg_leaves_other_formats_to_the_limit(tmp_path):
    Image.new("RGB", (1500, 1000)).save(tmp_path / "large.png")
    with pytest.raises(ImageRejected, match="too large: 1500x1000"):
        open_rgb(tmp_path / "large.png", max_pixels=400_000, reduce_jpeg=True)


def test_a_mode_pillow_cannot_convert_is_rejected_as_unsupported(tmp_path, monkeypatch):
    import maugpt.images

    Image.new("L", (2, 2)).save(tmp_path / "odd.png")
    # No file Pillow reads decodes to such a mode today: La, Pillow's premultiplied grey, stands for it.
    monkeypatch.setattr(maugpt.images, "to_rgb", lambda image: Image.new("La", image.size).convert("RGB"))
    with pytest.raises(ImageRejected) as caught:
        open_rgb(tmp_path / "odd.png", max_pixels=100)
    assert (caught.value.reason, str(caught.value)) == (
        "unsupported mode",
        f"{tmp_path / 'odd.png'}: unsupported mode: mode L cannot be converted to RGB "
        "(conversion from La to L not supported)",
    )


def test_a_damaged_exif_block_is_ignored_and_the_pixels_kept(tmp_path, caplog):
    path = tmp_path / "odd_exif.png"
    Image.new("RGB", (4, 2), (9, 9, 9)).save(path, exif=b"garbage!!")  # Pillow cannot parse it
    image = open_rgb(path, max_pixels=100)
    assert image.size == (4, 2) and image.getpixel((0, 0)) == (9, 9, 9) and image.info[ORIENTATION] == 1
    assert f"{path}: unreadable EXIF block" in caplog.text
