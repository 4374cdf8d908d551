"""Embeddings of a ``RetrievalSplit``: computed once, resumably, and stored in the embedding cache.

This module is the entry point: it names the cache entry and chooses how a miss is computed.

``embed_dataset_split(encoder, dataset, name, cache, *, rows=None, subset=None, **options)``
    What the pipeline calls. ``dataset.split(name)`` (optionally only the images at ``rows``,
    e.g. the reference part of a training split, described by ``subset``), keyed by
    ``nnn.cache.embedding_identity(encoder.cache_identity(), dataset=dataset.identity(split),
    split=name, subset=subset)``, with the dataset's ``on_bad_image``; then ``embed_split``.

``embed_split(encoder, split, cache, *, identity, lightning=None, **options)`` -> ``EmbeddingSet``
    (image (m, d), text (k, d) float32 unit rows, caption_to_image (k,) int64). An encoder with
    its own ``embed_split(split)`` (precomputed embeddings) is simply asked for them; otherwise
    ``lightning={...}`` (Trainer arguments: accelerator, devices, num_nodes, strategy) runs
    ``nnn.embed.lightning.embed_split_lightning`` (several GPUs/nodes), and without it
    ``nnn.embed.local.embed_split_local`` runs in this process. ``options``: on_bad_image,
    batch_size, num_workers, pin_memory, shard_size, jpeg_draft, progress (and device, one
    process only).

The package: ``batches`` (DataLoader and encoder calls), ``shards`` (the resumable work folder
and the cache entry made from it), ``local`` (one process), ``lightning`` (DDP; also
``is_global_zero``). Importing this module imports neither torch's DataLoader, PIL nor
Lightning: both paths are imported when a split is embedded.
"""

from __future__ import annotations

from nnn.cache import embedding_identity
from nnn.data.base import EmbeddingSet, RetrievalSplit


def embed_split(encoder, split: RetrievalSplit, cache, *, identity: dict,
                lightning: dict | None = None, **options) -> EmbeddingSet:
    """Embeddings of ``split`` under the cache identity ``identity`` (see the module doc)."""
    if hasattr(encoder, "embed_split"):
        return encoder.embed_split(split)
    if lightning:
        from nnn.embed.lightning import embed_split_lightning

        return embed_split_lightning(encoder, split, cache, identity=identity, **lightning,
                                     **options)
    from nnn.embed.local import embed_split_local

    return embed_split_local(encoder, split, cache, identity=identity, **options)


def embed_dataset_split(encoder, dataset, name: str, cache, *, rows=None, subset=None,
                        lightning: dict | None = None, **options) -> EmbeddingSet:
    """Embeddings of ``dataset.split(name)`` (only the images at ``rows`` (m,) when given).

    ``subset`` describes ``rows`` in the cache identity (e.g. {"part": "reference",
    "fraction": 0.2, "seed": 0}); the dataset identity also hashes the exact content.
    """
    split = dataset.split(name)
    if rows is not None:
        part = subset.get("part", "subset") if isinstance(subset, dict) else subset or "subset"
        split = split.subset_images(rows, name=f"{name}/{part}")
    identity = embedding_identity(encoder.cache_identity(), dataset=dataset.identity(split),
                                  split=name, subset=subset)
    options.setdefault("on_bad_image", dataset.on_bad_image)
    try:
        return embed_split(encoder, split, cache, identity=identity, lightning=lightning,
                           **options)
    except OSError as err:
        from nnn.data.images import BadImageError

        key = getattr(dataset, "config_key", "dataset")
        if not isinstance(err, BadImageError) or key == err.config_key:
            raise
        # the policy to change is that of this dataset's own config node
        raise BadImageError(err.failures, err.split, config_key=key) from None
