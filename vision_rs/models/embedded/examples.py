"""The embedded data sets as files, in the layouts the command line reads (``vision-rs examples OUT``).

::

    OUT/digits/<label>/<index>.png      the held-out digits, 32×32 RGB, in class folders (ImageFolder: folder = label)
    OUT/scenes/images/<index>.png       the held-out digit scenes, 64×64 RGB
    OUT/scenes/masks/<index>.png        their label maps: one class index per pixel (0–9 digits, 10 background)
    OUT/clips/<label>/clip_<index>.mp4  the held-out moving-digit clips, 16 frames of 32×32 (needs OpenCV)

Every file appears whole or not at all (written beside its place, then renamed); the same call writes the same files.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import OutputPathError
from .clips import write_clips
from .digits import DigitsDataset
from .scenes import DigitScenes


def save_png(pixels: np.ndarray, target: Path) -> Path:
    """Write uint8 ``[H, W]`` or ``[H, W, 3]`` pixels as a PNG at ``target``, whole or not at all."""
    partial = target.with_name(f".{target.stem}.partial.png")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(partial, format="PNG")
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputPathError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def _limited(count: int, limit: int | None) -> int:
    return count if limit is None else min(limit, count)


def write_digits(folder: str | os.PathLike, split: str = "test", limit: int | None = None) -> list[Path]:
    """The first ``limit`` digits of ``split`` (all when None) as ``folder/<label>/<index>.png``; returns the paths."""
    dataset = DigitsDataset(split)
    written = []
    for index in range(_limited(len(dataset), limit)):
        image, label = dataset[index]
        written.append(save_png(image.permute(1, 2, 0).numpy(), Path(folder) / str(label) / f"{index:04d}.png"))
    return written


def write_scenes(folder: str | os.PathLike, split: str = "test", limit: int | None = None) -> list[Path]:
    """The first ``limit`` scenes of ``split`` as ``folder/images/<index>.png`` with their label maps in
    ``folder/masks/<index>.png`` (the layout of ``certify-seg IMAGES --masks MASKS``); returns the image paths."""
    scenes = DigitScenes(split)
    written = []
    for index in range(_limited(len(scenes), limit)):
        image, label_map = scenes[index]
        save_png(label_map.numpy().astype(np.uint8), Path(folder) / "masks" / f"{index:04d}.png")
        written.append(save_png(image.permute(1, 2, 0).numpy(), Path(folder) / "images" / f"{index:04d}.png"))
    return written


@dataclass(frozen=True)
class Examples:
    """What :func:`write_examples` wrote: each kind's folder and file count (clips: 0 without OpenCV)."""

    digits: Path
    scenes: Path
    clips: Path
    counts: dict[str, int]
    clips_skipped: str = ""
    """Why no clips were written ('' when they were)."""


def write_examples(out: str | os.PathLike, limit: int | None = None, split: str = "test") -> Examples:
    """Write the embedded digits, scenes (with label maps) and clips of ``split`` under ``out`` (see the module
    docstring for the layout), the first ``limit`` of each (all when None). Clips need OpenCV; without it they are
    skipped and ``clips_skipped`` says why."""
    out = Path(out)
    digits = write_digits(out / "digits", split, limit)
    scenes = write_scenes(out / "scenes", split, limit)
    skipped = ""
    clips: list[Path] = []
    if importlib.util.find_spec("cv2") is None:
        skipped = "the clips need OpenCV: pip install 'vision-rs[video]' (or opencv-python-headless)"
    else:
        clips = write_clips(out / "clips", split, limit)
    return Examples(out / "digits", out / "scenes", out / "clips",
                    {"digits": len(digits), "scenes": len(scenes), "clips": len(clips)}, skipped)
