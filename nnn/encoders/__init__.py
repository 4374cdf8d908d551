"""Encoders: images and captions in, L2-normalised float32 embeddings out. Imports are lazy."""
