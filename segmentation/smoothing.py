"""``vision_rs.segmentation.smooth``: per-pixel certified segmentation on the core engine.

Isotropic smoothing draws N(0, σ² I) on the whole image and counts every pixel's votes. Localized
smoothing (Schuchardt et al., ICLR 2023) certifies one output cell at a time: its n0 + n draws come
from its own σ map (``SigmaMapNoise``), the model runs on the whole noisy image, and only that cell's
pixels are counted (``PixelVoteTally`` over the cell). The same seeded generator serves every cell in
turn, so a seed fixes the whole certificate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from typing_extensions import Unpack

from vision_rs.errors import InvalidParameterError
from vision_rs.images import ImageInput, to_unit_tensor
from vision_rs.models.denoising import Denoiser, behind_denoiser, evaluating
from vision_rs.models.provenance import ModelSource
from vision_rs.params import check_alpha, check_count, check_sigma
from vision_rs.sampling.engine import EngineConfig, PixelVoteTally, ProgressReport, max_draws_per_batch, sample
from vision_rs.sampling.noise import GaussianNoise, Noise, SigmaMapNoise
from vision_rs.sampling.views import View, WholeImage
from vision_rs.smoothing import ModelOptions, describe_smoothed, place, place_denoiser, prepare_model, seeded_generator
from vision_rs.wording import Wording

from .certificates import certify_pixels, certify_pixels_at_threshold, check_tau
from .localized import Localized, cell_slices, check_grid_fits, sigma_map
from .models import SegmentationModel
from .results import ABSTAIN, SegmentationCertificate

CORRECTIONS = ("bonferroni", "holm", "bonferroni-threshold")
"""Per-pixel Clopper–Pearson bounds made simultaneous by Bonferroni; or Fischer et al.'s test of p > τ with Holm's
step-down or with Bonferroni."""


def check_correction(correction: str, localized: Localized | None, tau: float = 0.75) -> str:
    """``correction``, refused unless it is one of :data:`CORRECTIONS` that fits the smoothing (localized smoothing needs
    per-pixel bounds), and the threshold ``tau`` of the tests."""
    if correction != "bonferroni":
        check_tau(tau)
    if correction not in CORRECTIONS:
        raise InvalidParameterError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if correction != "bonferroni" and localized is not None:
        raise InvalidParameterError(
            "the threshold test ({test}) certifies isotropic smoothing; localized smoothing needs per-pixel bounds: "
            "{bonferroni}", test=Wording(f"correction={correction!r}", f"--correction {correction}"),
            bonferroni=Wording("correction='bonferroni'", "--correction bonferroni"))
    return correction


def _no_check(model: nn.Module) -> None:
    """Any module may be a segmentation model; its outputs are checked on the first batch instead."""


class SmoothedSegmenter:
    """A segmentation model smoothed with isotropic or localized Gaussian noise. Build it with :func:`smooth`."""

    def __init__(
        self,
        base: SegmentationModel,
        sigma: float | None,
        localized: Localized | None,
        device: torch.device,
        config: EngineConfig,
        num_classes: int | None,
        source: ModelSource,
        denoiser: Denoiser | None = None,
    ) -> None:
        self.base = base
        self.sigma_value = sigma
        self.localized = localized
        self.device = device
        self.config = config
        self.num_classes = num_classes
        self.source = source
        self.denoiser = None if denoiser is None else place_denoiser(denoiser, device, config)
        """The denoiser between the noise and the model (denoised smoothing), on ``device``; None without one."""

    @property
    def method(self) -> str:
        return "localized" if self.localized is not None else "isotropic"

    @property
    def sigma(self) -> float:
        """σ of isotropic smoothing, σ_min of localized smoothing ([0, 1] pixel units)."""
        return self.localized.sigma_min if self.localized is not None else float(self.sigma_value)  # type: ignore[arg-type]

    @property
    def spec(self):
        return self.base.spec

    @property
    def details(self) -> dict[str, Any]:
        if self.localized is None:
            return {}
        return {"grid": list(self.localized.grid), "sigma_min": self.localized.sigma_min, "sigma_max": self.localized.sigma_max}

    def describe(self) -> dict[str, Any]:
        """What defines this smoothed model, JSON-ready (the run record of a segmentation data-set run)."""
        return describe_smoothed(self)

    def inputs(self, image: ImageInput, channels: int | None) -> torch.Tensor:
        return to_unit_tensor(image, channels)

    def view_for(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> View:
        """What the model sees of a noisy image of ``shape`` [C, H, W]: the whole image, behind the denoiser when there
        is one (the model's resize is inside the base model, :class:`SegmentationModel`)."""
        return behind_denoiser(WholeImage(), self.denoiser, shape[-3], 0, self.config)

    def regions(self, height: int, width: int) -> list[tuple[tuple[slice, slice], Noise]]:
        """(pixels counted, noise they are counted under) for every output cell (one for isotropic smoothing)."""
        if self.localized is None:
            return [((slice(0, height), slice(0, width)), GaussianNoise(self.sigma))]
        check_grid_fits(self.localized, height, width)
        return [
            (cell_slices(self.localized, height, width, cell),
             SigmaMapNoise(torch.from_numpy(sigma_map(self.localized, height, width, cell))))
            for cell in range(self.localized.cells)
        ]

    def _output_bytes(self, height: int, width: int, classes: int) -> int:
        """The class scores of one draw at the image's resolution, and their resize, in bytes."""
        return 2 * classes * height * width * 4

    def check_fits(self, image_shape: Sequence[int], classes: int | None = None) -> None:
        """Raise InvalidImageError when one noisy draw of an image of ``image_shape`` cannot fit the memory budget."""
        shape = tuple(int(v) for v in image_shape)
        classes = classes or self.num_classes or 1
        max_draws_per_batch(shape, GaussianNoise(1.0), WholeImage(), self.config, self.config.streams_on(self.device),
                            self._output_bytes(shape[-2], shape[-1], classes))

    def count_classes(self, image: ImageInput) -> int:
        """How many classes the model scores, from one forward pass on the clean image (checked against ``num_classes``)."""
        with evaluating(self.base, self.denoiser):
            return self._probe_classes(to_unit_tensor(image, self.spec.channels).to(self.device))

    def _probe_classes(self, pixels: torch.Tensor) -> int:
        """Run the model once on the clean image: its output is checked, and its class count sizes the batches."""
        with torch.inference_mode():
            scores = self.base(pixels[None])
        tally = PixelVoteTally(tuple(pixels.shape[-2:]), num_classes=self.num_classes)
        return int(tally.check(scores, 1).shape[1])

    def certify(
        self,
        image: ImageInput,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.01,
        *,
        correction: str = "bonferroni",
        tau: float = 0.75,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool | ProgressReport | None = None,
    ) -> SegmentationCertificate:
        """Certify every pixel: choose its class on ``n0`` draws, bound its probability on ``n`` fresh ones.

        With probability ≥ 1 − ``alpha`` every non-abstained pixel keeps its class under every perturbation
        of L2 norm below its radius (all pixels at once). ``correction``: ``"bonferroni"`` gives each pixel a
        Clopper–Pearson bound at α/N and its own radius σ Φ⁻¹(p̲) (localized: σ_min Φ⁻¹(p̲)); ``"holm"`` (or
        ``"bonferroni-threshold"``) tests p > ``tau`` for every pixel with Holm's step-down (or Bonferroni)
        and gives the certified pixels the radius σ Φ⁻¹(τ) (isotropic smoothing only). Localized smoothing
        spends n0 + n draws per output cell.
        """
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        check_correction(correction, self.localized, tau)
        config = self.config.with_overrides(batch_size, progress)
        pixels = to_unit_tensor(image, self.spec.channels).to(self.device)
        height, width = pixels.shape[-2:]
        generator, seed = seeded_generator(self.device, seed)
        start = time.perf_counter()
        candidates = np.zeros((height, width), dtype=np.int64)
        counts = np.zeros((height, width), dtype=np.int64)
        view = self.view_for(tuple(pixels.shape))
        with evaluating(self.base, self.denoiser):
            classes = self._probe_classes(pixels)
            output_bytes = self._output_bytes(height, width, classes)
            regions = self.regions(height, width)
            for index, (region, noise) in enumerate(regions):
                def votes(num: int, desc: str) -> np.ndarray:
                    tally = PixelVoteTally((height, width), region, classes)
                    return sample(self.base, pixels, noise, view, tally, num, generator, config, desc, output_bytes)

                cell = f", cell {index + 1} of {len(regions)}" if len(regions) > 1 else ""
                chosen = votes(n0, f"select (n0){cell}").argmax(axis=-1)
                estimated = votes(n, f"estimate (n){cell}")
                candidates[region] = chosen
                counts[region] = np.take_along_axis(estimated, chosen[..., None], axis=-1)[..., 0]
        return self._certificate(candidates, counts, n0, n, alpha, correction, tau, classes, seed, time.perf_counter() - start)

    def _certificate(self, candidates: np.ndarray, counts: np.ndarray, n0: int, n: int, alpha: float, correction: str,
                     tau: float, classes: int, seed: int, seconds: float) -> SegmentationCertificate:
        if correction == "bonferroni":
            pixel = certify_pixels(counts, n, self.sigma, alpha)
            abstained, radii, p_lower = pixel.abstained, pixel.radii, pixel.p_lower
        else:
            test = certify_pixels_at_threshold(counts, n, self.sigma, tau, alpha,
                                               "holm" if correction == "holm" else "bonferroni")
            abstained, radii, p_lower = ~test.certified, np.where(test.certified, test.radius, 0.0), None
        return SegmentationCertificate(
            labels=np.where(abstained, ABSTAIN, candidates), abstained=abstained, radii=radii, p_lower=p_lower,
            candidates=candidates, counts=counts, n0=n0, n=n, alpha=alpha, method=self.method, correction=correction,
            sigma=self.sigma, num_classes=classes, seconds=seconds, seed=seed,
            tau=tau if correction != "bonferroni" else None, localized=self.details or None,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, sigma={self.sigma}, details={self.details}, device={self.device})"


def smooth(
    model: nn.Module | str,
    sigma: float | None = None,
    *,
    localized: Localized | None = None,
    **options: Unpack[ModelOptions],
) -> SmoothedSegmenter:
    """Wrap a segmentation model ([B, 3, H, W] → [B, K, H, W] scores, or torchvision's ``{"out": ...}``) for certified
    segmentation: isotropic Gaussian smoothing with ``sigma``, or ``localized=Localized(grid, sigma_min, sigma_max)``.

    Mean, std and resize come from the weights' ``SemanticSegmentation`` preset or the model's ``pretrained_cfg``
    and are applied after the noise; scores at another resolution are resized back to the input's (bilinear
    on the logits). ``options``: see :class:`vision_rs.smoothing.ModelOptions`. σ in [0, 1] pixel units.
    """
    if (sigma is None) == (localized is None):
        raise InvalidParameterError("give sigma= (isotropic smoothing) or localized=Localized(...), exactly one of them")
    if localized is not None and not isinstance(localized, Localized):
        raise InvalidParameterError(f"localized must be a vision_rs.segmentation.Localized(...), got {localized!r}")
    noise_sigma = check_sigma(sigma) if sigma is not None else localized.sigma_min  # type: ignore[union-attr]
    prepared = prepare_model(model, GaussianNoise(noise_sigma), options, check=_no_check, task="segmentation")
    base, device = place(SegmentationModel(prepared.model, prepared.spec), prepared)
    return SmoothedSegmenter(base, sigma, localized, device, prepared.config, prepared.num_classes, prepared.source,
                             prepared.denoiser)
