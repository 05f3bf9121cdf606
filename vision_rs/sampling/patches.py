"""Overlapping patches as views of the noisy image (Smooth-Reduce, Joshi et al. 2022).

The noise is added to the whole image at its own resolution; patches are cropped
from the noisy image afterwards and, when the model has a fixed input size, go
through the model's evaluation resize and crop like any image. A crop of isotropic Gaussian noise is isotropic
Gaussian noise on the crop, which is what makes every per-patch certificate a
Gaussian-smoothing certificate in image space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from einops import rearrange

from ..errors import InvalidImageError, InvalidParameterError
from ..wording import Wording
from .preprocess import EvalTransform


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    try:
        pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)  # type: ignore[arg-type]
    except TypeError:  # a float, None, ...: not iterable
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise InvalidParameterError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def grid_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets 0, stride, 2·stride, ... plus the last one flush with the edge, so the grid covers it."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class Patches:
    """Which patches the model sees: a regular grid (``size``, ``stride``) or ``count`` random positions.

    Sizes are in pixels of the image as passed in, ``(height, width)`` or one int.
    Random positions are drawn once per ``certify`` call from its seeded generator
    and reused for the selection and estimation phases. With ``resize=True`` each
    patch goes through the model's evaluation resize and crop, as a whole image would
    (needed for fixed-size models such as ViTs); ``resize=False`` feeds it at its own size.
    """

    size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    count: int | None = None
    resize: bool = True
    kind = "patches"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size, "patch size"))
        if (self.stride is None) == (self.count is None):
            raise InvalidParameterError("give patches either {stride} (a regular grid) or {count} (random positions)",
                                        stride=Wording("stride=", "--patch-stride"), count=Wording("count=", "--patch-count"))
        if self.stride is not None:
            stride = _pair(self.stride, "patch stride")
            if stride[0] > self.size[0] or stride[1] > self.size[1]:  # type: ignore[index]
                raise InvalidParameterError(
                    f"the patch stride {stride} is larger than the patch {self.size}: the gaps between patches would leave "
                    "pixels uncovered; use {stride} <= {size}", stride=Wording("stride", "--patch-stride"),
                    size=Wording("size", "--patch-size"))
            object.__setattr__(self, "stride", stride)
        elif isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise InvalidParameterError(f"patch count must be an integer >= 1, got {self.count!r}")

    def describe(self) -> dict[str, object]:
        """JSON-ready settings, recorded with every certificate."""
        return {"size": list(self.size), "stride": list(self.stride) if self.stride else None,  # type: ignore[arg-type]
                "count": self.count, "resize": self.resize}

    def view_for(
        self, shape: tuple[int, ...], transform: EvalTransform | None, generator: torch.Generator
    ) -> PatchView:
        """The patch view of an image of ``shape`` ([C, H, W], or just (H, W)); random positions come from
        ``generator``; ``transform`` is the model's evaluation resize and crop (None: the model takes any size)."""
        height, width = shape[-2:]
        patch_h, patch_w = self.size  # type: ignore[misc]
        if patch_h > height or patch_w > width:
            raise InvalidImageError(f"patch {patch_h}×{patch_w} is larger than the image {height}×{width}")
        if self.stride is not None:
            stride_h, stride_w = self.stride  # type: ignore[misc]
            positions = [(t, l) for t in grid_starts(height, patch_h, stride_h) for l in grid_starts(width, patch_w, stride_w)]
        else:
            device = generator.device
            tops = torch.randint(0, height - patch_h + 1, (self.count,), generator=generator, device=device)
            lefts = torch.randint(0, width - patch_w + 1, (self.count,), generator=generator, device=device)
            positions = list(zip(tops.tolist(), lefts.tolist()))
        return PatchView(tuple(positions), (patch_h, patch_w), (height, width), transform if self.resize else None)


@dataclass(frozen=True)
class PatchView:
    """k = ``len(positions)`` crops of size ``size`` from each noisy image, then ``transform`` (the model's resize)."""

    positions: tuple[tuple[int, int], ...]
    size: tuple[int, int]
    image_size: tuple[int, int]
    transform: EvalTransform | None = None

    @property
    def count(self) -> int:
        return len(self.positions)

    @cached_property
    def coverage(self) -> torch.Tensor:
        """How many patches cover each pixel, int64 [H, W]."""
        cover = torch.zeros(self.image_size, dtype=torch.int64)
        for top, left in self.positions:
            cover[top : top + self.size[0], left : left + self.size[1]] += 1
        return cover

    @property
    def c_max(self) -> int:
        """The largest number of patches covering one pixel."""
        return int(self.coverage.max())

    @property
    def uncovered(self) -> int:
        """Pixels no patch covers (they cannot influence the prediction)."""
        return int((self.coverage == 0).sum())

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        height, width = self.size
        if self.transform is None or self.transform.is_identity(height, width):
            crops = torch.stack([noisy[:, :, t : t + height, l : l + width] for t, l in self.positions], dim=1)
            return rearrange(crops, "b k c h w -> (b k) c h w")
        # crops stacked channels-last: the antialiased resize reads and writes that layout ~1.7x faster on the
        # CPU; the engine hands the model whichever layout it asked for
        pixels_last = noisy.permute(0, 2, 3, 1)
        crops = torch.stack([pixels_last[:, t : t + height, l : l + width] for t, l in self.positions], dim=1)
        return self.transform(rearrange(crops, "b k h w c -> (b k) c h w"))  # type: ignore[misc]
