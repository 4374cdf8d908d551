"""Image-embedding throughput: the full extraction pipeline against the model forward pass alone.

For each open_clip model (random weights, ``pretrained=None``: nothing is downloaded), on
generated JPEGs (default 2,048 at 640x480, smooth synthetic pictures of photo-like file size):

- ``forward only``: ``encoder.encode_image_batch`` on one pre-made batch already on the device,
  repeated (the upper bound);
- ``decode+preprocess``: the DataLoader alone (workers decode and transform, no model);
- ``pipeline``: DataLoader + forward, as ``nnn.embed.local`` runs it (steady state, first batch
  excluded), with full JPEG decoding and with ``jpeg_draft`` (reduced-scale JPEG decoding);
- ``embed_split e2e``: ``nnn.embed.embed_split`` wall clock into a fresh cache (worker start,
  captions, cache write included).

Target (GPU): pipeline >= 80 % of forward-only images/s. Usage::

    python benchmarks/bench_extraction.py                      # CUDA, ViT-B-32 and ViT-L-14, fp16
    python benchmarks/bench_extraction.py --device cpu --n-images 64 --model tiny   # smoke test

Prints a table (and writes it as JSON with --json PATH). Needs only the repo's requirements.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nnn.cache import EmbeddingCache
from nnn.data.base import RetrievalSplit
from nnn.encoders.open_clip import OpenClipEncoder
from nnn.embed import embed_split
from nnn.embed.batches import encode_pixels, image_loader

#: a small architecture for CPU smoke runs (registered from a temporary folder)
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2}}


def _write_jpeg(args) -> int:
    path, w, h, seed = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = rng.uniform(0, 255, 3) + xx[..., None] * rng.uniform(-0.4, 0.4, 3) \
        + yy[..., None] * rng.uniform(-0.4, 0.4, 3)
    for _ in range(6):  # a few blocks and some texture, so files have photo-like sizes
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        img[y0:y0 + h // 4, x0:x0 + w // 4] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
    return os.path.getsize(path)


def make_split(folder: Path, n: int, size: tuple[int, int], workers: int) -> RetrievalSplit:
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    with Pool(max(1, workers)) as pool:
        sizes = pool.map(_write_jpeg, [(p, *size, i) for i, p in enumerate(paths)], chunksize=16)
    print(f"generated {n} JPEGs {size[0]}x{size[1]}, mean {np.mean(sizes) / 1e3:.0f} kB",
          flush=True)
    return RetrievalSplit("bench", [str(i) for i in range(n)], paths,
                          [f"a synthetic picture number {i}" for i in range(n)],
                          np.arange(n, dtype=np.int64))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(encoder, device, n: int, batch: int, input_size: int) -> float:
    pixels = torch.randn(batch, 3, input_size, input_size, device=device)
    for _ in range(2):
        encode_pixels(encoder, pixels, device)
    _sync(device)
    steps = max(10, math.ceil(n / batch))
    t0 = time.perf_counter()
    for _ in range(steps):
        encode_pixels(encoder, pixels, device)
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def loader_rate(encoder, split, device, batch: int, workers: int, jpeg_draft,
                with_model: bool) -> float:
    """Steady-state images/s of the extraction loader (and forward), first batch excluded."""
    loader = image_loader(encoder, split, np.arange(split.n_images), batch_size=batch,
                          num_workers=workers, pin_memory=True, device=device,
                          jpeg_draft=jpeg_draft)
    n, t0 = 0, None
    for b in loader:
        if with_model:
            encode_pixels(encoder, b["pixels"], device)
        if t0 is None:  # workers started, first batch done
            _sync(device)
            t0 = time.perf_counter()
            continue
        n += len(b["rows"])
    _sync(device)
    return n / (time.perf_counter() - t0) if n else float("nan")


def end_to_end(encoder, split, device, batch: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        embed_split(encoder, split, EmbeddingCache(tmp), identity={"bench": split.n_images},
                    batch_size=batch, num_workers=workers, device=device, progress=False)
        _sync(device)
        return split.n_images / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="ViT-B-32,ViT-L-14",
                    help="comma-separated open_clip model names, or 'tiny'")
    ap.add_argument("--n-images", type=int, default=2048)
    ap.add_argument("--image-size", default="640x480")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default=None, help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--num-workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu (e.g. --n-images 64 --model tiny)")
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    batch = min(args.batch_size, max(1, args.n_images // 4))  # >= 4 batches for steady state
    rows = []
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{os.cpu_count()} CPUs, {args.num_workers} workers, batch {batch}, {precision}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        split = make_split(Path(tmp), args.n_images, (w, h), args.num_workers)
        for name in args.model.split(","):
            config_dir = None
            if name == "tiny":
                config_dir = Path(tmp) / "configs"
                config_dir.mkdir(exist_ok=True)
                (config_dir / "bench-tiny.json").write_text(json.dumps(TINY))
                name = "bench-tiny"
            torch.manual_seed(0)
            enc = OpenClipEncoder(model_name=name, pretrained=None, device=str(device),
                                  precision=precision, batch_size=batch,
                                  model_config_dir=str(config_dir) if config_dir else None).load()
            size = int(enc.image_transform(Image.new("RGB", (w, h))).shape[-1])
            fwd = forward_only(enc, device, args.n_images, batch, size)
            results = [("forward only", fwd),
                       ("decode+preprocess", loader_rate(enc, split, device, batch,
                                                         args.num_workers, None, False)),
                       ("pipeline", loader_rate(enc, split, device, batch, args.num_workers,
                                                None, True)),
                       (f"pipeline jpeg_draft={size}", loader_rate(enc, split, device, batch,
                                                                   args.num_workers, size, True)),
                       ("embed_split e2e", end_to_end(enc, split, device, batch,
                                                      args.num_workers))]
            for mode, rate in results:
                rows.append({"model": name, "input": size, "mode": mode, "images_per_s": rate,
                             "vs_forward": rate / fwd})
                print(f"  {name:12s} {mode:28s} {rate:9.1f} img/s  {100 * rate / fwd:6.1f} %",
                      flush=True)
            del enc
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n| model | input | mode | images/s | % of forward |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['mode']} | {r['images_per_s']:.1f} | "
              f"{100 * r['vs_forward']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
