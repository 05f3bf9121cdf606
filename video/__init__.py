"""vision_rs.video: certify video classifiers on the core engine.

>>> from vision_rs import video
>>> clip = video.read_clip("walk.mp4", frames=32, stride=2)        # float [T, C, H, W] in [0, 1]
>>> smoothed = video.smooth("torchvision:r3d_18", sigma=0.25, subclips=video.SubClips(16, 8))
>>> cert = smoothed.certify(clip, n0=100, n=1000, alpha=0.001)    # the same Certificate as images

The noise is added to the whole clip as passed in; radii are L2 over all its frames, pixels and channels.
"""

from __future__ import annotations

from .datasets import VIDEO_SUFFIXES, ClipReading, certify_video_dataset
from .io import Clip, available_backends, frame_indices, read_clip, read_clip_info
from .models import ClipLayout, FramesAsImages
from .smoothing import smooth
from .tensors import to_unit_clip
from .views import SubClips, SubClipView

__all__ = [
    "VIDEO_SUFFIXES",
    "Clip",
    "ClipLayout",
    "ClipReading",
    "FramesAsImages",
    "SubClipView",
    "SubClips",
    "available_backends",
    "certify_video_dataset",
    "frame_indices",
    "read_clip",
    "read_clip_info",
    "smooth",
    "to_unit_clip",
]
