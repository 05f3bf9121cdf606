"""Is an input like the data an embedded model was trained on? Image statistics against a conformal threshold.

The embedded models answer with a digit (or a digit mask) for any input, so a certificate on a photo is correct
about the smoothed classifier and says nothing about the photo. This module measures how unlike the training
data an input is, from five statistics of the image at the training resolution (:data:`STATISTICS`): how much the
border varies around its median colour, how far the pixels lie from that background colour on average, how far
that ink's centre of mass sits from the image centre, how much fine detail the image has, and how bright its
border is. Their Mahalanobis distance to the statistics of the training images is compared with the distances of
training images held back from the fit (split conformal): an input is *unusual* when it lies farther than every
held-back image, which an image drawn like the training images does with probability at most 1/(m + 1) for m
held-back images. No threshold is typed in: the reference and the threshold both come from the training split.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

STATISTICS = ("border spread", "ink", "ink off centre", "fine detail", "border brightness")
"""What :func:`image_statistics` measures, in its column order."""
CHUNK = 256
"""Images (or clips) measured at a time."""
CLIP_FRAMES = 4
"""Frames a clip's statistics are the mean of (evenly spaced, first and last included)."""
FIT_SHARE = 2 / 3
"""Share of the training images the reference mean and covariance are fitted on; the rest set the threshold."""
TRAINING_DATA = {
    "image-classification": "scikit-learn's handwritten digits: one digit, centred, in one colour on a plain dark "
                            "background, 32×32 pixels",
    "video-classification": "one-second clips (16 frames of 32×32 pixels) of one such digit drifting on a plain dark "
                            "background",
    "segmentation": "64×64 scenes of 2–4 such digits, each in its own colour, on one plain dark background",
}
"""What the embedded models of each task were trained on, in words."""


def _border(images: torch.Tensor) -> torch.Tensor:
    """The outer ring of pixels of images [N, 3, H, W] as [N, 3, ring]."""
    return torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2)


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """float64 [N, 5] (:data:`STATISTICS`) of float images [N, 3, H, W] in [0, 1].

    Background: the per-channel median of the border; ink: each pixel's RGB distance from it. Border spread: mean
    absolute deviation of the border from the background; ink: mean ink; ink off centre: distance of the ink's
    centre of mass from the image centre (1 = an edge's middle); fine detail: mean absolute difference between the
    image and its 3×3 box blur; border brightness: mean of the background colour.
    """
    _, _, height, width = images.shape
    border = _border(images)
    background = border.median(dim=2).values
    spread = (border - background[..., None]).abs().mean(dim=(1, 2))
    ink = (images - background[..., None, None]).norm(dim=1)
    weight = ink.sum(dim=(1, 2)).clamp_min(1e-8)
    rows = torch.linspace(-1, 1, height, dtype=images.dtype)[None, :, None]
    cols = torch.linspace(-1, 1, width, dtype=images.dtype)[None, None, :]
    off_centre = torch.hypot((ink * rows).sum(dim=(1, 2)) / weight, (ink * cols).sum(dim=(1, 2)) / weight)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    detail = (images - blurred).abs().mean(dim=(1, 2, 3))
    return torch.stack([spread, ink.mean(dim=(1, 2)), off_centre, detail, background.mean(dim=1)], dim=1).double()


@dataclass(frozen=True)
class Typicality:
    """How an input compares with the training images: its distance, the largest of the held-back images' distances,
    and the conformal p-value (1 + held-back images at least as far) / (m + 1)."""

    distance: float
    threshold: float
    p_value: float

    @property
    def unusual(self) -> bool:
        """Farther from the training statistics than every held-back training image."""
        return self.distance > self.threshold


@dataclass(frozen=True)
class TrainingStatistics:
    """The reference of one training set: where its images' statistics lie, and how far its held-back images are."""

    size: tuple[int, int]
    """(H, W) the training images have; inputs are resized to it before measuring."""
    mean: torch.Tensor
    precision: torch.Tensor
    """Inverse covariance of the fitted images' statistics."""
    held_back: torch.Tensor
    """Sorted distances of the held-back images."""

    @classmethod
    def fit(cls, images: torch.Tensor) -> TrainingStatistics:
        """From uint8 training images [N, 3, H, W] or clips [N, T, 3, H, W] (a clip's statistics: some frames' mean)."""
        statistics = _statistics(images)
        fitted = int(len(statistics) * FIT_SHARE)
        reference, held_back = statistics[:fitted], statistics[fitted:]
        mean, precision = reference.mean(dim=0), torch.linalg.inv(torch.cov(reference.T))
        distances = _mahalanobis(held_back, mean, precision)
        return cls(tuple(images.shape[-2:]), mean, precision, torch.sort(distances).values)  # type: ignore[arg-type]

    def check(self, pixels: torch.Tensor) -> Typicality:
        """Compare one float input in [0, 1] — an image [3, H, W] or a clip [T, 3, H, W], any size — with the data."""
        batch = pixels.detach().cpu().float()
        batch = batch[None] if batch.ndim == 3 else batch
        resized = F.interpolate(batch, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        distance = float(_mahalanobis(_statistics(resized.clamp(0, 1)[None]), self.mean, self.precision)[0])
        farther = int((self.held_back >= distance).sum())
        return Typicality(distance, float(self.held_back[-1]), (1 + farther) / (len(self.held_back) + 1))


def _statistics(images: torch.Tensor) -> torch.Tensor:
    """[N, 5] of images [N, 3, H, W], or of clips [N, T, 3, H, W] averaged over :data:`CLIP_FRAMES` evenly spaced
    frames of each; uint8 or float in [0, 1]. Measured :data:`CHUNK` at a time: no float copy of a whole training
    set is ever made."""
    rows = []
    for chunk in images.split(CHUNK):
        if chunk.ndim == 5:
            chosen = torch.linspace(0, chunk.shape[1] - 1, min(CLIP_FRAMES, chunk.shape[1])).round().long()
            chunk = chunk[:, chosen]
        pixels = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
        measured = image_statistics(pixels.flatten(0, -4))
        rows.append(measured.reshape(len(chunk), -1, len(STATISTICS)).mean(dim=1))
    return torch.cat(rows)


def _mahalanobis(statistics: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    centred = statistics - mean
    return ((centred @ precision) * centred).sum(dim=1).sqrt()


_fitted: dict[str, TrainingStatistics] = {}
_fitting = {task: threading.Lock() for task in TRAINING_DATA}
"""One lock per task: a reference is fitted once, and waiting for one never waits for another."""


def _training_images(task: str) -> torch.Tensor:
    from . import digits_split
    from .clips import digit_clips
    from .scenes import scenes_split

    split = {"image-classification": lambda: digits_split("train")[0],
             "video-classification": lambda: digit_clips("train")[0],
             "segmentation": lambda: scenes_split("train")[0]}
    return split[task]()


def training_statistics(task: str) -> TrainingStatistics:
    """The reference of the embedded models of ``task`` (a key of :data:`TRAINING_DATA`), fitted once per process
    from its training split (the segmentation scenes take seconds to build)."""
    if task not in TRAINING_DATA:
        raise KeyError(f"no embedded training data for task {task!r}")
    with _fitting[task]:
        if task not in _fitted:
            _fitted[task] = TrainingStatistics.fit(_training_images(task))
        return _fitted[task]
