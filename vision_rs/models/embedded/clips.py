"""Embedded moving-digit clips: each scikit-learn digit drifting and bouncing inside a 32×32 canvas.

Clip i of a split is made from digit image i of the same split of
:func:`~vision_rs.models.embedded.digits.digits_split` (train digits → train clips,
test digits → test clips), so the train/test split is the digits' fixed split.
The whole 32×32 coloured digit image moves by whole pixels along a straight
path that bounces off ±``MAX_SHIFT`` pixels from the centre; the strip it
uncovers takes the image's own background colour (the median of its outer
pixel ring). The path of clip i comes from a seed made of the split's seed and
i alone, so a clip never depends on how many others are made. The label is the
digit. Digits keep the size the embedded image CNN was trained on, so that CNN
can also be run frame by frame.

:func:`write_clips` writes them as mp4 files (OpenCV, fourcc ``mp4v``) into
class folders, to be read back through :func:`vision_rs.video.io.read_clip`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import InvalidParameterError, OutputPathError
from .digits import IMAGE_SIZE, digits_split

CLIP_FRAMES = 16
"""Frames per clip."""
MAX_SHIFT = 6
"""Largest offset of the digit image from the centre of the canvas, in pixels, along each axis."""
FPS = 16.0
"""Frame rate written into the mp4 files (the clips last one second)."""
_MOTION_SEEDS = {"train": 2205_06154, "test": 2210_16140}


def _background(image: np.ndarray) -> np.ndarray:
    """Per-channel median of the outer pixel ring of a uint8 [3, H, W] image: its background colour."""
    ring = np.concatenate([image[:, 0, :], image[:, -1, :], image[:, 1:-1, 0], image[:, 1:-1, -1]], axis=1)
    return np.median(ring, axis=1).round().astype(np.uint8)


def bounce_path(frames: int, seed: Sequence[int]) -> np.ndarray:
    """Integer offsets int64 [frames, 2] (dy, dx) of a straight path that reflects off ±MAX_SHIFT.

    Start uniform in [-MAX_SHIFT, MAX_SHIFT]; speed 0, 1 or 2 pixels per frame per
    axis, never 0 on both axes. ``seed``: integers that fix the path (numpy's SeedSequence).
    """
    rng = np.random.default_rng(list(seed))
    position = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
    velocity = np.zeros(2, dtype=np.int64)
    while not velocity.any():
        velocity = rng.integers(-2, 3, size=2)
    path = np.empty((frames, 2), dtype=np.int64)
    for t in range(frames):
        path[t] = position
        position = position + velocity
        for axis in range(2):  # reflect at the walls
            if abs(position[axis]) > MAX_SHIFT:
                position[axis] = np.sign(position[axis]) * 2 * MAX_SHIFT - position[axis]
                velocity[axis] = -velocity[axis]
    return path


def moving_clip(image: np.ndarray, path: np.ndarray) -> np.ndarray:
    """uint8 [T, 3, H, W]: ``image`` (uint8 [3, H, W]) shifted by each (dy, dx) of ``path``, background filled in."""
    _, height, width = image.shape
    clip = np.empty((len(path), *image.shape), dtype=np.uint8)
    clip[:] = _background(image)[None, :, None, None]
    for t, (dy, dx) in enumerate(path):
        rows_to = slice(max(dy, 0), height + min(dy, 0))
        cols_to = slice(max(dx, 0), width + min(dx, 0))
        rows_from = slice(max(-dy, 0), height + min(-dy, 0))
        cols_from = slice(max(-dx, 0), width + min(-dx, 0))
        clip[t, :, rows_to, cols_to] = image[:, rows_from, cols_from]
    return clip


@lru_cache(maxsize=2)
def digit_clips(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All clips of ``"train"`` (1,437) or ``"test"`` (360): uint8 [N, T, 3, 32, 32] and int64 labels [N]."""
    images, labels = digits_split(split)
    seed = _MOTION_SEEDS[split]
    pixels = images.numpy()
    clips = np.stack([moving_clip(pixels[i], bounce_path(CLIP_FRAMES, (seed, i))) for i in range(len(pixels))])
    return torch.from_numpy(clips), labels


class MovingDigitsDataset(Dataset):
    """(clip uint8 [T, 3, 32, 32], label) pairs of one split; usable wherever a torch ``Dataset`` is."""

    def __init__(self, split: str = "test") -> None:
        self.split = split
        self.clips, self.labels = digit_clips(split)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.clips[index], int(self.labels[index])


def clip_file(folder: str | os.PathLike, label: int, index: int) -> Path:
    """Where :func:`write_clips` puts clip ``index`` of class ``label``: ``folder/<label>/clip_0007.mp4``."""
    return Path(folder) / str(label) / f"clip_{index:04d}.mp4"


def _write_mp4(clip: np.ndarray, target: Path) -> None:
    """Encode uint8 [T, 3, H, W] RGB frames with OpenCV (mp4v) to ``target``, through a temporary file."""
    import cv2

    partial = target.with_name(f".{target.stem}.partial.mp4")
    height, width = clip.shape[-2:]
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise OutputPathError(f"OpenCV cannot write mp4v video to {partial}; is its FFmpeg backend present?")
    try:
        for frame in clip:
            writer.write(np.ascontiguousarray(frame.transpose(1, 2, 0)[:, :, ::-1]))  # RGB → OpenCV's BGR
    finally:
        writer.release()
    if not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise OutputPathError(f"OpenCV wrote nothing to {partial}")
    os.replace(partial, target)


def write_clips(folder: str | os.PathLike, split: str = "test", limit: int | None = None) -> list[Path]:
    """Write the first ``limit`` clips of ``split`` (all when None) as ``folder/<digit>/clip_<index>.mp4``.

    Class folders in the ImageFolder layout, so a folder loader finds the labels.
    Each file appears whole or not at all. Needs OpenCV (``pip install opencv-python-headless``).
    Returns the paths written, in clip order.
    """
    try:
        import cv2  # noqa: F401
    except ImportError as exc:
        raise OutputPathError("writing clips needs OpenCV: pip install opencv-python-headless") from exc
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidParameterError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    clips, labels = digit_clips(split)
    count = len(labels) if limit is None else min(limit, len(labels))
    written = []
    for index in range(count):
        target = clip_file(folder, int(labels[index]), index)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot create the clip folder {target.parent}: {exc}") from exc
        _write_mp4(clips[index].numpy(), target)
        written.append(target)
    return written


__all__ = [
    "CLIP_FRAMES",
    "FPS",
    "IMAGE_SIZE",
    "MAX_SHIFT",
    "MovingDigitsDataset",
    "bounce_path",
    "clip_file",
    "digit_clips",
    "moving_clip",
    "write_clips",
]
