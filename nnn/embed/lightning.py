"""Extraction over several GPUs or nodes with Lightning's ``Trainer.predict``.

``embed_split_lightning(encoder, split, cache, *, identity, accelerator="auto", devices="auto",
num_nodes=1, strategy="ddp", **options)`` -> ``EmbeddingSet`` (image (m, d), text (k, d) float32
unit rows, caption_to_image (k,)); ``options`` as in ``nnn.embed.local.embed_split_local``
(on_bad_image, batch_size, num_workers, pin_memory, shard_size, jpeg_draft, progress) plus
``trainer_kwargs`` for anything else the Trainer takes. The result and the cache entry are the
same as the single-process path's, so either may compute an entry that the other then loads.
Encoders that bring their own embeddings (``encoder.embed_split``) are dispatched before this
module, by ``nnn.embed.embed_split``.

How it runs: every rank loads the encoder on its own device in ``setup`` (once per process: a
later split on the same device reuses the model), reads the images that are still missing from
the shards in the cache's work dir (``nnn.embed.shards.ShardDir``), and encodes its share of
them (Lightning gives each rank a distinct slice of the rows with its
``UnrepeatedDistributedSampler``; when there are fewer rows than ranks, rows are repeated and the
copies dropped at the merge). Each rank writes its results as shard files holding the *global*
row numbers, so a killed job resumes with any number of ranks. Then each rank encodes its
contiguous 1/world share of the captions (unless caption parts in the work dir hold it already)
and saves it as one caption part. Once every rank reports success, rank 0 merges the parts in
row order and stores the entry in the cache; the other ranks then load it. A rank that fails on
its images, its captions or in the merge makes every rank stop with an error instead of
waiting (the shards written so far are kept for the rerun). The work dir must be on a file
system all nodes share (the cache root usually is).

The cache key names the precision that runs on the device the encoder was configured for; a
rank whose device would run another one (fp16 falls back to fp32 on CPU) is refused, as its
embeddings would be stored under the wrong key.

On a cache hit no Trainer is built and the encoder is not loaded. Every rank returns the merged
``EmbeddingSet``.

Launch as for any Lightning job: one process that spawns the others on a single machine
(``strategy="ddp"`` re-runs the command line per device), or ``srun``/torchrun on a cluster. With
Hydra and SLURM, see docs/data.md (``hydra/launcher=submitit_slurm``). Whatever follows the
extraction in such a re-run command belongs to rank 0 alone: ``is_global_zero()`` tells a process
which it is, from the environment the launcher set before the process started.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm.auto import tqdm

from nnn._arrays import check_positive_int
from nnn.data.base import EmbeddingSet, RetrievalSplit
from nnn.data.images import check_bad_image_policy
from nnn.embed.batches import caption_workers, encode_captions, encode_pixels, image_loader
from nnn.embed.shards import ShardDir, finish_arrays, to_embedding_set
from nnn.encoders.torch_model import effective_precision

log = logging.getLogger(__name__)


#: variables a launcher sets to a process's rank (torchrun: RANK; srun: SLURM_PROCID; Lightning's
#: own launcher, which re-runs the command per device: NODE_RANK and LOCAL_RANK)
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


def is_global_zero() -> bool:
    """Whether this process is global rank 0 of a multi-process run (True when alone).

    The initialised process group's rank when there is one; otherwise rank 0 is the process
    whose rank variables (``RANK_VARIABLES``) are all 0 or unset, which the launchers fix before
    the process starts, so this holds before any Trainer exists (e.g. when every split is cached).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and value != "0":
            if not value.isdigit():
                raise ValueError(f"environment variable {name}={value!r} is not a rank (an "
                                 "integer >= 0); unset it or fix the launcher")
            return False
    return True


def _place_encoder(encoder, device: torch.device, key_precision: str | None) -> None:
    """Load ``encoder`` on ``device`` unless it is loaded there already. ValueError when the
    precision that runs there differs from ``key_precision``, the one its cache key names."""
    runs = effective_precision(encoder.precision, device, warn=False)
    if key_precision is not None and runs != key_precision:
        raise ValueError(f"the encoder's cache key was made for precision={key_precision}, but "
                         f"on this rank's device {device} precision={encoder.precision} runs as "
                         f"{runs}: configure the encoder for the accelerator's device (e.g. "
                         f"device=cpu with extract.lightning.accelerator=cpu, device=cuda with "
                         f"accelerator=gpu)")
    if encoder.is_loaded and str(encoder.device) == str(device):
        return
    encoder.device = str(device)
    encoder.load()


class ImageEncoderModule(L.LightningModule):
    """On each rank: loads the encoder on the rank's device and finds the rows still missing from
    ``shards`` (``setup``); ``predict_step``: a batch of ``collate_rows`` -> rows, embeddings and
    failures (NumPy). An exception while encoding is kept in ``error`` (the later batches are
    passed over, their rows stay pending) instead of being raised: the other ranks would wait
    for this one at the next collective call until the process group's timeout."""

    def __init__(self, encoder, shards: ShardDir, make_loader: Callable, *, on_bad_image: str,
                 refresh: bool, key_precision: str | None):
        """``make_loader(rows, device=...)``: ``image_loader`` with the split and the loader
        options bound; ``refresh``: rank 0 deletes the shards first; ``key_precision``: the
        precision the cache key names (None: not checked)."""
        super().__init__()
        self.encoder = encoder
        self.shards = shards
        self.make_loader = make_loader
        self.on_bad_image = on_bad_image
        self.refresh = refresh
        self.key_precision = key_precision
        self.pending = np.zeros(0, dtype=np.int64)
        self.error: Exception | None = None

    def setup(self, stage: str) -> None:
        _place_encoder(self.encoder, self.trainer.strategy.root_device, self.key_precision)
        if self.trainer.is_global_zero:  # only rank 0 deletes files
            if self.refresh:
                self.shards.clear()
            self.shards.parts(remove_invalid=True)
        self.trainer.strategy.barrier("nnn-extract-scan")
        pending = self.shards.pending(self.on_bad_image, remove_invalid=False)
        world = self.trainer.world_size
        if len(pending) < world:  # every rank needs at least one row; copies are merged away
            pending = np.resize(pending if len(pending) else np.zeros(1, np.int64), world)
        self.pending = pending.astype(np.int64)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return self.make_loader(self.pending, device=self.device)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        rows = batch["rows"].cpu().numpy()
        nothing = {"rows": np.zeros(0, np.int64), "emb": np.zeros((0, 0), np.float32),
                   "failed_rows": np.zeros(0, np.int64), "errors": []}
        if self.error is not None:
            return nothing
        try:
            emb = (encode_pixels(self.encoder, batch["pixels"], self.device) if len(rows)
                   else np.zeros((0, 0), np.float32))
        except Exception as e:  # raised after the loop, once every rank knows (see the class)
            self.error = e
            return nothing
        return {"rows": rows, "emb": emb, "failed_rows": batch["failed_rows"].cpu().numpy(),
                "errors": list(batch["errors"])}


class ShardWriter(BasePredictionWriter):
    """Writes each rank's predictions as shard files of about ``shard_size`` images; rank 0
    logs the work and shows the bar (``progress``) of the split called ``name``."""

    def __init__(self, shards: ShardDir, shard_size: int, *, name: str, progress: bool):
        super().__init__(write_interval="batch")
        self.shards = shards
        self.shard_size = shard_size
        self.name = name
        self.progress = progress
        self._buf: list[dict] = []
        self._bar = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        log.info("split %r: %d of %d images to encode on %d ranks", self.name,
                 len(pl_module.pending), self.shards.n_images, trainer.world_size)
        if self.progress:
            # rank 0 sees its own share; the bar counts it times the number of ranks
            self._bar = tqdm(total=len(pl_module.pending), unit="img",
                             desc=f"embed {self.name} ({trainer.world_size} ranks)")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        self._buf.append(prediction)
        if self._bar is not None:
            self._bar.update(trainer.world_size * (len(prediction["rows"]) +
                                                   len(prediction["failed_rows"])))
        if sum(len(p["rows"]) + len(p["failed_rows"]) for p in self._buf) >= self.shard_size:
            self._flush(trainer.global_rank)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._flush(trainer.global_rank)
        if self._bar is not None:
            self._bar.close()

    def _flush(self, rank: int) -> None:
        if not any(len(p["rows"]) or len(p["failed_rows"]) for p in self._buf):
            self._buf = []  # nothing to write (e.g. batches passed over after an error)
            return
        with_rows = [p for p in self._buf if len(p["rows"])]
        rows = (np.concatenate([p["rows"] for p in with_rows]) if with_rows
                else np.zeros(0, np.int64))
        emb = (np.concatenate([p["emb"] for p in with_rows]) if with_rows
               else np.zeros((0, 0), np.float32))
        failed = np.concatenate([p["failed_rows"] for p in self._buf])
        errors = [e for p in self._buf for e in p["errors"]]
        self.shards.write(rows, emb, failed, errors, tag=f"r{rank:04d}")
        self._buf = []


def _all_ranks_succeeded(trainer, error: Exception | None, elsewhere: str) -> None:
    """Collective: raises ``error`` on the rank that had it and ``RuntimeError(elsewhere)`` on
    the others, so that no rank waits for a failed one; returns when every rank succeeded."""
    everyone = trainer.strategy.reduce_boolean_decision(error is None, all=True)
    if error is not None:
        raise error
    if not everyone:
        raise RuntimeError(elsewhere)


def _encode_caption_share(encoder, split: RetrievalSplit, shards: ShardDir, trainer, *,
                          progress: bool, num_workers: int = 0) -> Exception | None:
    """This rank's contiguous share of the captions, encoded and saved as one caption part
    (unless one is there already); the exception it raised, if any."""
    n, world, rank = split.n_captions, trainer.world_size, trainer.global_rank
    start, stop = n * rank // world, n * (rank + 1) // world
    try:
        if stop > start and not shards.has_text(start, stop, n):
            if trainer.is_global_zero:
                log.info("split %r: encoding %d captions on %d ranks", split.name, n, world)
            device = trainer.strategy.root_device
            text = encode_captions(encoder, split.captions[start:stop], device,
                                   progress=progress and trainer.is_global_zero,
                                   num_workers=caption_workers(num_workers, device))
            shards.save_text(text, start=start)
    except Exception as e:  # reported by _all_ranks_succeeded
        return e
    return None


def embed_split_lightning(encoder, split: RetrievalSplit, cache, *, identity: dict,
                          accelerator: str = "auto", devices="auto", num_nodes: int = 1,
                          strategy: str = "ddp", on_bad_image: str = "error",
                          batch_size: int = 256, num_workers: int = 4, pin_memory: bool = True,
                          shard_size: int = 8192, jpeg_draft: int | None = None,
                          progress: bool = True,
                          trainer_kwargs: dict | None = None) -> EmbeddingSet:
    """Embeddings of ``split`` computed with ``Trainer.predict`` (see the module doc)."""
    on_bad_image = check_bad_image_policy(on_bad_image)
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_size = check_positive_int(shard_size, "shard_size")
    if jpeg_draft is not None:
        identity = {**identity, "jpeg_draft": check_positive_int(jpeg_draft, "jpeg_draft")}
    if not cache.refresh:
        arrays = cache.load(identity)
        if arrays is not None:
            log.info("split %r: embeddings found in the cache", split.name)
            return to_embedding_set(split, arrays)
    shards = ShardDir(cache.work_dir(identity), split.n_images)
    make_loader = functools.partial(image_loader, encoder, split, batch_size=batch_size,
                                    num_workers=num_workers, pin_memory=pin_memory,
                                    jpeg_draft=jpeg_draft)
    module = ImageEncoderModule(encoder, shards, make_loader, on_bad_image=on_bad_image,
                                refresh=cache.refresh, key_precision=identity.get("precision"))
    writer = ShardWriter(shards, shard_size, name=split.name, progress=progress)
    # precision stays 32-true: encode_pixels applies the encoder's own autocast, as in one process
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy, callbacks=[writer], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **(trainer_kwargs or {}))
    trainer.predict(module, return_predictions=False)
    error = module.error or _encode_caption_share(encoder, split, shards, trainer,
                                                  progress=progress, num_workers=num_workers)
    _all_ranks_succeeded(trainer, error, f"split {split.name!r}: another rank failed to encode "
                                         "its share of the images or captions; see its error")
    if trainer.is_global_zero:
        try:
            arrays = finish_arrays(encoder, split, shards, on_bad_image=on_bad_image,
                                   device=trainer.strategy.root_device, progress=progress,
                                   num_workers=num_workers)
            cache.store(identity, arrays)
        except Exception as e:  # reported by _all_ranks_succeeded
            error = e
    _all_ranks_succeeded(trainer, error, f"split {split.name!r}: rank 0 failed to merge the "
                                         f"shards in {shards.path}; see its error")
    arrays = cache.load(identity)
    if arrays is None:
        raise RuntimeError(f"split {split.name!r}: the merged embeddings are not readable from "
                           f"the cache at {cache.root} on rank {trainer.global_rank}; is the "
                           "cache directory shared by all nodes?")
    return to_embedding_set(split, arrays)
