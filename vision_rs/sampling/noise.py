"""Noise distributions: each fills a reused batch buffer with noisy copies of one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import InvalidParameterError
from ..params import check_selection_probability, check_sigma
from ..wording import Wording

NO_NOTE = Wording("", "")
"""What a noise says about the model's inputs when it needs nothing special."""


class Noise(Protocol):
    """A smoothing distribution over perturbed copies of an image."""

    sigma: float

    @property
    def extra_channels(self) -> int:
        """Channels a noisy copy has beyond the image's own (the hierarchical indicator)."""
        ...

    def input_note(self, channels: int) -> Wording:
        """What the model must accept, said when it fails on the first batch (empty if nothing special)."""
        ...

    def perturb_(self, buffer: torch.Tensor, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Overwrite ``buffer`` [B, C, H, W] with noisy copies of ``image``; return the noisy batch.

        ``image`` is one input [C, H, W] (B copies of it: certification) or a batch [B, C, H, W] of inputs (one
        copy of each: training, :mod:`vision_rs.training`); clips carry a frame dim before C. Either way every
        entry gets the same law.
        """
        ...


@dataclass(frozen=True)
class GaussianNoise:
    """Isotropic Gaussian noise N(0, σ² I) added to [0, 1] pixels at the image's own resolution (no clipping)."""

    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))

    extra_channels = 0

    def input_note(self, channels: int) -> Wording:
        return NO_NOTE

    def perturb_(self, buffer: torch.Tensor, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        buffer.normal_(0.0, self.sigma, generator=generator)
        return buffer.add_(image)


@dataclass(frozen=True, eq=False)
class SigmaMapNoise:
    """Anisotropic Gaussian noise: N(0, σ_p²) on pixel p, every channel, with ``sigma_map`` [H, W] of stds in [0, 1]
    pixel units (localized smoothing gives one map per output cell). ``sigma`` is its smallest std.

    A map [B, 1, H, W] gives each input of a batch its own map (training draws one output cell per input).
    The map is kept in float64, as the certificates use it; the noise is drawn in the buffer's dtype with every std
    rounded *up* to that dtype (:func:`rounded_up`): noise a hair stronger than the certificate assumes can only
    shrink what the certificate claims relative to what holds (a larger σ certifies more), never the reverse.
    """

    sigma_map: torch.Tensor

    def __post_init__(self) -> None:
        if self.sigma_map.ndim not in (2, 4) or not bool(torch.isfinite(self.sigma_map).all()) or not bool((self.sigma_map > 0).all()):
            raise InvalidParameterError("sigma_map must be a finite [H, W] (or per input [B, 1, H, W]) tensor of noise "
                                        "stds > 0 ([0, 1] pixel units)")
        object.__setattr__(self, "sigma_map", self.sigma_map.detach().to("cpu", torch.float64))
        object.__setattr__(self, "_scales", {})

    extra_channels = 0

    @property
    def sigma(self) -> float:
        return float(self.sigma_map.min())

    def input_note(self, channels: int) -> Wording:
        return NO_NOTE

    def scale(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The stds the noise is multiplied by: the map rounded up to ``dtype``, on ``device`` (made once for each)."""
        key = (device, dtype)
        if key not in self._scales:  # type: ignore[attr-defined]
            self._scales[key] = rounded_up(self.sigma_map, dtype).to(device)  # type: ignore[attr-defined]
        return self._scales[key]  # type: ignore[attr-defined]

    def perturb_(self, buffer: torch.Tensor, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        buffer.normal_(0.0, 1.0, generator=generator)
        return buffer.mul_(self.scale(buffer.device, buffer.dtype)).add_(image)


def rounded_up(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``values`` in ``dtype``, each the smallest value of that dtype at or above it (never below)."""
    rounded = values.to(dtype)
    below = rounded.to(torch.float64) < values
    return torch.where(below, torch.nextafter(rounded, torch.full_like(rounded, float("inf"))), rounded)


@dataclass(frozen=True)
class HierarchicalNoise:
    """Hierarchical smoothing (Scholten et al. 2023): each pixel is selected with probability ``p``,
    independently; selected pixels get N(0, σ²) on every channel, the others stay as they are.

    With ``indicator=True`` a channel holding the selection mask (1 = noised) is appended after
    the colour channels; the model must then take one more input channel.
    """

    sigma: float
    p: float
    indicator: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        object.__setattr__(self, "p", check_selection_probability(self.p))

    @property
    def extra_channels(self) -> int:
        return int(self.indicator)

    def input_note(self, channels: int) -> Wording:
        if not self.indicator:
            return NO_NOTE
        fed = f"feeds {channels + 1} channels ({channels} colour + 1 indicator): build the model for them"
        return Wording(f"hierarchical smoothing with indicator=True {fed} (timm: in_chans={channels + 1})",
                       f"hierarchical smoothing with --indicator {fed} (a checkpoint of a model made with "
                       f"{channels + 1} input channels)")

    def perturb_(self, buffer: torch.Tensor, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        channels = image.shape[-3]
        colour = buffer[:, :channels]
        selected = torch.empty_like(buffer[:, :1]).bernoulli_(self.p, generator=generator)
        colour.normal_(0.0, self.sigma, generator=generator).mul_(selected).add_(image)
        if self.indicator:
            buffer[:, channels:].copy_(selected)
        return buffer
