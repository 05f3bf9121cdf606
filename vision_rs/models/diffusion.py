"""A diffusion model as a one-shot denoiser (Carlini et al., "(Certified!!) Adversarial Robustness for Free!", ICLR 2023).

A DDPM-style model on [−1, 1] images was trained on x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) η, η ~ N(0, I). The
smoothing noise z = x + ε, ε ~ N(0, σ² I) on [0, 1] pixels, becomes 2z − 1 = (2x − 1) + 2ε on [−1, 1],
noise of std 2σ. Scaled by √ᾱ_t it is exactly of the training form when √(1 − ᾱ_t) = 2σ √ᾱ_t, i.e.

    √((1 − ᾱ_t) / ᾱ_t) = 2σ,   ᾱ_t = 1 / (1 + 4σ²),

so the denoiser takes the timestep t whose ᾱ_t is nearest that, scales x_t = √ᾱ_t (2z − 1), predicts
x̂_0 in one step from the model's output (ε, x_0 or v, the scheduler's ``prediction_type``), clips it to
[−1, 1] and maps it back to [0, 1]. See docs/theory.md. Needs the optional ``diffusers`` package
(``pip install 'vision-rs[diffusion]'``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InvalidParameterError, MissingDependencyError
from ..params import check_sigma

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What a diffusers model predicts: the noise η, the clean x_0, or v = √ᾱ η − √(1 − ᾱ) x_0."""
MISMATCH_WARNING = 0.05
"""Warn when the chosen timestep's noise level is further than this (relative) from 2σ."""


def require_diffusers() -> Any:
    """The ``diffusers`` module, or MissingDependencyError saying how to install it."""
    try:
        import diffusers
    except ImportError as exc:
        raise MissingDependencyError(
            "the diffusion denoiser needs the diffusers package: pip install 'vision-rs[diffusion]' (or diffusers)"
        ) from exc
    return diffusers


def noise_to_signal(alphas_cumprod: Sequence[float] | np.ndarray) -> np.ndarray:
    """√((1 − ᾱ_t) / ᾱ_t) per timestep: the std of the noise of x_t / √ᾱ_t, on the model's [−1, 1] scale."""
    alpha_bar = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def diffusion_timestep(alphas_cumprod: Sequence[float] | np.ndarray, sigma: float) -> int:
    """The timestep whose noise level √((1 − ᾱ_t)/ᾱ_t) is nearest 2σ (σ in [0, 1] pixel units; the first on a tie).

    Carlini et al.'s code takes the first t at or above 2σ; the nearest differs from it by at most one step.
    """
    sigma = check_sigma(sigma)
    ratio = noise_to_signal(alphas_cumprod)
    if ratio.ndim != 1 or ratio.size == 0 or not np.all(np.isfinite(ratio)):
        raise InvalidParameterError("the scheduler's alphas_cumprod must be a non-empty sequence of values in (0, 1]")
    t = int(np.argmin(np.abs(ratio - 2 * sigma)))
    if abs(ratio[t] - 2 * sigma) > MISMATCH_WARNING * 2 * sigma:
        log.warning("the diffusion schedule has no timestep with noise level 2σ=%g (nearest: %g at t=%d, range %g..%g): "
                    "the denoiser sees noise it was not trained for", 2 * sigma, ratio[t], t, ratio.min(), ratio.max())
    return t


def predict_clean(x_t: torch.Tensor, output: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """x̂_0 on [−1, 1] from the model's ``output`` at x_t with cumulative ᾱ_t = ``alpha_bar``, in one step."""
    if prediction_type == "epsilon":
        return (x_t - math.sqrt(1 - alpha_bar) * output) / math.sqrt(alpha_bar)
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return math.sqrt(alpha_bar) * x_t - math.sqrt(1 - alpha_bar) * output
    raise InvalidParameterError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class DiffusionDenoiser(nn.Module):
    """Denoise noisy [N, C, H, W] images in [0, 1] with one step of a diffusers ``UNet2DModel`` (Carlini et al. 2023).

    ``scheduler``: a DDPM-style diffusers scheduler (``alphas_cumprod``, ``config.prediction_type``).
    ``sigma``: the smoothing noise std in [0, 1] pixel units; ``smooth(..., denoiser=...)`` sets it
    (through :meth:`at_sigma`), so it is usually left out. ``clip``: clip x̂_0 to [−1, 1] (the authors'
    ``clip_denoised=True``). A model with twice the input channels (learned variance) has its first C
    output channels read. The UNet and its weights are used as they are; the input size must suit it.
    """

    def __init__(self, unet: nn.Module, scheduler: Any, sigma: float | None = None, *, clip: bool = True) -> None:
        require_diffusers()
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise InvalidParameterError(f"unet must be a diffusers UNet2DModel (an nn.Module), got {type(unet).__name__}")
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise InvalidParameterError(f"the scheduler must be a DDPM-style diffusers scheduler with alphas_cumprod, "
                                        f"got {type(scheduler).__name__}")
        config = getattr(scheduler, "config", None) or {}
        self.prediction_type = str(config.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise InvalidParameterError(f"the scheduler's prediction_type must be one of {PREDICTION_TYPES}, "
                                        f"got {self.prediction_type!r}")
        self.unet = unet
        self.scheduler = scheduler
        self.alphas_cumprod = torch.as_tensor(alphas).double().cpu().numpy()
        self.clip = clip
        self.sigma = None if sigma is None else check_sigma(sigma)
        self.timestep = None if sigma is None else diffusion_timestep(self.alphas_cumprod, self.sigma)  # type: ignore[arg-type]

    def at_sigma(self, sigma: float) -> DiffusionDenoiser:
        """The same UNet and scheduler (shared, not copied) set for smoothing noise std ``sigma``."""
        return DiffusionDenoiser(self.unet, self.scheduler, sigma, clip=self.clip)

    @property
    def alpha_bar(self) -> float:
        """ᾱ_t of the chosen timestep."""
        if self.timestep is None:
            raise InvalidParameterError("this DiffusionDenoiser has no σ: pass it to smooth(..., denoiser=...), which "
                                        "sets it, or build it with sigma=...")
        return float(self.alphas_cumprod[self.timestep])

    @property
    def details(self) -> dict[str, Any]:
        """JSON-ready settings, recorded with dataset runs."""
        timestep = self.timestep
        return {"kind": "diffusion", "sigma": self.sigma, "timestep": timestep, "prediction_type": self.prediction_type,
                "alpha_bar": None if timestep is None else self.alpha_bar, "clip": self.clip}

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alpha_bar
        x_t = math.sqrt(alpha_bar) * (2 * noisy - 1)
        steps = torch.full((noisy.shape[0],), self.timestep, device=noisy.device, dtype=torch.long)  # type: ignore[arg-type]
        output = self.unet(x_t, steps, return_dict=False)[0]
        channels = noisy.shape[1]
        if output.shape[1] == 2 * channels:  # learned variance: [ε̂, v] stacked on the channels
            output = output[:, :channels]
        clean = predict_clean(x_t, output, alpha_bar, self.prediction_type)
        if self.clip:
            clean = clean.clamp(-1, 1)
        return ((clean + 1) / 2).to(noisy.dtype)


def load_diffusion_denoiser(path: str | os.PathLike) -> DiffusionDenoiser:
    """A :class:`DiffusionDenoiser` from a local folder, offline: a diffusers pipeline folder with ``unet/`` and
    ``scheduler/`` (what ``DDPMPipeline.save_pretrained`` writes), or one folder holding both configs."""
    diffusers = require_diffusers()
    root = Path(path)
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    scheduler_dir = root / "scheduler" if (root / "scheduler").is_dir() else root
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
        scheduler = diffusers.DDPMScheduler.from_pretrained(str(scheduler_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load a diffusion denoiser from {root}: {exc}. Give a folder with unet/ (a diffusers UNet2DModel: "
            "config.json and weights) and scheduler/ (scheduler_config.json), as DDPMPipeline.save_pretrained writes"
        ) from exc
    return DiffusionDenoiser(unet.eval(), scheduler)
