"""Certifying data sets of videos: files read with :func:`~vision_rs.video.read_clip_info` into Cohen's TSV,
resumable like image runs (one loop, one run record, one summary)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vision_rs.runs.datasets import Certifier, FileKind, certify_classification_dataset
from vision_rs.runs.summaries import DEFAULT_RADII, Summary

from .io import check_request, read_clip_info

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


@dataclass(frozen=True)
class ClipReading:
    """Which frames of each video a run reads (see :func:`~vision_rs.video.read_clip`); recorded with the run."""

    frames: int | None = None
    stride: int = 1
    start: int = 0
    uniform: bool = False
    size: tuple[int, int] | None = None
    pad: str | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_request(self.frames, self.stride, self.start, self.uniform, self.size, self.pad, self.backend)

    def read(self, path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
        """The clip [T, C, H, W] and how it was read (backend, frame indices, ...), for the row's record."""
        clip = read_clip_info(path, self.frames, self.stride, self.start, self.uniform, self.size, self.pad, self.backend)
        return clip.pixels, {"clip": clip.record()}

    def describe(self) -> dict[str, Any]:
        settings = asdict(self)
        settings["size"] = list(self.size) if self.size is not None else None
        return settings


def certify_video_dataset(
    smoothed: Certifier,
    data: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[tuple[Any, int]],
    out: str | os.PathLike,
    *,
    reading: ClipReading = ClipReading(),
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    seed: int = 0,
    radii: Sequence[float] = DEFAULT_RADII,
    class_to_idx: Mapping[str, int] | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    radius: float | None = None,
    sequential: bool = False,
    tolerance: float | None = None,
    desc: str = "certify",
) -> Summary:
    """Certify every clip of ``data`` and write ``out`` (Cohen's TSV) and its ``.jsonl`` (run record + certificates).

    ``data``: video files and folders (class folders label them, as for images) read with ``reading``, or
    a sequence / Dataset of ``(clip, label)``. Every file is read and checked against the memory budget
    before anything is written; clip ``idx`` is certified with seed ``seed + idx``; rerunning resumes.
    Each row records which backend read the clip and which frames. Under torchrun the clips are shared out
    over the processes as for images (``distributed``: see :func:`vision_rs.certify_dataset`). ``radius=r`` or
    ``sequential=True, tolerance=τ``: sequential certification, as for :func:`vision_rs.certify_dataset`. ``desc``
    labels the progress bar.
    """
    kind = FileKind("video", VIDEO_SUFFIXES, reading.read)
    return certify_classification_dataset(
        smoothed, data, out, task="video-classification", kind=kind, settings={"reading": reading.describe()},
        n0=n0, n=n, alpha=alpha, seed=seed, radii=radii, class_to_idx=class_to_idx, progress=progress,
        distributed=distributed, radius=radius, sequential=sequential, tolerance=tolerance, desc=desc,
    )
