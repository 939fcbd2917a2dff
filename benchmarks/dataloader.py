"""Data-loading throughput of one worker against the raw image-decode rate, in one run.

Builds synthetic MAU-Sets as the builders store them (JPEG) at two sizes: the builders' default
``max_side`` (512 px, what a user gets from ``tools/build_mauset.py``) and the encoder's input
side (``--max_side 336`` for CLIP-L/336: no resize left for the loader). Then times, over the
same shards and in the same process:

* raw decode: reading the tar and decoding each image with PIL (the floor of any loader);
* the full path: reading, safe decoding and validation of the record, the encoder's geometry
  (pad to square, resize, center crop) up to a uint8 tensor, the chat template and tokenization
  with answer-only labels, and collation into batches (the float normalisation runs on the
  accelerator after the transfer, not in a worker); once as shipped (PyTorch's uint8 resize,
  cached template skeletons and token segments) and once uncached with PIL's resize (timm's own
  transform, the path before the caches).

Each timed pass builds a fresh encoder, so its caches start empty: a pass over the shards
measures them warming up ("cold"); a "warm" pass is a second pass of an encoder that has seen
the shards once, the most the caches give. Prints samples per second of each and their ratio
to the raw decode of the same shards (target ≥ 0.7).

    python benchmarks/dataloader.py [--sizes 512 336] [--images 280] [--packing conversation]
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

from maugpt.data.chat import ChatEncoder
from maugpt.data.collate import collate
from maugpt.data.examples import ExampleEncoder
from maugpt.data.shards import decode_sample, iter_samples, shard_urls
from maugpt.mauset.synthetic import build_synthetic
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


def time_pipeline(folder: Path, make_encoder, batch_size: int, warm: bool = False) -> tuple[int, int, float, float]:
    """(samples, examples, seconds, token-segment cache hit rate) of one pass with a fresh encoder
    (``warm``: one that has already seen the shards once, as a worker's caches are later on)."""
    encoder = make_encoder()
    if warm:
        time_pipeline(folder, lambda: encoder, batch_size)
        encoder.format.chat.segments.hits = encoder.format.chat.segments.misses = 0
    start = time.perf_counter()
    samples = examples = 0
    pending = []
    for raw in raw_samples(folder):
        pending += encoder(decode_sample(raw, encoder.wants_image))
        samples += 1
        while len(pending) >= batch_size:
            collate(pending[:batch_size], encoder.format.pad_token_id)  # uint8 images: normalised later, on the device
            examples += batch_size
            pending = pending[batch_size:]
    seconds = time.perf_counter() - start
    segments = encoder.format.chat.segments
    return samples, examples, seconds, segments.hits / max(segments.hits + segments.misses, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[512, 336],
        help="image sides of the shard sets (the builders' default max_side, the encoder's input)",
    )
    parser.add_argument("--images", type=int, default=280, help="synthetic images to time over")
    parser.add_argument("--vision_encoder", default="vit_large_patch14_clip_336.openai")
    parser.add_argument("--image_tokens", type=int, default=576)
    parser.add_argument("--packing", choices=["conversation", "qa"], default="conversation")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary of the locally trained tokenizer")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one data worker uses one core
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            build_synthetic(
                tmp / f"syn{size}",
                images=args.images,
                image_size=size,
                test=0.0,
                val=0.0,
                image_format="jpg",
                captions=14,
                progress=False,
            )
        folder = tmp / f"syn{args.sizes[0]}" / "mauset" / "train"
        texts = [qa[k] for s in iter_samples(folder) for qa in s["json"]["qa"] for k in ("question", "answer")]
        save_tokenizer(train_tokenizer(texts + ["user assistant system"] * 20, vocab_size=args.vocab), tmp / "tok")

        def encoder(shipped: bool):
            def make():
                made = ExampleEncoder(
                    str(tmp / "tok"),
                    args.vision_encoder,
                    args.image_tokens,
                    max_length=4096,
                    packing=args.packing,
                    resize="torch" if shipped else "pil",
                )
                if not shipped:
                    made.format.chat = ChatEncoder(made.format.tokenizer, args.image_tokens, 4096, cache=False)
                return made

            return make

        for size in args.sizes:
            shards = tmp / f"syn{size}" / "mauset" / "train"
            raw = min((time_raw_decode(shards) for _ in range(args.repeats)), key=lambda r: r[1])
            raw_rate = raw[0] / raw[1]
            rows.append((size, "raw image decode", raw_rate, None, None))
            for shipped, warm in ((True, False), (True, True), (False, False)):
                best = min(
                    (time_pipeline(shards, encoder(shipped), args.batch_size, warm) for _ in range(args.repeats)),
                    key=lambda r: r[2],
                )
                name = (
                    "full path: torch resize, caches " + ("warm (second pass)" if warm else "cold (first pass)")
                    if shipped
                    else "full path: PIL resize, uncached"
                )
                rows.append((size, name, best[0] / best[2], best[1] / best[2], best[3] if shipped else None))
    print(
        f"{args.images} synthetic JPEG images per size, encoder {args.vision_encoder}, {args.image_tokens} image "
        f"tokens, packing {args.packing}, one worker (1 thread), torch {torch.__version__}"
    )
    print("| shards | path | samples/s | examples/s | × raw decode | segment-cache hits |")
    print("|---|---|---:|---:|---:|---:|")
    raw_rates = {size: rate for size, name, rate, _, _ in rows if name == "raw image decode"}
    for size, name, rate, examples, hits in rows:
        print(
            f"| {size} px | {name} | {rate:.0f} | {'' if examples is None else f'{examples:.0f}'} | "
            f"{rate / raw_rates[size]:.2f} | {'' if hits is None else f'{hits:.0%}'} |"
        )


if __name__ == "__main__":
    main()
