"""``vision_rs.video.smooth``: a video classifier (or an image classifier run on every frame) smoothed with
Gaussian noise on the whole clip, optionally reduced over sub-clips along time — on the same engine,
methods and certificates as images."""

from __future__ import annotations

from torch import nn
from typing_extensions import Unpack

from vision_rs.errors import InvalidParameterError
from vision_rs.models.adapters import NormalizedClassifier
from vision_rs.smoothing import ModelOptions, SmoothedClassifier, method_for, place, prepare_model
from vision_rs.wording import Wording

from .models import ClipLayout, FramesAsImages, check_chunk
from .tensors import to_unit_clip
from .views import SubClips


def smooth(
    model: nn.Module | str,
    sigma: float,
    *,
    subclips: SubClips | None = None,
    reduce: str = "mean",
    mode: str = "vote",
    framewise: bool = False,
    chunk: int | None = None,
    **options: Unpack[ModelOptions],
) -> SmoothedClassifier:
    """Wrap a video classifier for randomized smoothing of clips with noise std ``sigma`` ([0, 1] pixel units).

    The noise N(0, σ²) is added to every frame, pixel and channel of the clip as passed in ([T, C, H, W]);
    every radius is L2 over all of them. ``model``: a clip model reading [B, C, T, H, W] (torchvision's
    video classifiers, e.g. ``"torchvision:r3d_18"``, or ``"digits_c3d.sigma_0.25"``), or with
    ``framewise=True`` an image classifier run on every frame, logits averaged over frames.
    ``subclips=SubClips(length, stride)`` with ``reduce`` and ``mode`` is temporal Smooth-Reduce (the
    image method's four sound modes, views along time); ``chunk`` splits each (sub-)clip into chunks of
    the model's clip length whose logits are averaged. Mean, std, resize and crop come from the
    weights' ``VideoClassification`` preset or the model's ``pretrained_cfg`` and are applied per frame
    after the noise. ``denoiser=`` (an image denoiser; see :class:`vision_rs.smoothing.ModelOptions`) runs on
    every noisy frame before the sub-clips, resize and normalisation. ``options``: see
    :class:`vision_rs.smoothing.ModelOptions`. ``certify`` and
    ``predict`` take a clip tensor [T, C, H, W] (uint8 or float in [0, 1]), a numpy [T, H, W, C] or a
    video file (all of its frames; use :func:`vision_rs.video.read_clip` to choose them).
    """
    if framewise and chunk is not None:
        raise InvalidParameterError("{chunk} splits clips for a clip model; a frame-wise model ({framewise}) sees one frame "
                                    "at a time", chunk=Wording("chunk", "--chunk"),
                                    framewise=Wording("framewise=True", "--framewise"))
    check_chunk(chunk)
    smoothing = method_for(None, subclips, reduce, mode)
    noise = smoothing.make_noise(sigma)
    task = "image-classification" if framewise else "video-classification"
    prepared = prepare_model(model, noise, options, task=task)
    layout = FramesAsImages(prepared.model, prepared.config.channels_last) if framewise else ClipLayout(prepared.model, chunk)
    base, device = place(NormalizedClassifier(layout, prepared.spec), prepared)
    return SmoothedClassifier(base, smoothing, noise, device, prepared.config, num_classes=prepared.num_classes,
                              source=prepared.source, inputs=to_unit_clip, denoiser=prepared.denoiser)
