"""nnn: Nearest Neighbor Normalization and hubness-correction baselines for image-text retrieval.

Library modules (``nnn.methods``, ``nnn.metrics``, ``nnn.data``, ``nnn.encoders``, ``nnn.cache``)
never read a Hydra config; only ``nnn.pipeline`` does.
"""

__version__ = "0.1.0"
