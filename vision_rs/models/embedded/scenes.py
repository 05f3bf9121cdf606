"""The embedded segmentation data set: scenes of 2–4 scikit-learn digits on a 64×64 canvas, offline.

Each scene has a plain background colour and 2–4 digits, each scaled to a square of 18–28
pixels and placed so that the squares do not overlap (rejection sampling; a digit that does
not fit after 100 tries is left out, and the squares are redrawn until at least 2 fit). Train scenes use only the
train split of :func:`~vision_rs.models.embedded.digits.digits_split` and test scenes only its test
split, so no test digit was ever seen in training.

Colours follow the digits images: the background is drawn like theirs (each channel uniform
in [0, 0.35]) and every digit keeps its own foreground colour. A digit's *ink* (its shape, in
[0, 1]) is recovered from its coloured image by stretching each channel from its minimum (the
digit's background) to its maximum (its foreground) and averaging the channels; the scene is
background·(1 − ink) + foreground·ink inside the digit's square. Labels: the digit's class 0–9
where its ink exceeds :data:`INK_THRESHOLD` = 0.5, :data:`BACKGROUND` = 10 everywhere else.
Scenes come from fixed seeds, so every install sees the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .digits import digits_split

SCENE_SIZE = 64
BACKGROUND = 10
NUM_SEG_CLASSES = 11
INK_THRESHOLD = 0.5
DIGIT_SIZES = (18, 28)
"""Smallest and largest side, in pixels, of the square a digit is scaled to (inclusive)."""
SCENE_COUNTS = {"train": 2000, "test": 100}
_SCENE_SEEDS = {"train": 20230501, "test": 20230502}
_PLACEMENT_TRIES = 100


@dataclass(frozen=True)
class Placement:
    """One digit in a scene: which digit of the split, its class and its square (top, left, side)."""

    digit: int
    label: int
    top: int
    left: int
    size: int


def digit_ink(images: torch.Tensor) -> torch.Tensor:
    """The ink (shape) of coloured digits uint8 [N, 3, h, w] as float [N, h, w] in [0, 1] (see the module docstring)."""
    pixels = images.float()
    low = pixels.amin(dim=(2, 3), keepdim=True)
    high = pixels.amax(dim=(2, 3), keepdim=True)
    return ((pixels - low) / (high - low).clamp_min(1.0)).mean(dim=1).clamp(0.0, 1.0)


def scaled_ink(ink: torch.Tensor, size: int) -> torch.Tensor:
    """One digit's ink [h, w] scaled to [size, size] (bilinear with antialiasing), in [0, 1]."""
    scaled = F.interpolate(ink[None, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return scaled[0, 0].clamp(0.0, 1.0)


def _free_square(rng: np.random.Generator, size: int, taken: list[Placement]) -> tuple[int, int] | None:
    for _ in range(_PLACEMENT_TRIES):
        top, left = (int(v) for v in rng.integers(0, SCENE_SIZE - size + 1, size=2))
        if all(top + size <= p.top or p.top + p.size <= top or left + size <= p.left or p.left + p.size <= left
               for p in taken):
            return top, left
    return None


def _place_digits(rng: np.random.Generator, labels: torch.Tensor) -> list[Placement]:
    """Draw 2–4 digits, their sizes and non-overlapping squares; redraw the squares while fewer than 2 fit."""
    digits = rng.choice(len(labels), size=int(rng.integers(2, 5)), replace=False).tolist()
    sizes = [int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1)) for _ in digits]
    while True:
        placed: list[Placement] = []
        for digit, size in zip(digits, sizes):
            spot = _free_square(rng, size, placed)
            if spot is not None:
                placed.append(Placement(digit, int(labels[digit]), spot[0], spot[1], size))
        if len(placed) >= 2:
            return placed


def _compose(
    rng: np.random.Generator, images: torch.Tensor, labels: torch.Tensor, ink: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, tuple[Placement, ...]]:
    """One scene: image float32 [3, 64, 64] in [0, 1], uint8 label map [64, 64] and its placements."""
    canvas = np.broadcast_to(rng.uniform(0.0, 0.35, size=(3, 1, 1)), (3, SCENE_SIZE, SCENE_SIZE)).astype(np.float32)
    label_map = np.full((SCENE_SIZE, SCENE_SIZE), BACKGROUND, dtype=np.uint8)
    placed = _place_digits(rng, labels)
    for p in placed:
        shape = scaled_ink(ink[p.digit], p.size).numpy()
        foreground = images[p.digit].numpy().max(axis=(1, 2)).reshape(3, 1, 1) / np.float32(255.0)
        rows, cols = slice(p.top, p.top + p.size), slice(p.left, p.left + p.size)
        canvas[:, rows, cols] = canvas[:, rows, cols] * (1 - shape) + foreground * shape
        label_map[rows, cols][shape > INK_THRESHOLD] = p.label
    return canvas, label_map, tuple(placed)


@lru_cache(maxsize=2)
def _scenes(split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[Placement, ...], ...]]:
    images, labels = digits_split(split)
    ink = digit_ink(images)
    rng = np.random.default_rng(_SCENE_SEEDS[split])
    pixels, label_maps, placements = [], [], []
    for _ in range(SCENE_COUNTS[split]):
        canvas, label_map, placed = _compose(rng, images, labels, ink)
        pixels.append(np.round(canvas * 255.0).astype(np.uint8))  # one scene at a time: no float copy of the split
        label_maps.append(label_map)
        placements.append(placed)
    return torch.from_numpy(np.stack(pixels)), torch.from_numpy(np.stack(label_maps)), tuple(placements)


def scenes_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"train"`` (2,000) or ``"test"`` (100) scenes: uint8 images [N, 3, 64, 64], int64 label maps [N, 64, 64]."""
    if split not in SCENE_COUNTS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, label_maps, _ = _scenes(split)
    return images, label_maps.long()


def scene_placements(split: str) -> tuple[tuple[Placement, ...], ...]:
    """Which digits of the split each scene holds and where (for checks and plots)."""
    if split not in SCENE_COUNTS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _scenes(split)[2]


class DigitScenes(Dataset):
    """(image uint8 [3, 64, 64], label map int64 [64, 64]) pairs of one split; a torch ``Dataset``."""

    def __init__(self, split: str = "test") -> None:
        self.split = split
        self.images, self.label_maps = scenes_split(split)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.label_maps[index]
