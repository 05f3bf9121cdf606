"""Clips as float tensors [T, C, H, W] in [0, 1], with the same explicit conversions as images."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from vision_rs.errors import InvalidVideoError
from vision_rs.images import MAX_CHANNELS, fit_channels, to_unit_float

ClipInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]


def _as_tchw(clip: np.ndarray | torch.Tensor) -> torch.Tensor:
    """numpy [T, H, W, C] (decord / OpenCV layout) or torch [T, C, H, W] → torch [T, C, H, W]."""
    if isinstance(clip, np.ndarray):
        if clip.ndim != 4 or clip.shape[-1] > MAX_CHANNELS:
            raise InvalidVideoError(f"a numpy clip must be [T, H, W, C] with 1 to {MAX_CHANNELS} channels, got {clip.shape}")
        return torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
    if clip.ndim != 4:
        hint = " (a batch? pass one clip at a time)" if clip.ndim == 5 else " (an image? use vision_rs.smooth)" if clip.ndim == 3 else ""
        raise InvalidVideoError(f"a clip tensor must be [T, C, H, W], got shape {tuple(clip.shape)}{hint}")
    if clip.shape[1] > MAX_CHANNELS:
        hint = "; it looks like [T, H, W, C]: pass clip.permute(0, 3, 1, 2)" if clip.shape[-1] <= MAX_CHANNELS else ""
        raise InvalidVideoError(f"a clip tensor must be [T, C, H, W] with 1 to {MAX_CHANNELS} channels, got {tuple(clip.shape)}{hint}")
    return clip.detach().cpu()


def to_unit_clip(clip: ClipInput, channels: int | None = None) -> torch.Tensor:
    """A clip as float32 [T, C, H, W] in [0, 1] on the CPU, in its own channels.

    Accepts a video file (every frame, read with :func:`vision_rs.video.read_clip`), a torch tensor
    [T, C, H, W] or a numpy array [T, H, W, C], uint8 (divided by 255) or float in [0, 1]. With
    ``channels`` (the colour channels the model reads) a clip that cannot be fed to that model is
    refused; a grey clip stays grey (repeated inside the base classifier, after the noise).
    """
    if isinstance(clip, (str, os.PathLike)):
        from .io import read_clip

        clip = read_clip(clip)
    elif not isinstance(clip, (np.ndarray, torch.Tensor)):
        raise InvalidVideoError(f"cannot read a clip from {type(clip).__name__}; pass a path, a tensor or a numpy array")
    tchw = _as_tchw(clip)
    if min(tchw.shape) < 1:
        raise InvalidVideoError(f"clip has an empty dimension: shape {tuple(tchw.shape)}")
    if tchw.dtype != torch.uint8 and not tchw.is_floating_point():
        raise InvalidVideoError(f"clip dtype {tchw.dtype} is not supported: use uint8 (0..255) or float in [0, 1]")
    unit = to_unit_float(tchw, what="clip", error=InvalidVideoError)
    return unit if channels is None else fit_channels(unit, channels)
