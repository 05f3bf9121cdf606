"""A model's evaluation-time resize and crop, applied to noisy tensors (part of the base classifier).

timm's ``create_transform`` and torchvision's weight presets prepare a PIL image for a pretrained
model: resize (keeping the aspect ratio, squashing, or fitting with a border), then a centre crop to
the input size. vision-rs adds the noise to the image as passed in and applies the same steps to the
noisy float batch afterwards, with torchvision's tensor resize (antialiased like PIL). Being after
the noise, they are part of the base classifier and leave every certificate unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ..errors import InvalidParameterError
from ..wording import Wording

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "nearest-exact": InterpolationMode.NEAREST_EXACT,
}
"""Interpolations a tensor resize supports (PIL's lanczos, box and hamming have no tensor kernel)."""

CROP_MODES = ("center", "squash", "border")
"""timm's crop modes: keep the aspect ratio and crop the centre; squash to the scale size; fit the longest side and pad."""


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise InvalidParameterError(f"{name} must be a positive integer or a pair (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def timm_scale_size(size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """timm's resize target before the crop: floor(size / crop_pct) per side."""
    if not (isinstance(crop_pct, (int, float)) and math.isfinite(crop_pct) and crop_pct > 0):
        raise InvalidParameterError(f"{{crop}} must be a number > 0 (e.g. 0.875; 1.0 = no border cropped), got {crop_pct!r}",
                                    crop=Wording("crop_pct", "--crop-pct"))
    return math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct)


@dataclass(frozen=True)
class EvalTransform:
    """Resize a float batch [..., H, W] to ``scale`` as ``mode`` says, then centre-crop it to ``size``.

    ``mode``: ``"center"`` scales the image so that it covers ``scale`` keeping its aspect ratio
    (the shorter side to ``scale`` when ``scale`` is square: torchvision's ``Resize(int)``);
    ``"squash"`` resizes to exactly ``scale``; ``"border"`` fits the longest side into ``scale`` and
    pads with ``fill`` ([0, 1] pixel values per channel, 0 beyond them). ``size=None`` resizes only
    (segmentation presets). A batch that is already ``size`` after the resize step is not resampled.
    """

    size: tuple[int, int] | None
    scale: tuple[int, int]
    mode: str = "center"
    interpolation: str = "bilinear"
    fill: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", _pair(self.size, "input size"))
        object.__setattr__(self, "scale", _pair(self.scale, "resize size"))
        if self.mode not in CROP_MODES:
            raise InvalidParameterError(f"crop mode must be one of {CROP_MODES}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidParameterError(
                f"interpolation {self.interpolation!r} has no tensor resize; use one of {sorted(INTERPOLATIONS)}"
            )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after the resize step, computed as torchvision / timm compute it for a PIL image."""
        target_h, target_w = self.scale
        if self.mode == "squash":
            return target_h, target_w
        if self.mode == "center" and target_h == target_w:  # torchvision Resize(int): shorter side to the target
            short, long = (height, width) if height <= width else (width, height)
            new_short, new_long = target_h, int(target_h * long / short)
            return (new_short, new_long) if height <= width else (new_long, new_short)
        ratio_h, ratio_w = height / target_h, width / target_w  # timm ResizeKeepRatio
        ratio = max(ratio_h, ratio_w) if self.mode == "border" else min(ratio_h, ratio_w)
        return round(height / ratio), round(width / ratio)

    def is_identity(self, height: int, width: int) -> bool:
        """True when an image of ``height`` × ``width`` passes unchanged (already the model's input)."""
        return self.resized_size(height, width) == (height, width) and self.size in (None, (height, width))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the model input made from an image of ``height`` × ``width``."""
        return self.size if self.size is not None else self.resized_size(height, width)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[-2:]
        if self.is_identity(height, width):
            return batch
        resized = self.resized_size(height, width)
        if resized != (height, width):
            batch = TF.resize(batch, list(resized), interpolation=INTERPOLATIONS[self.interpolation], antialias=True)
        if self.size is None or tuple(batch.shape[-2:]) == self.size:
            return batch
        if self.mode == "border":
            batch = self._pad_to_size(batch)
        return TF.center_crop(batch, list(self.size))

    def _pad_to_size(self, batch: torch.Tensor) -> torch.Tensor:
        """timm's CenterCropOrPad padding: centre the batch on a canvas of at least ``size`` filled per channel."""
        height, width = batch.shape[-2:]
        target_h, target_w = self.size  # type: ignore[misc]
        pad_h, pad_w = max(target_h - height, 0), max(target_w - width, 0)
        if not pad_h and not pad_w:
            return batch
        channels = batch.shape[-3]
        fill = torch.tensor([*self.fill, *[0.0] * channels][:channels], dtype=batch.dtype, device=batch.device)
        canvas = fill.view(-1, 1, 1).expand(*batch.shape[:-2], height + pad_h, width + pad_w).clone()
        top, left = pad_h // 2, pad_w // 2
        canvas[..., top : top + height, left : left + width] = batch
        return canvas
