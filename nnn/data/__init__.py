"""Datasets: raw image-caption splits (COCO, Flickr30k) and embedding-level ones (synthetic, precomputed)."""

from nnn.data.base import EmbeddingSet, RetrievalSplit

__all__ = ["EmbeddingSet", "RetrievalSplit"]
