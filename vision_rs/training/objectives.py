"""What one batch of each kind of training computes: the noisy forward and the loss (see :class:`~.trainer.Objective`).

* :class:`ClassifierObjective`: a base classifier (image, clip or segmentation) under its smoothing noise, with
  Gaussian augmentation or consistency regularisation; localized segmentation smoothing scores either every pixel
  (``region="mask"``) or only the pixels of the output cell whose σ map each input was drawn with (``"cell"``).
* :class:`DenoiserObjective`: a denoiser on its own, mean squared error.
* :class:`StabilityObjective`: a denoiser in front of a frozen classifier, Salman et al.'s stability objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidParameterError
from ..segmentation.results import IGNORE_INDEX
from .losses import DenoiserMSE, LossTerms, NoiseLoss, Stability
from .noise import NO_NOISE, NoisyBaseClassifier, NoisyDenoiser, network_of, noise_description

REGIONS = ("mask", "cell")


def _check_class_indices(targets: torch.Tensor, num_classes: int | None, ignore: int | None) -> None:
    """Refuse a batch whose targets hold a class outside [0, num_classes) (``ignore`` excepted); CPU tensors only."""
    if num_classes is None or targets.numel() == 0 or targets.is_floating_point():
        return
    valid = targets if ignore is None else targets[targets != ignore]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        bad = int(valid.max()) if int(valid.max()) >= num_classes else int(valid.min())
        raise InvalidParameterError(f"a training target is {bad}, outside the model's {num_classes} classes "
                                    f"(0 to {num_classes - 1}): give the model as many classes as the data has")


class ClassifierObjective:
    """Train the network of a smoothed classifier or segmenter through :class:`NoisyBaseClassifier` with ``loss``."""

    def __init__(self, noisy: NoisyBaseClassifier, loss: NoiseLoss, *, region: str = "mask",
                 num_classes: int | None = None) -> None:
        if region not in REGIONS:
            raise InvalidParameterError(f"region must be one of {REGIONS}, got {region!r}")
        if region == "cell" and not noisy.localized:
            raise InvalidParameterError("region='cell' scores the pixels of one output cell of localized smoothing; "
                                        "other smoothing scores every pixel (region='mask')")
        self.noisy, self.loss, self.region, self.num_classes = noisy, loss, region, num_classes
        self.module: nn.Module = noisy
        self.network = network_of(noisy.smoothed)
        self.device = noisy.smoothed.device

    def describe(self) -> dict[str, Any]:
        noise = NO_NOISE if self.noisy.noise_free else noise_description(self.noisy.smoothed)
        return {"noise": noise, "loss": {**self.loss.describe(), **({"region": self.region} if self.noisy.localized else {})}}

    def reseed(self, seed: int) -> None:
        self.noisy.reseed(seed)

    def check_targets(self, targets: torch.Tensor) -> None:
        _check_class_indices(targets, self.num_classes, IGNORE_INDEX if self.noisy.segmentation else None)

    def loss_of(self, forward: Callable[..., torch.Tensor], pixels: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        cells = self.noisy.draw_cells(pixels.shape[0])
        outputs = forward(pixels, copies=self.loss.copies, cells=cells)
        if self.region == "cell":
            targets = self.noisy.cell_targets(targets, cells)
        return self.loss(outputs, targets)


class DenoiserObjective:
    """Train a denoiser on its own: mean squared error of its output on noisy draws against the clean image."""

    def __init__(self, noisy: NoisyDenoiser, loss: DenoiserMSE, device: torch.device) -> None:
        self.noisy, self.loss = noisy, loss
        self.module: nn.Module = noisy
        self.network = noisy.denoiser
        self.device = torch.device(device)

    def describe(self) -> dict[str, Any]:
        return {"noise": {"method": "gaussian", "sigma": self.noisy.noise.sigma, "details": {}}, "loss": self.loss.describe()}

    def reseed(self, seed: int) -> None:
        self.noisy.reseed(seed)

    def check_targets(self, targets: torch.Tensor) -> None:
        """Denoisers need no labels: the clean image is the target."""

    def loss_of(self, forward: Callable[..., torch.Tensor], pixels: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        return self.loss(forward(pixels, copies=self.loss.copies), pixels)


class StabilityObjective:
    """Train the denoiser in front of a frozen classifier: the classifier's class on the clean image is the target."""

    def __init__(self, noisy: NoisyBaseClassifier, loss: Stability) -> None:
        if noisy.denoiser is None or not noisy.frozen_base:
            raise InvalidParameterError("stability training needs a smoothed classifier with a denoiser and a frozen base "
                                        "(NoisyBaseClassifier(smooth(classifier, sigma, denoiser=module), frozen_base=True))")
        self.noisy, self.loss = noisy, loss
        self.module: nn.Module = noisy
        self.network = noisy.denoiser
        self.device = noisy.smoothed.device

    def describe(self) -> dict[str, Any]:
        return {"noise": noise_description(self.noisy.smoothed), "loss": self.loss.describe(),
                "classifier": self.noisy.smoothed.source.to_dict()}

    def reseed(self, seed: int) -> None:
        self.noisy.reseed(seed)

    def check_targets(self, targets: torch.Tensor) -> None:
        """The targets come from the frozen classifier, not from the data."""

    def loss_of(self, forward: Callable[..., torch.Tensor], pixels: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        return self.loss(forward(pixels, copies=self.loss.copies), self.noisy.clean_predictions(pixels))
