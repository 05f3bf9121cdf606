"""The noise a model is trained with is the noise it is certified with: the same law, at the same place.

A recording network sees what reaches it (after the noise, the view's resize and the normalisation) in training
(:class:`vision_rs.training.NoisyBaseClassifier`) and in certification (``certify`` on the engine), for the same
smoothed model and input. At fixed entries the two samples must come from one law (two-sample Kolmogorov–Smirnov,
Bonferroni over the entries; a false failure has probability ≤ 1e-4 per case). Power: an unsound training noise —
added after the normalisation, after the resize, to every pixel instead of a selected share, or with σ_min on every
cell of a localized grid — must be told apart by the same check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp, kstest
from torch import nn

import vision_rs
from tests.conftest import FALSE_FAILURE
from vision_rs.segmentation import Localized
from vision_rs.segmentation import smooth as smooth_segmentation
from vision_rs.training import NoisyBaseClassifier
from vision_rs.video import smooth as smooth_video

DRAWS = 3000
MEAN, STD = (0.3, 0.45, 0.6), (0.2, 0.25, 0.3)


class Capture(nn.Module):
    """Records every batch it is given; two-class logits from one 1×1 convolution (any input size)."""

    def __init__(self, in_chans: int = 3, size: int = 8, frames: int | None = None, segmentation: bool = False) -> None:
        super().__init__()
        conv = nn.Conv3d if frames else nn.Conv2d
        self.conv = conv(in_chans, 2, 1)
        self.segmentation = segmentation
        self.seen: list[torch.Tensor] = []
        self.pretrained_cfg = {"mean": MEAN, "std": STD, "input_size": (3, size, size), "crop_pct": 1.0,
                               "interpolation": "bilinear", "first_conv": "conv"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        scores = self.conv(x)
        return scores if self.segmentation else scores.flatten(2).mean(-1)

    def taken(self, skip: int = 0) -> torch.Tensor:
        """Every input seen, batches concatenated (after the first ``skip`` forward passes), then forgotten."""
        seen = torch.cat(self.seen[skip:])
        self.seen.clear()
        return seen


def same_law(first: torch.Tensor, second: torch.Tensor, entries: list[tuple[int, ...]]) -> float:
    """The smallest KS p-value over ``entries`` of two samples [N, ...] (compare to FALSE_FAILURE / len(entries))."""
    return min(ks_2samp(first[(slice(None), *entry)].numpy(), second[(slice(None), *entry)].numpy()).pvalue
               for entry in entries)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(-1, 1, 1), torch.tensor(STD).view(-1, 1, 1)
    return (pixels - mean) / std


def certification_inputs(smoothed: vision_rs.SmoothedClassifier, capture: Capture, image: torch.Tensor) -> torch.Tensor:
    """The model inputs of the estimation draws of ``certify`` (n = DRAWS, in batches that need no padding)."""
    smoothed.certify(image, n0=1, n=DRAWS, alpha=0.01, seed=1, progress=False)
    return capture.taken()[1:]


def training_inputs(smoothed: object, capture: Capture, image: torch.Tensor, **forward: object) -> torch.Tensor:
    noisy = NoisyBaseClassifier(smoothed, seed=2)  # type: ignore[arg-type]
    noisy(image[None].expand(DRAWS, *image.shape).contiguous(), **forward)
    return capture.taken()


ENTRIES = [(0, 0, 0), (1, 3, 4), (2, 7, 7), (0, 5, 2), (1, 1, 6)]


@pytest.mark.parametrize("size", [8, 6], ids=["at the model's size", "upscaled after the noise"])
def test_gaussian_training_noise_is_the_certification_noise(size: int) -> None:
    capture = Capture(size=8)
    smoothed = vision_rs.smooth(capture, sigma=0.5, batch_size=1000, progress=False)
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    certified, trained = certification_inputs(smoothed, capture, image), training_inputs(smoothed, capture, image)
    assert certified.shape == trained.shape == (DRAWS, 3, 8, 8)
    assert same_law(certified, trained, ENTRIES) > FALSE_FAILURE / len(ENTRIES)
    # power: the noise added after the normalisation (or after the resize to the model's input) is another law
    resized = image if size == 8 else F.interpolate(image[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    after_normalisation = normalised(resized) + 0.5 * torch.randn(DRAWS, 3, 8, 8)
    assert same_law(certified, after_normalisation, ENTRIES) < FALSE_FAILURE / len(ENTRIES)
    if size == 8:  # every entry's noise, pooled (independent entries): the law itself, N(0, σ²) in pixel units
        def noise_of(inputs: torch.Tensor) -> torch.Tensor:
            return (inputs * torch.tensor(STD).view(-1, 1, 1) + torch.tensor(MEAN).view(-1, 1, 1) - image).flatten()

        assert ks_2samp(noise_of(certified).numpy(), noise_of(trained).numpy()).pvalue > FALSE_FAILURE / 2
        assert kstest(noise_of(trained).numpy() / 0.5, "norm").pvalue > FALSE_FAILURE / 2
        five_percent_more = noise_of(normalised(image + 0.525 * torch.randn(DRAWS, 3, 8, 8)))  # power: σ off by 5 %
        assert ks_2samp(noise_of(certified).numpy(), five_percent_more.numpy()).pvalue < FALSE_FAILURE / 2
    else:
        after_resize = normalised(resized + 0.5 * torch.randn(DRAWS, 3, 8, 8))
        between = [(0, 3, 3), (1, 4, 4), (2, 3, 4)]  # output pixels that interpolate several input pixels
        assert same_law(certified, after_resize, between) < FALSE_FAILURE / len(between)


def test_hierarchical_training_noise_selects_pixels_and_appends_the_indicator() -> None:
    capture = Capture(in_chans=4)
    hierarchical = vision_rs.Hierarchical(p=0.6, indicator=True)
    smoothed = vision_rs.smooth(capture, sigma=0.5, hierarchical=hierarchical, batch_size=1000, progress=False)
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    certified, trained = certification_inputs(smoothed, capture, image), training_inputs(smoothed, capture, image)
    entries = ENTRIES + [(3, 2, 2), (3, 6, 1)]  # colour entries and the indicator channel
    assert certified.shape == trained.shape == (DRAWS, 4, 8, 8)
    assert same_law(certified, trained, entries) > FALSE_FAILURE / len(entries)
    every_pixel = torch.cat([normalised(image) + 0.5 * torch.randn(DRAWS, 3, 8, 8) / torch.tensor(STD).view(-1, 1, 1),
                             torch.ones(DRAWS, 1, 8, 8)], dim=1)  # power: p ignored, every pixel noised
    assert same_law(certified, every_pixel, ENTRIES) < FALSE_FAILURE / len(ENTRIES)


def test_video_training_noise_is_the_certification_noise_of_the_whole_clip() -> None:
    capture = Capture(frames=4)
    smoothed = smooth_video(capture, sigma=0.25, batch_size=1000, progress=False)
    clip = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    certified, trained = certification_inputs(smoothed, capture, clip), training_inputs(smoothed, capture, clip)
    assert certified.shape == trained.shape == (DRAWS, 3, 4, 8, 8)  # the clip model's [N, C, T, H, W]
    entries = [(0, 0, 0, 0), (1, 3, 2, 5), (2, 1, 7, 7)]
    assert same_law(certified, trained, entries) > FALSE_FAILURE / len(entries)


def test_localized_training_draws_the_sigma_map_of_the_cell_it_scores() -> None:
    """Segmentation with a 2×2 localized grid: an input trained on cell k gets exactly the σ map that certification
    samples for cell k; targets outside the cell are not scored."""
    capture = Capture(size=8, segmentation=True)
    localized = Localized((2, 2), sigma_min=0.2, sigma_max=0.8)
    smoothed = smooth_segmentation(capture, localized=localized, batch_size=1000, progress=False)
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    smoothed.certify(image, n0=1, n=DRAWS, alpha=0.01, seed=1, progress=False)
    per_cell = capture.taken(skip=1).view(4, 1 + DRAWS, 3, 8, 8)[:, 1:]  # after the clean probe; n0 then n per cell
    cell = 2
    trained = training_inputs(smoothed, capture, image, cells=torch.full((DRAWS,), cell))
    entries = [(0, 0, 0), (1, 6, 1), (2, 6, 6), (0, 3, 5)]  # in cells 0, 2 (the certified one), 3 and 1
    assert same_law(per_cell[cell], trained, entries) > FALSE_FAILURE / len(entries)
    assert same_law(per_cell[0], trained, entries) < FALSE_FAILURE / len(entries)  # power: another cell's map
    sigma_min_everywhere = normalised(image) + 0.2 * torch.randn(DRAWS, 3, 8, 8) / torch.tensor(STD).view(-1, 1, 1)
    assert same_law(per_cell[cell], sigma_min_everywhere, entries) < FALSE_FAILURE / len(entries)
    noisy = NoisyBaseClassifier(smoothed)
    targets = noisy.cell_targets(torch.zeros(2, 8, 8, dtype=torch.long), torch.tensor([cell, 0]))
    assert (targets[0, 4:, :4] == 0).all() and (targets[0][targets[0] != 0] == 255).all() and (targets[0] == 255).sum() == 48
    assert (targets[1, :4, :4] == 0).all() and (targets[1] == 255).sum() == 48


def test_training_forward_has_gradients_and_copies_are_independent_draws() -> None:
    model = vision_rs.embedded.DigitsCNN()
    smoothed = vision_rs.smooth(model, sigma=0.25, device="cpu", progress=False)
    noisy = NoisyBaseClassifier(smoothed, seed=0).train()
    pixels = torch.rand(4, 3, 32, 32)
    logits = noisy(pixels, copies=3)
    assert logits.shape == (3, 4, 10) and not torch.equal(logits[0], logits[1])
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    noisy.reseed(7)
    first = noisy.eval()(pixels)
    noisy.reseed(7)
    assert torch.equal(first, noisy(pixels))  # one seed, one stream of noise
