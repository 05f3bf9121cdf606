"""Training data: folders of images, clips or images with masks, read as [0, 1] pixels, and their checks.

Every data set here yields ``(pixels, target)``: pixels float in [0, 1] at the size the model trains on (images
[C, H, W], clips [T, C, H, W]), never normalised (the base classifier normalises after the noise), and a class
index (or a label map [H, W] of class indices, 255 = not scored). Any torch ``Dataset`` of such pairs (uint8
pixels are divided by 255) trains as well.

Image folders follow torchvision's ``ImageFolder`` (class sub-folders; :mod:`vision_rs.runs.inputs`), with
timm's training transform (``timm.data.create_transform(is_training=True)``, without its normalisation) as the
augmentation. Grey and palette images are converted to the model's colour channels before the noise.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InvalidImageError, InvalidParameterError
from ..images import IMAGE_SUFFIXES, open_image_file, to_unit_float
from ..runs.inputs import UNKNOWN_LABEL, LabelledFiles, collect_files
from ..segmentation.datasets import read_label_map
from ..segmentation.results import IGNORE_INDEX
from ..video.datasets import VIDEO_SUFFIXES, ClipReading
from ..wording import Wording

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation of images, as timm's ``create_transform(is_training=True)`` makes it (on pixels: no
    normalisation), then optionally a random crop of ``train_crop`` pixels.

    ``size`` (H, W): the random-resized-crop output, the model's input size; ``scale`` and ``ratio``: the crop's
    area share and aspect range; ``hflip``: flip probability; ``color_jitter``: timm's jitter strength (0: none);
    ``auto_augment``: timm's policy string (e.g. ``"rand-m9-mstd0.5"``) or None; ``enabled=False``: only resize and
    centre-crop to ``size`` (timm's ``no_aug``). ``train_crop``: train on random crops of that many pixels (a side)
    of the augmented image, the way Joshi et al. train a Smooth-Reduce patch model; the model's evaluation resize
    then brings them to its input size after the noise, as it brings the patches at certification.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    interpolation: str = "bilinear"
    enabled: bool = True
    train_crop: int | None = None

    def __post_init__(self) -> None:
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise InvalidParameterError(f"scale must be 0 < low <= high <= 1 (shares of the image area), got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise InvalidParameterError(f"ratio must be 0 < low <= high (crop aspect ratios), got {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise InvalidParameterError(f"hflip is a probability in [0, 1], got {self.hflip}")
        if not self.color_jitter >= 0:
            raise InvalidParameterError(f"{{jitter}} must be >= 0, got {self.color_jitter}",
                                        jitter=Wording("color_jitter", "--color-jitter"))
        if self.train_crop is not None and not 1 <= self.train_crop <= min(self.size):
            raise InvalidParameterError(f"{{crop}} must be between 1 and the training size {min(self.size)} pixels, "
                                        f"got {self.train_crop}", crop=Wording("train_crop", "--train-crop"))

    def describe(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def transform(self, channels: int) -> Transform:
        """PIL image → augmented float [channels, H, W] in [0, 1]."""
        from timm.data import create_transform
        from torchvision.transforms import v2

        timm_transform = create_transform(
            input_size=self.size, is_training=True, no_aug=not self.enabled, scale=self.scale, ratio=self.ratio,
            hflip=self.hflip, color_jitter=self.color_jitter if self.color_jitter > 0 else None,
            auto_augment=self.auto_augment, interpolation=self.interpolation, normalize=False,
        )
        crop = v2.RandomCrop(self.train_crop) if self.train_crop is not None else None
        mode = "L" if channels == 1 else "RGB"

        def augment(image: Image.Image) -> torch.Tensor:
            pixels = timm_transform(image.convert(mode))
            return crop(pixels) if crop is not None else pixels

        return augment


def labelled_folder(root: str | os.PathLike, suffixes: Sequence[str], kind: str) -> LabelledFiles:
    """The files of a class-folder tree (``root/<class>/...``), every one labelled; our error otherwise."""
    root = Path(root)
    if root.is_file():
        raise InvalidParameterError(f"{root} is a file: training data is a folder with one sub-folder per class")
    files = collect_files([root], tuple(suffixes), kind=kind)
    unlabelled = [path for path, label in files.files if label == UNKNOWN_LABEL]
    if files.class_to_idx is None or unlabelled:
        where = f" ({unlabelled[0]} lies in {root} itself)" if unlabelled else ""
        raise InvalidParameterError(
            f"{root} has no class folders{where}: training needs one sub-folder per class, {root}/<class>/<file>, "
            "as torchvision's ImageFolder reads it")
    return files


def fingerprint(entries: Sequence[tuple[str, int]]) -> str:
    """SHA-256 over (name, label) pairs: a training record's identity of its data, whatever folder it lies in."""
    digest = hashlib.sha256()
    for name, label in entries:
        digest.update(f"{name}\t{label}\n".encode())
    return digest.hexdigest()


class FolderData(Dataset):
    """(file, label) items of a class-folder tree, with what a training record keeps of them."""

    kind = "files"

    def __init__(self, root: str | os.PathLike, suffixes: Sequence[str], what: str) -> None:
        self.root = Path(root)
        files = labelled_folder(self.root, suffixes, what)
        self.items: list[tuple[Path, int]] = files.files
        self.class_to_idx: dict[str, int] = files.class_to_idx  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> FolderData:
        """The same data set restricted to the items at ``indices`` (in that order)."""
        part = copy.copy(self)
        part.items = [self.items[index] for index in indices]
        return part

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    @property
    def sources(self) -> list[str]:
        return [str(path) for path, _ in self.items]

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the kind, folder (environment), count, classes and a fingerprint of (relative path, label)."""
        relative = [(str(path.relative_to(self.root)), label) for path, label in self.items]
        return {"kind": self.kind, "root": str(self.root), "items": len(self.items), "class_to_idx": self.class_to_idx,
                "fingerprint": fingerprint(relative)}


class ImageFolderData(FolderData):
    """An ImageFolder tree of images → (augmented [C, H, W] in [0, 1], class)."""

    kind = "image-folder"

    def __init__(self, root: str | os.PathLike, transform: Transform) -> None:
        super().__init__(root, IMAGE_SUFFIXES, "image")
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(open_image_file(path, "training image")), label


class ClipFolderData(FolderData):
    """A class-folder tree of videos → (clip [T, C, H, W] in [0, 1] as ``reading`` reads it, class)."""

    kind = "clip-folder"

    def __init__(self, root: str | os.PathLike, reading: ClipReading) -> None:
        super().__init__(root, VIDEO_SUFFIXES, "video")
        self.reading = reading

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        clip, _ = self.reading.read(path)
        return to_unit_float(clip, f"clip {path}"), label

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reading": self.reading.describe()}


class SegmentationFolderData(Dataset):
    """Images of a folder (recursive) with label maps ``masks/<image stem>.png`` → ([C, H, W] in [0, 1], [H, W])."""

    kind = "segmentation-folder"

    def __init__(self, images: str | os.PathLike, masks: str | os.PathLike, channels: int = 3) -> None:
        self.root, self.masks = Path(images), Path(masks)
        if not self.masks.is_dir():
            raise InvalidParameterError(f"masks folder not found: {self.masks}")
        self.files = [path for path, _ in collect_files([self.root], IMAGE_SUFFIXES, kind="image").files]
        missing = [path for path in self.files if not (self.masks / f"{path.stem}.png").is_file()]
        if missing:
            raise InvalidImageError(f"no label map for {missing[0]}: expected {self.masks / (missing[0].stem + '.png')}")
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> SegmentationFolderData:
        """The same data set restricted to the images at ``indices`` (in that order)."""
        part = copy.copy(self)
        part.files = [self.files[index] for index in indices]
        return part

    def label_map(self, index: int) -> np.ndarray:
        """The label map of image ``index``, int64 [H, W]."""
        return read_label_map(self.masks / f"{self.files[index].stem}.png")

    @property
    def sources(self) -> list[str]:
        return [str(path) for path in self.files]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        image = open_image_file(path, "training image")
        pixels = torch.from_numpy(np.asarray(image.convert(self.mode), dtype=np.uint8).copy())
        pixels = (pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)).float() / 255.0
        mask = torch.from_numpy(self.label_map(index))
        if tuple(mask.shape) != tuple(pixels.shape[-2:]):
            raise InvalidImageError(f"label map {self.masks / (path.stem + '.png')} is {tuple(mask.shape)}, its image "
                                    f"{path} is {tuple(pixels.shape[-2:])}: they must be the same size")
        return pixels, mask

    def check_labels(self, num_classes: int) -> None:
        """Refuse a label map with a class outside [0, num_classes) (255 = not scored), naming its file."""
        for path in self.files:
            mask_path = self.masks / f"{path.stem}.png"
            values = set(read_label_map(mask_path).flatten().tolist()) - {IGNORE_INDEX}
            bad = [value for value in values if not 0 <= value < num_classes]
            if bad:
                raise InvalidParameterError(f"label map {mask_path} has class {min(bad)}, outside the model's "
                                            f"{num_classes} classes (255 marks pixels not scored)")

    def describe(self) -> dict[str, Any]:
        names = [(str(path.relative_to(self.root)), 0) for path in self.files]
        return {"kind": self.kind, "root": str(self.root), "masks": str(self.masks), "items": len(self.files),
                "fingerprint": fingerprint(names)}


def held_out_split(count: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) of ``count`` items: ``held_out`` items (or that share of them) drawn by a
    permutation seeded with ``seed``, both lists sorted."""
    size = round(held_out * count) if isinstance(held_out, float) else int(held_out)
    if not 0 <= size < count:
        raise InvalidParameterError(f"cannot hold out {held_out} of {count} items: leave at least one to train on")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[size:]), sorted(order[:size])
