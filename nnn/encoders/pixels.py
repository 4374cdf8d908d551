"""Image preprocessing cut at the uint8 boundary: DataLoader workers send uint8 pixels, the
model's device turns them into the float pixels the model takes.

A torchvision ``Compose`` of PIL steps followed by ``ToTensor`` and ``Normalize`` (open_clip's
``preprocess``) splits into

- ``PILToUint8`` after the PIL steps, run in the workers: PIL RGB image -> (3, H, W) uint8,
  the values ``ToTensor`` starts from;
- ``Uint8Finish``, run on the device: (b, 3, H, W) uint8 -> float32 ``x / 255``, then
  ``(x - mean) / std``: the same IEEE operations in the same order as ``ToTensor`` and
  ``Normalize``, so the pixels are the same bit for bit (tested).

A batch of uint8 pixels is a quarter of the float32 one: a quarter of the bytes to pass through
the workers' shared memory, to pin and to copy to the GPU (at batch 256 and 224 px, 38.5 MB
instead of 154 MB). ``split_at_uint8`` returns None for any other transform (a transformers
image processor), which then runs whole in the workers; the LAVIS adapter hands over the
``Compose`` inside its eval processor, which splits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


class PILToUint8:
    """Picklable: PIL image (RGB) -> (3, H, W) uint8 tensor, as ``ToTensor`` lays it out."""

    def __call__(self, image) -> torch.Tensor:
        if getattr(image, "mode", None) != "RGB":
            raise ValueError(f"PILToUint8 takes RGB PIL images, got {type(image).__name__} in "
                             f"mode {getattr(image, 'mode', None)!r}")
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1) \
            .contiguous()

    def __repr__(self) -> str:
        return "PILToUint8()"


class Uint8Finish:
    """(b, 3, H, W) uint8 on any device -> float32 ``(x / 255 - mean) / std`` per channel there
    (``mean``, ``std``: 3 floats; None: ``ToTensor`` alone)."""

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32).div(255)
        if self.mean is None:
            return x
        return x.sub(self.mean.to(x.device).view(1, -1, 1, 1)) \
            .div(self.std.to(x.device).view(1, -1, 1, 1))

    def __repr__(self) -> str:
        return f"Uint8Finish(mean={self.mean}, std={self.std})"


def split_at_uint8(transform) -> tuple[Callable, Uint8Finish] | None:
    """(worker part: PIL -> (3, H, W) uint8, device part: ``Uint8Finish``) of a torchvision
    ``Compose`` [PIL steps..., ToTensor, (Normalize)], or None for any other transform."""
    from torchvision import transforms as T

    if not isinstance(transform, T.Compose):
        return None
    steps = list(transform.transforms)
    normalize = steps.pop() if steps and isinstance(steps[-1], T.Normalize) else None
    tensor_steps = (T.ToTensor, T.PILToTensor, T.Normalize, T.ConvertImageDtype)
    if not steps or not isinstance(steps[-1], T.ToTensor) \
            or any(isinstance(s, tensor_steps) for s in steps[:-1]):
        return None  # the steps before ToTensor must be PIL ones
    finish = (Uint8Finish() if normalize is None
              else Uint8Finish(normalize.mean, normalize.std))
    return T.Compose([*steps[:-1], PILToUint8()]), finish
