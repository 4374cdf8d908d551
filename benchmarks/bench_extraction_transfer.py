"""What travels from the DataLoader workers to the model, both ways: captions tokenised in the
main process or in workers (``nnn.embed.batches.caption_workers``), pixels sent as float32 or
as uint8 and finished where the model runs (``nnn.embed.batches.image_loader``).

For one open_clip model (random weights; ``tiny`` by default, so it runs anywhere):

- captions: tokenising alone (no model) in this process and through ``CaptionBatches`` in
  ``--num-workers`` workers; then ``encode_captions`` (tokenise + forward) both ways;
- pixels: the image DataLoader alone (decode + preprocess in the workers, no model) and with
  the forward (``encode_pixels``, which finishes uint8 pixels on the device), the workers
  sending float32 and sending uint8; the bytes of one batch; and what finishing a uint8 batch costs
  where the model runs (``Uint8Finish``, with the copy to the device on a GPU) against taking
  the float32 batch there.

Every number comes from this run; the header names the machine (``machine.describe``).

    .venv/bin/python benchmarks/bench_extraction_transfer.py --device cpu --num-workers 2
    python benchmarks/bench_extraction_transfer.py --device cuda --model ViT-B-32 --num-workers 15
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_extraction import TINY, make_split  # benchmarks/ is on sys.path when this runs
from machine import describe

from nnn.data.images import ImageRows, collate_rows
from nnn.embed.batches import CaptionBatches, _as_is, encode_captions, encode_pixels
from nnn.encoders.open_clip import OpenClipEncoder

WORDS = ("a man riding a wave on top of a surfboard two dogs playing in the snow near trees "
         "kitchen with white cabinets and a red bus parked beside the street at night").split()


def _captions(n: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))) for _ in range(n)]


def _best(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def caption_rows(enc, device, n: int, workers: int, repeats: int) -> list[tuple[str, float]]:
    caps = _captions(n)
    tokenize, b = enc.caption_tokenizer(), enc.batch_size

    def serial():
        for i in range(0, n, b):
            tokenize(caps[i:i + b])

    def in_workers():
        for _ in torch.utils.data.DataLoader(CaptionBatches(caps, b, tokenize), batch_size=None,
                                             collate_fn=_as_is, num_workers=workers):
            pass

    return [("captions: tokenise, this process", n / _best(serial, repeats)),
            (f"captions: tokenise, {workers} workers", n / _best(in_workers, repeats)),
            ("captions: encode_captions, tokenised in this process",
             n / _best(lambda: encode_captions(enc, caps, device, progress=False), repeats)),
            (f"captions: encode_captions, tokenised in {workers} workers",
             n / _best(lambda: encode_captions(enc, caps, device, progress=False,
                                               num_workers=workers), repeats))]


def pixel_rows(enc, device, split, batch: int, workers: int, jpeg_draft, repeats: int):
    """(label, value, unit) rows: loader images/s both ways, batch MB, finishing ms."""
    part, finish = enc._uint8_split()  # noqa: SLF001  the split extraction itself uses
    rows, last = [], {}
    for what, transform in (("float32", enc.image_preprocessor()), ("uint8", part)):
        def load(model: bool):
            for b in torch.utils.data.DataLoader(
                    ImageRows(split.image_paths, transform, jpeg_draft=jpeg_draft),
                    batch_size=batch, num_workers=workers, collate_fn=collate_rows,
                    pin_memory=device.type == "cuda"):
                last[what] = b["pixels"]
                if model:  # encode_image_batch finishes uint8 pixels on the device
                    encode_pixels(enc, b["pixels"], device)
        rows += [(f"pixels: loader alone, workers send {what}",
                  split.n_images / _best(lambda: load(False), repeats), "img/s"),
                 (f"pixels: loader + forward, workers send {what}",
                  split.n_images / _best(lambda: load(True), repeats), "img/s")]
    for what in ("float32", "uint8"):
        px = last[what]
        rows.append((f"pixels: one batch of {len(px)} as {what}",
                     px.numel() * px.element_size() / 1e6, "MB"))

    def take_float():
        px = last["float32"].to(device, non_blocking=True)
        _sync(device)
        return px

    def take_uint8():
        px = finish(last["uint8"].to(device, non_blocking=True))
        _sync(device)
        return px

    assert torch.equal(take_float().cpu(), take_uint8().cpu())  # the same pixels
    rows += [(f"pixels: float32 batch onto {device.type}", 1e3 * _best(take_float, repeats),
              "ms"),
             (f"pixels: uint8 batch onto {device.type} + finish there",
              1e3 * _best(take_uint8, repeats), "ms")]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", help="an open_clip model name, or 'tiny'")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--captions", type=int, default=30_000)
    ap.add_argument("--n-images", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--jpeg-draft", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu")
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        config_dir, name = None, args.model
        if name == "tiny":
            config_dir = Path(tmp) / "configs"
            config_dir.mkdir()
            (config_dir / "bench-tiny.json").write_text(json.dumps(TINY))
            name = "bench-tiny"
        torch.manual_seed(0)
        enc = OpenClipEncoder(model_name=name, pretrained=None, device=str(device),
                              batch_size=args.batch_size,
                              model_config_dir=str(config_dir) if config_dir else None).load()
        (Path(tmp) / "jpeg").mkdir()
        split = make_split(Path(tmp) / "jpeg", args.n_images, (640, 480), args.num_workers)
        rows = [(label, rate, "captions/s") for label, rate in
                caption_rows(enc, device, args.captions, args.num_workers, args.repeats)]
        rows += pixel_rows(enc, device, split, args.batch_size, args.num_workers,
                           args.jpeg_draft, args.repeats)
    print(f"\n{name} on {device}, batch {args.batch_size}, {args.num_workers} workers, "
          f"{args.captions:,} captions, {args.n_images} JPEGs 640x480 (jpeg_draft "
          f"{args.jpeg_draft}), best of {args.repeats}\n\n| what | value | unit |\n|---|---|---|")
    for label, value, unit in rows:
        print(f"| {label} | {value:,.1f} | {unit} |")
    if args.json:
        args.json.write_text(json.dumps([dict(what=w, value=v, unit=u) for w, v, u in rows],
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
