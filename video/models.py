"""Video base classifiers: a clip model or an image model run on every frame, fed noisy [0, 1] clips [N, T, C, H, W].

Both are wrapped in :class:`~vision_rs.models.adapters.NormalizedClassifier`, which normalises the channels
(dim -3) after the noise; the adapters here only give the model the layout it reads:

* :class:`ClipLayout`: torchvision's video classifiers (r3d_18, mc3_18, r2plus1d_18, s3d, mvit, swin3d)
  and the embedded ``digits_c3d`` read [N, C, T, H, W]; with ``chunk`` frames the clip is split into
  chunks of the model's clip length (the last flush with the end) and their logits are averaged;
* :class:`FramesAsImages`: any image classifier on every frame, logits averaged over the frames
  (the TSN convention).

Everything here happens after the noise, so it is part of the base classifier.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vision_rs.errors import InvalidParameterError
from vision_rs.sampling.patches import grid_starts


def check_chunk(chunk: int | None) -> int | None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise InvalidParameterError(f"chunk must be the model's clip length in frames (>= 1) or None, got {chunk!r}")
    return chunk


class ClipLayout(nn.Module):
    """[N, T, C, H, W] → the model's [N, C, T, H, W]; with ``chunk``, logits averaged over chunks of that many frames."""

    def __init__(self, model: nn.Module, chunk: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk = check_chunk(chunk)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frames = clips.shape[1]
        if self.chunk is None or self.chunk >= frames:
            return self.model(rearrange(clips, "n t c h w -> n c t h w"))
        starts = grid_starts(frames, self.chunk, self.chunk)
        chunks = torch.stack([clips[:, start : start + self.chunk] for start in starts], dim=1)
        logits = self.model(rearrange(chunks, "n k t c h w -> (n k) c t h w"))
        return rearrange(logits, "(n k) classes -> n k classes", k=len(starts)).mean(dim=1)


class FramesAsImages(nn.Module):
    """An image classifier on every frame of [N, T, C, H, W], logits averaged over the T frames.

    ``channels_last``: hand the model its frames in that layout (the engine keeps clips contiguous).
    """

    def __init__(self, model: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frames = clips.shape[1]
        images = rearrange(clips, "n t c h w -> (n t) c h w")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return rearrange(self.model(images), "(n t) classes -> n t classes", t=frames).mean(dim=1)
