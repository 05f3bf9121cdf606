"""Segmentation base model: any network mapping images to per-pixel class scores, fed noisy [0, 1] images.

``SegmentationModel`` turns the noisy image [N, C, H, W] into the model's input — its preset's resize
(torchvision's segmentation presets resize the shorter side; a model with a fixed input size is resized
to it; never cropped: every pixel of the image needs a prediction), grey → RGB, the normalisation —
runs the model, unwraps torchvision's ``{"out": ...}`` dict, and resizes the scores back to H × W
(bilinear on the logits). All of it happens after the noise, so it is part of the base classifier.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vision_rs.errors import ModelOutputError
from vision_rs.models.adapters import InputSpec, NormalizedClassifier
from vision_rs.sampling.preprocess import EvalTransform


def segmentation_resize(spec: InputSpec) -> EvalTransform | None:
    """The resize a segmentation model's inputs get: to its fixed input size, or its preset's shorter-side size."""
    if spec.input_size is not None:
        return EvalTransform(None, (spec.input_size[1], spec.input_size[2]), mode="squash", interpolation=spec.interpolation)
    if spec.resize_size is not None:
        return EvalTransform(None, spec.resize_size, mode="center", interpolation=spec.interpolation)
    return None


class SegmentationModel(nn.Module):
    """[N, C, H, W] noisy images in [0, 1] → class scores [N, K, H, W] at the images' own resolution."""

    def __init__(self, model: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.normalized = NormalizedClassifier(model, spec)
        self.resize = segmentation_resize(spec)

    @property
    def model(self) -> nn.Module:
        return self.normalized.model

    @property
    def spec(self) -> InputSpec:
        return self.normalized.spec

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        scores = self.normalized(pixels if self.resize is None else self.resize(pixels))
        if isinstance(scores, Mapping):
            if "out" not in scores:
                raise ModelOutputError(f"the segmentation model returned a dict without 'out' (keys: {sorted(scores)})")
            scores = scores["out"]
        if isinstance(scores, torch.Tensor) and scores.ndim == 4 and tuple(scores.shape[-2:]) != (height, width):
            scores = F.interpolate(scores.float(), size=(height, width), mode="bilinear", align_corners=False)
        return scores
