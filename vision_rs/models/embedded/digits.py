"""The embedded offline data set: scikit-learn's handwritten digits as 32×32 RGB images.

scikit-learn ships the 1,797 real 8×8 scans (10 classes) inside its wheel, so
nothing is downloaded. Each scan is upscaled bilinearly to 32×32 and coloured
with a foreground and a background colour drawn from a fixed seed, then
quantised to uint8. The train/test split (1,437 / 360) is a fixed seeded
permutation, so every user sees the same held-out images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_SIZE = 360
# Per-channel statistics of the digits training split (rounded), the normalisation of the embedded models.
DIGITS_MEAN = (0.3569, 0.3598, 0.3569)
DIGITS_STD = (0.2161, 0.2158, 0.2173)
_COLOUR_SEED = 20190208
_SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 [N, 3, 32, 32] and their labels int64 [N]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scans = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8] in [0,1]
    ink = F.interpolate(scans, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    rng = np.random.default_rng(_COLOUR_SEED)
    count = ink.shape[0]
    foreground = torch.from_numpy(rng.uniform(0.55, 1.0, size=(count, 3, 1, 1)).astype(np.float32))
    background = torch.from_numpy(rng.uniform(0.0, 0.35, size=(count, 3, 1, 1)).astype(np.float32))
    rgb = background * (1.0 - ink) + foreground * ink
    images = (rgb * 255.0).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images, labels


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"train"`` or ``"test"`` split as uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _all_digits()
    order = torch.from_numpy(np.random.default_rng(_SPLIT_SEED).permutation(images.shape[0]))
    chosen = order[-TEST_SIZE:] if split == "test" else order[:-TEST_SIZE]
    return images[chosen], labels[chosen]


class DigitsDataset(Dataset):
    """(image uint8 [3, 32, 32], label) pairs of one split; usable wherever a torch ``Dataset`` is."""

    def __init__(self, split: str = "test") -> None:
        self.split = split
        self.images, self.labels = digits_split(split)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
