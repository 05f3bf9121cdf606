"""Training with the certification noise: base models (and denoisers) worth certifying.

A smoothed classifier is only as good as its base model under noise. This wing trains the network inside a
smoothed model with exactly the noise it is certified with, at exactly the place certification adds it:

>>> import timm, vision_rs
>>> from vision_rs.training import Consistency, TrainConfig, train
>>> smoothed = vision_rs.smooth(timm.create_model("resnet18", num_classes=10), sigma=0.25)
>>> train(smoothed, data, "runs/resnet18", loss=Consistency(), config=TrainConfig(epochs=30))  # data: [0,1] pixels
>>> vision_rs.smooth("runs/resnet18/model.safetensors", sigma=0.25).certify(image)             # no arch= needed

Building blocks for any training loop (timm's ``train.py``, Lightning, your own):
:class:`NoisyBaseClassifier` (the smoothed model's base classifier under its own noise, with gradients),
the losses :class:`GaussianAugmentation`, :class:`Consistency`, :class:`DenoiserMSE`, :class:`Stability`.
The loop itself (:class:`Trainer`): timm's optimiser and schedule, AMP, torchrun, atomic checkpoints with a
record, exact resume. ``vision-rs train`` and ``vision-rs train-denoiser`` are the command line.
"""

from __future__ import annotations

from .data import Augmentation, ClipFolderData, ImageFolderData, SegmentationFolderData, held_out_split
from .losses import Consistency, DenoiserMSE, GaussianAugmentation, LossTerms, Stability, make_loss
from .noise import NoisyBaseClassifier, NoisyDenoiser, network_of
from .objectives import ClassifierObjective, DenoiserObjective, StabilityObjective
from .recipes import certify_held_out, smooth_checkpoint, train, train_denoiser
from .trainer import TrainConfig, Trainer, TrainResult

__all__ = [
    "Augmentation",
    "ClassifierObjective",
    "ClipFolderData",
    "Consistency",
    "DenoiserMSE",
    "DenoiserObjective",
    "GaussianAugmentation",
    "ImageFolderData",
    "LossTerms",
    "NoisyBaseClassifier",
    "NoisyDenoiser",
    "SegmentationFolderData",
    "Stability",
    "StabilityObjective",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "certify_held_out",
    "held_out_split",
    "make_loss",
    "network_of",
    "smooth_checkpoint",
    "train",
    "train_denoiser",
]
