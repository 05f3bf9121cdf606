"""Sub-clips along time as views of a noisy clip (temporal Smooth-Reduce, Joshi et al. 2022).

The noise is added to the whole clip [T, C, H, W] at its own resolution; sub-clips are cut from the
noisy clip afterwards, and each frame then goes through the model's evaluation resize and crop. A cut
of isotropic Gaussian noise is isotropic Gaussian noise on the cut, which makes every per-view
certificate of the image method hold with views along time; c_max is the largest number of sub-clips
sharing one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from einops import rearrange

from vision_rs.errors import InvalidImageError, InvalidParameterError
from vision_rs.sampling.patches import grid_starts
from vision_rs.sampling.preprocess import EvalTransform
from vision_rs.wording import plural


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be a whole number of frames >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class SubClips:
    """Sub-clips of ``length`` frames every ``stride`` frames (default: ``length``, no overlap), the last one
    flush with the end of the clip, so every frame is covered."""

    length: int
    stride: int | None = None
    kind = "subclips"

    def __post_init__(self) -> None:
        _positive(self.length, "sub-clip length")
        stride = self.length if self.stride is None else _positive(self.stride, "sub-clip stride")
        if stride > self.length:
            raise InvalidParameterError(
                f"sub-clip stride {stride} is larger than the length {self.length}: frames between sub-clips would be "
                "left out; use stride <= length"
            )
        object.__setattr__(self, "stride", stride)

    def describe(self) -> dict[str, object]:
        """JSON-ready settings, recorded with every certificate."""
        return {"length": self.length, "stride": self.stride}

    def view_for(self, shape: tuple[int, ...], transform: EvalTransform | None, generator: torch.Generator) -> SubClipView:
        """The sub-clip view of a clip of ``shape`` [T, C, H, W]; ``transform`` is the model's per-frame resize and crop."""
        if len(shape) != 4:
            raise InvalidImageError(f"sub-clips need a clip [T, C, H, W], got an input of shape {tuple(shape)}")
        frames = shape[0]
        if self.length > frames:
            raise InvalidImageError(f"sub-clips of {plural(self.length, 'frame')} do not fit a clip of {plural(frames, 'frame')}")
        starts = tuple(grid_starts(frames, self.length, self.stride))  # type: ignore[arg-type]
        return SubClipView(starts, self.length, frames, (shape[-2], shape[-1]), transform)


@dataclass(frozen=True)
class SubClipView:
    """k = ``len(starts)`` sub-clips of ``length`` frames of each noisy clip [B, T, C, H, W] → [(B·k), length, C, h, w]."""

    starts: tuple[int, ...]
    length: int
    frames: int
    frame_size: tuple[int, int]
    transform: EvalTransform | None = None

    @property
    def count(self) -> int:
        return len(self.starts)

    @cached_property
    def coverage(self) -> torch.Tensor:
        """How many sub-clips contain each frame, int64 [T]."""
        cover = torch.zeros(self.frames, dtype=torch.int64)
        for start in self.starts:
            cover[start : start + self.length] += 1
        return cover

    @property
    def c_max(self) -> int:
        """The most sub-clips sharing one frame (every pixel of a frame is covered as often as the frame)."""
        return int(self.coverage.max())

    @property
    def uncovered(self) -> int:
        """Pixels (frames × H × W) no sub-clip covers."""
        return int((self.coverage == 0).sum()) * self.frame_size[0] * self.frame_size[1]

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        cuts = torch.stack([noisy[:, start : start + self.length] for start in self.starts], dim=1)
        clips = rearrange(cuts, "b k t c h w -> (b k) t c h w")
        return clips if self.transform is None else self.transform(clips)
