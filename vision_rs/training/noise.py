"""The certification noise, added where certification adds it, for training.

A smoothed model (``vision_rs.smooth``, ``vision_rs.video.smooth``, ``vision_rs.segmentation.smooth``) is a base
model behind a noise and a view. :class:`NoisyBaseClassifier` runs exactly that pipeline on a batch of training
inputs, with gradients: the smoothed model's own :class:`~vision_rs.sampling.noise.Noise` perturbs the [0, 1]
pixels at the inputs' own resolution, then its view (a denoiser when there is one, the model's evaluation resize
and crop) and its base classifier (the normalisation as first layer, then the network) follow. The network
trained through it is, weight for weight, the base classifier that ``smooth`` certifies: same noise law, same
place, no clipping (docs/theory.md, "Training with the certification noise").

:class:`NoisyDenoiser` does the same for a denoiser trained on its own (mean squared error): the smoothing noise
on [0, 1] pixels, then the denoiser, as :class:`~vision_rs.models.denoising.DenoisedView` runs it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InvalidParameterError
from ..models.adapters import NormalizedClassifier
from ..sampling.noise import GaussianNoise, Noise, SigmaMapNoise
from ..sampling.views import View
from ..segmentation.localized import cell_map
from ..segmentation.models import SegmentationModel
from ..segmentation.results import IGNORE_INDEX
from ..segmentation.smoothing import SmoothedSegmenter
from ..smoothing import SmoothedClassifier
from ..video.models import ClipLayout, FramesAsImages
from ..wording import Wording

Smoothed = SmoothedClassifier | SmoothedSegmenter

_WRAPPERS = (NormalizedClassifier, SegmentationModel, ClipLayout, FramesAsImages)


def network_of(smoothed: Smoothed) -> nn.Module:
    """The user's network inside a smoothed model's base classifier (under normalisation and layout adapters):
    what training updates, and what a checkpoint holds."""
    module: nn.Module = smoothed.base
    while isinstance(module, _WRAPPERS):
        module = module.model
    return module


NO_NOISE = {"method": "none", "sigma": 0.0, "details": {}}
"""The training record's noise of a model trained without noise."""


def noise_description(smoothed: Smoothed) -> dict[str, Any]:
    """The noise of a smoothed model, JSON-ready (``method``, ``sigma``, ``details``): what a training record keeps."""
    return {"method": smoothed.method, "sigma": smoothed.sigma, "details": dict(smoothed.details)}


def _check_trainable(smoothed: object) -> None:
    if not isinstance(smoothed, (SmoothedClassifier, SmoothedSegmenter)):
        raise InvalidParameterError(
            "train through a smoothed model: vision_rs.smooth(model, sigma, ...), vision_rs.video.smooth(...) or "
            f"vision_rs.segmentation.smooth(...), got {type(smoothed).__name__}")
    if isinstance(smoothed, SmoothedClassifier) and smoothed.method == "smooth-reduce":
        raise InvalidParameterError(
            "train a base model through Gaussian or hierarchical smoothing of the whole input; a Smooth-Reduce patch "
            "model is trained as Joshi et al. train it: Gaussian noise on random crops of the patch size{crop}",
            crop=Wording(" (train_crop=SIZE)", " (--train-crop SIZE)"))


class NoisyBaseClassifier(nn.Module):
    """A smoothed model's base classifier under its own smoothing noise, with gradients (for training).

    ``forward(pixels, copies)`` takes a batch of inputs in [0, 1] at their own resolution (images [B, C, H, W],
    clips [B, T, C, H, W]) and returns the outputs of ``copies`` independent noisy draws of each,
    ``[copies, B, ...]`` (logits [copies, B, K], segmentation scores [copies, B, K, H, W]). The noise comes from
    :attr:`generator` (on the model's device; :meth:`reseed` fixes it). Localized segmentation smoothing draws,
    for each input, one output cell k and the σ map of k (the law certification samples for cell k), the same
    cell for all copies of the input; ``cells`` chooses them, :meth:`draw_cells` draws them.

    ``frozen_base=True`` keeps the base classifier in eval mode without gradients for its weights (the denoiser
    in front of it is what trains: Salman et al.'s stability objective). ``noise_free=True`` feeds the clean inputs
    through the same view and base classifier: the baseline of a model trained without noise (the "off-the-shelf"
    classifier of denoised smoothing).
    """

    def __init__(self, smoothed: Smoothed, *, seed: int = 0, frozen_base: bool = False, noise_free: bool = False) -> None:
        super().__init__()
        _check_trainable(smoothed)
        if noise_free and (getattr(getattr(smoothed, "noise", None), "extra_channels", 0) or isinstance(
                smoothed, SmoothedSegmenter) and smoothed.localized is not None):
            raise InvalidParameterError("noise_free trains without noise: use it with Gaussian (isotropic) smoothing, "
                                        "whose inputs need no noise channel")
        self.noise_free = noise_free
        self.smoothed = smoothed
        self.base = smoothed.base
        self.denoiser = smoothed.denoiser.module if smoothed.denoiser is not None else None
        self.frozen_base = frozen_base
        if frozen_base:
            self.base.requires_grad_(False)
        self.generator = torch.Generator(device=smoothed.device)
        self.reseed(seed)
        self._views: dict[tuple[int, ...], View] = {}
        self._cell_maps: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def localized(self) -> bool:
        """Whether each input gets the σ map of one output cell (localized segmentation smoothing)."""
        return isinstance(self.smoothed, SmoothedSegmenter) and self.smoothed.localized is not None

    @property
    def segmentation(self) -> bool:
        """Whether the outputs are per-pixel class scores (a smoothed segmenter)."""
        return isinstance(self.smoothed, SmoothedSegmenter)

    @property
    def cells(self) -> int:
        """Output cells of localized smoothing (1 otherwise)."""
        return self.smoothed.localized.cells if self.localized else 1  # type: ignore[union-attr]

    def reseed(self, seed: int) -> None:
        """Restart the noise stream at ``seed`` (the trainer reseeds per epoch and rank, so a resumed run draws the
        noise an uninterrupted one draws)."""
        self.generator.manual_seed(int(seed))

    def train(self, mode: bool = True) -> NoisyBaseClassifier:
        super().train(mode)
        if self.frozen_base:
            self.base.eval()
        return self

    def draw_cells(self, batch: int) -> torch.Tensor | None:
        """One output cell per input (uniform over the grid) for localized smoothing; None otherwise."""
        if not self.localized:
            return None
        return torch.randint(0, self.cells, (batch,), generator=self.generator, device=self.generator.device)

    def view(self, shape: tuple[int, ...]) -> View:
        """The smoothed model's view of one input of ``shape`` (made once per shape)."""
        if shape not in self._views:
            self._views[shape] = self.smoothed.view_for(shape, self.generator)
        return self._views[shape]

    def _localized_maps(self, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ maps [cells, H, W], cell id of every pixel [H, W]) of an H×W image, cached per size."""
        if (height, width) not in self._cell_maps:
            regions = self.smoothed.regions(height, width)  # type: ignore[union-attr]
            maps = torch.stack([noise.sigma_map for _, noise in regions])  # type: ignore[attr-defined]
            cells = torch.from_numpy(cell_map(self.smoothed.localized, height, width))  # type: ignore[union-attr, arg-type]
            self._cell_maps[(height, width)] = (maps, cells.to(maps.device))
        maps, cells = self._cell_maps[(height, width)]
        return maps.to(dtype), cells

    def noise_for(self, pixels: torch.Tensor, cells: torch.Tensor | None, copies: int) -> Noise:
        """The smoothing noise of a batch: the smoothed model's own, or one σ map per input (localized)."""
        if isinstance(self.smoothed, SmoothedClassifier):
            return self.smoothed.noise
        if not self.localized:
            return GaussianNoise(self.smoothed.sigma)
        if cells is None:
            raise InvalidParameterError("localized smoothing trains each input on the σ map of one output cell: pass "
                                        "cells=noisy.draw_cells(batch)")
        maps, _ = self._localized_maps(*pixels.shape[-2:], pixels.dtype)
        return SigmaMapNoise(maps[cells.to(maps.device)].repeat(copies, 1, 1)[:, None])

    def cell_targets(self, targets: torch.Tensor, cells: torch.Tensor | None) -> torch.Tensor:
        """Segmentation targets [B, H, W] with every pixel outside each input's cell set to :data:`IGNORE_INDEX`
        (the only pixels certification keeps from that cell's draws); unchanged when ``cells`` is None."""
        if cells is None:
            return targets
        _, cell_of = self._localized_maps(*targets.shape[-2:], torch.float32)
        inside = cell_of.to(targets.device)[None] == cells.to(targets.device)[:, None, None]
        return torch.where(inside, targets, torch.full_like(targets, IGNORE_INDEX))

    def forward(self, pixels: torch.Tensor, copies: int = 1, cells: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise InvalidParameterError(f"copies must be an integer >= 1, got {copies!r}")
        if self.localized and cells is None:
            cells = self.draw_cells(pixels.shape[0])
        repeated = pixels.repeat(copies, *([1] * (pixels.ndim - 1)))  # copy-major: [(copies B), ...]
        if self.noise_free:
            noisy = repeated
        else:
            noise = self.noise_for(pixels, cells, copies)
            shape = (repeated.shape[0], *pixels.shape[1:-3], pixels.shape[-3] + noise.extra_channels, *pixels.shape[-2:])
            noisy = noise.perturb_(torch.empty(shape, device=pixels.device, dtype=pixels.dtype), repeated, self.generator)
        outputs = self.base(self.view(tuple(pixels.shape[1:]))(noisy))
        return outputs.reshape(copies, pixels.shape[0], *outputs.shape[1:])

    @torch.no_grad()
    def clean_predictions(self, pixels: torch.Tensor) -> torch.Tensor:
        """The base classifier's classes on the clean inputs (no noise, no denoiser): the targets of stability
        training."""
        was_training = self.base.training
        self.base.eval()
        try:
            transform = self.smoothed.spec.transform if isinstance(self.smoothed, SmoothedClassifier) else None
            return self.base(pixels if transform is None else transform(pixels)).argmax(dim=1)
        finally:
            self.base.train(was_training and not self.frozen_base)


class NoisyDenoiser(nn.Module):
    """A denoiser under the smoothing noise: ``forward(pixels, copies)`` → denoised draws ``[copies, B, C, H, W]``.

    The noise is :class:`~vision_rs.sampling.noise.GaussianNoise` (σ in [0, 1] pixel units) on the clean [0, 1]
    pixels at their own resolution, as certification draws it in front of the denoiser.
    """

    def __init__(self, denoiser: nn.Module, sigma: float, *, device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.noise = GaussianNoise(sigma)
        self.generator = torch.Generator(device=device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def forward(self, pixels: torch.Tensor, copies: int = 1) -> torch.Tensor:
        repeated = pixels.repeat(copies, *([1] * (pixels.ndim - 1)))
        noisy = self.noise.perturb_(torch.empty_like(repeated), repeated, self.generator)
        denoised = self.denoiser(noisy)
        return denoised.reshape(copies, *pixels.shape)
