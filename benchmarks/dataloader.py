"""Data-loading throughput of one worker against the raw image-decode rate, in one run.

Builds a synthetic MAU-Set at the chosen size (JPEG, as the real builders store it), then times,
over the same shards and in the same process:

* raw decode: reading the tar and decoding each image with PIL (the floor of any loader);
* the full path: reading, safe decoding and validation of the record, the timm transform of the
  encoder (CLIP-L/336 by default, read from timm's registry, nothing downloaded) up to its
  uint8 tensor, the chat template and tokenization with answer-only labels, and collation into
  batches. (The float normalisation runs on the accelerator after the transfer, not in a worker.)

Prints samples per second of each and their ratio (the target is ≥ 0.7 and ≥ 300 samples/s).

    python benchmarks/dataloader.py [--size 336] [--images 280] [--packing conversation]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from maugpt.data.datamodule import ExampleEncoder
from maugpt.data.encode import collate
from maugpt.data.reader import decode_sample, iter_samples, shard_urls
from maugpt.data.synthetic import build_synthetic
from maugpt.tokenizer import save_tokenizer, train_tokenizer


def raw_samples(folder: Path) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(shard_urls(folder)), wds.tarfile_to_samples()))


def time_raw_decode(folder: Path) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    for raw in raw_samples(folder):
        with Image.open(io.BytesIO(raw["jpg"])) as image:
            image.convert("RGB")
        n += 1
    return n, time.perf_counter() - start


def time_pipeline(folder: Path, encoder: ExampleEncoder, batch_size: int) -> tuple[int, int, float]:
    start = time.perf_counter()
    samples = examples = 0
    pending = []
    for raw in raw_samples(folder):
        pending += encoder(decode_sample(raw, encoder.wants_image))
        samples += 1
        while len(pending) >= batch_size:
            collate(pending[:batch_size], encoder.pad_token_id)  # uint8 images: normalised later, on the device
            examples += batch_size
            pending = pending[batch_size:]
    return samples, examples, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=336, help="image side in pixels")
    parser.add_argument("--images", type=int, default=280, help="synthetic images to time over")
    parser.add_argument("--vision_encoder", default="vit_large_patch14_clip_336.openai")
    parser.add_argument("--image_tokens", type=int, default=576)
    parser.add_argument("--packing", choices=["conversation", "qa"], default="conversation")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary of the locally trained tokenizer")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one data worker uses one core
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_synthetic(tmp / "syn", images=args.images, image_size=args.size, test=0.0, val=0.0,
                        image_format="jpg", captions=14, progress=False)
        folder = tmp / "syn" / "mauset" / "train"
        texts = [qa[k] for s in iter_samples(folder) for qa in s["json"]["qa"] for k in ("question", "answer")]
        save_tokenizer(train_tokenizer(texts + ["user assistant system"] * 20, vocab_size=args.vocab), tmp / "tok")
        encoder = ExampleEncoder(str(tmp / "tok"), args.vision_encoder, args.image_tokens, max_length=4096,
                                 packing=args.packing)
        raw = min((time_raw_decode(folder) for _ in range(args.repeats)), key=lambda r: r[1])
        full = min((time_pipeline(folder, encoder, args.batch_size) for _ in range(args.repeats)), key=lambda r: r[2])
    raw_rate, full_rate = raw[0] / raw[1], full[0] / full[2]
    print(f"{args.images} synthetic images at {args.size} px (JPEG), encoder {args.vision_encoder}, "
          f"{args.image_tokens} image tokens, packing {args.packing}, one worker (1 thread)")
    print("| path | samples/s | examples/s | × raw decode |")
    print("|---|---:|---:|---:|")
    print(f"| raw image decode | {raw_rate:.0f} | | 1.00 |")
    print(f"| decode + transform + tokenize + collate | {full_rate:.0f} | {full[1] / full[2]:.0f} | "
          f"{full_rate / raw_rate:.2f} |")


if __name__ == "__main__":
    main()
