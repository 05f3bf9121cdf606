"""Denoised smoothing: a denoiser between the noise and the view, as part of the base classifier.

Salman et al. (NeurIPS 2020) put a denoiser in front of a classifier that was never trained with
noise; Carlini et al. (ICLR 2023) use an off-the-shelf diffusion model as that denoiser
(:class:`vision_rs.DiffusionDenoiser`). The base classifier becomes

    f(z) = model( normalise( evaluation_transform( view( denoiser(z) ) ) ) ),   z = x + ε,

a fixed measurable map of the noisy input like any other, so every certificate holds unchanged
(docs/theory.md). The denoiser sees the noisy input at its own resolution, before any crop, resize or
normalisation: :class:`DenoisedView` wraps whatever view the method makes, so the engine's one
sampling loop runs unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..errors import InvalidParameterError, ModelOutputError
from ..sampling.engine import EngineConfig, autocast_context
from ..sampling.views import View
from ..wording import Wording
from .adapters import evaluation_mode, model_input_channels
from .provenance import ModelSource, file_sha256, state_sha256

log = logging.getLogger(__name__)

DenoiserLike = Union[nn.Module, str, os.PathLike]
"""What ``smooth(..., denoiser=...)`` takes: an ``nn.Module`` mapping noisy [N, C, H, W] in [0, 1] to denoised
images of the same shape, an embedded denoiser name, a checkpoint of the embedded architecture, or a folder
holding a diffusers UNet2DModel and its scheduler."""


@dataclass(frozen=True)
class Denoiser:
    """A denoiser ready for smoothing: the module, where it came from, and the σ it was trained for (if known)."""

    module: nn.Module
    source: ModelSource
    trained_sigma: float | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready: source, weights fingerprint and the module's own ``details`` (e.g. a diffusion timestep)."""
        details = getattr(self.module, "details", None)
        return {**self.source.to_dict(), "state_sha256": state_sha256(self.module),
                "details": dict(details) if isinstance(details, dict) else {}}


DENOISER_CHECKPOINT = Wording(
    "A denoiser checkpoint must hold vision_rs.models.embedded.DigitsDenoiser; pass any other denoiser as the "
    "nn.Module itself (denoiser=module)",
    "--denoiser takes a checkpoint of the embedded DigitsDenoiser, an embedded denoiser name or a diffusers folder")


def _embedded_denoiser(name: str) -> Denoiser:
    from .embedded.denoiser import EMBEDDED_DENOISERS, denoiser_weights_path, load_embedded_denoiser

    path = denoiser_weights_path(name)
    module = load_embedded_denoiser(name)
    return Denoiser(module, ModelSource(name, True, str(path), file_sha256(path)),
                    float(EMBEDDED_DENOISERS[name]["sigma"]))  # type: ignore[arg-type]


def _named_denoiser(name: str) -> Denoiser:
    """An embedded denoiser, a checkpoint of the embedded architecture, or a diffusers folder."""
    from .embedded.denoiser import EMBEDDED_DENOISERS, DigitsDenoiser

    if name in EMBEDDED_DENOISERS:
        return _embedded_denoiser(name)
    path = Path(name)
    if path.is_dir():
        from .diffusion import load_diffusion_denoiser

        return Denoiser(load_diffusion_denoiser(path), ModelSource(f"diffusers:{path.name}", True, str(path)))
    if path.is_file():
        from .checkpoints import load_checkpoint_into

        module = load_checkpoint_into(DigitsDenoiser(), path, expected="the embedded denoiser DigitsDenoiser",
                                      advice=DENOISER_CHECKPOINT).eval()
        return Denoiser(module, ModelSource("digits_denoiser").with_checkpoint(path))
    raise InvalidParameterError(
        f"unknown denoiser {name!r}: give an embedded denoiser ({', '.join(sorted(EMBEDDED_DENOISERS))}), a checkpoint "
        "file of the embedded DigitsDenoiser architecture, a folder with a diffusers UNet2DModel and its scheduler "
        "(unet/ and scheduler/, as DDPMPipeline.save_pretrained writes), or an nn.Module"
    )


def load_denoiser(denoiser: DenoiserLike | Denoiser, sigma: float) -> Denoiser:
    """The denoiser for smoothing at noise std ``sigma`` ([0, 1] pixel units), loaded offline.

    A module with an ``at_sigma(sigma)`` method (:class:`vision_rs.DiffusionDenoiser`) is fitted to σ
    through it. Warns when a denoiser trained for another σ is used.
    """
    if isinstance(denoiser, Denoiser):
        loaded = denoiser
    elif isinstance(denoiser, nn.Module):
        loaded = Denoiser(denoiser, ModelSource.of_module(denoiser))
    elif isinstance(denoiser, (str, os.PathLike)):
        loaded = _named_denoiser(os.fspath(denoiser))
    else:
        raise InvalidParameterError(f"denoiser must be an nn.Module, a denoiser name or a path, got {type(denoiser).__name__}")
    fit = getattr(loaded.module, "at_sigma", None)
    if callable(fit):
        loaded = Denoiser(fit(sigma), loaded.source, loaded.trained_sigma)
    if loaded.trained_sigma is not None and abs(loaded.trained_sigma - sigma) > 1e-9:
        log.warning("denoiser %s was trained for noise σ=%g, but smoothing uses σ=%g: it will remove too %s noise",
                    loaded.source.name, loaded.trained_sigma, sigma, "little" if loaded.trained_sigma < sigma else "much")
    return loaded


@contextlib.contextmanager
def evaluating(model: nn.Module, denoiser: Denoiser | None) -> Iterator[None]:
    """Eval mode for ``model`` and the denoiser's module (when there is one) while inside."""
    with evaluation_mode(model), (evaluation_mode(denoiser.module) if denoiser is not None else contextlib.nullcontext()):
        yield


def behind_denoiser(view: View, denoiser: Denoiser | None, channels: int, extra_channels: int, config: EngineConfig,
                    frames: bool = False) -> View:
    """``view`` itself without a denoiser, else a :class:`DenoisedView` of it with the engine's autocast and layout."""
    if denoiser is None:
        return view
    return DenoisedView(view, denoiser.module, channels, extra_channels, config.autocast_dtype, config.channels_last,
                        frames=frames)


class DenoisedView:
    """``view(denoiser(noisy))``: the denoiser runs on each noisy draw at the input's own resolution, then the view.

    ``channels``: the input's own channels (the denoiser sees those; a hierarchical indicator, the
    ``extra_channels`` after them, bypasses it unchanged). Clips [B, T, C, H, W] (``frames=True``) are
    denoised frame by frame. A grey input is repeated to the denoiser's colour channels first when it
    reads more (the model then gets colour images). The denoiser runs under the engine's autocast and,
    with ``channels_last``, on channels-last inputs; its output is cast back to the noisy batch's dtype.
    The first batch is checked (shape, dtype, finite values; one host sync) and a denoiser that fails
    it raises ModelOutputError; later batches are checked for shape and dtype (no sync), and non-finite
    values then show up as non-finite logits, which the tally refuses. The memory budget counts the
    noisy draws and the model inputs as without a denoiser; the denoised copy and the denoiser's
    activations, like the model's, are bounded by the batch size.

    Locality: a denoiser mixes the pixels of an image, so a view of the denoised image depends on every
    pixel. For images the view's ``c_max`` becomes its ``count`` (each view covers every pixel: the
    ``probit-mean`` radius then gains nothing from small patches, as it must) and no pixel is
    ``uncovered``. Clips are denoised frame by frame, so views along time keep their own ``c_max``.
    """

    def __init__(
        self,
        view: View,
        denoiser: nn.Module,
        channels: int,
        extra_channels: int = 0,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        frames: bool = False,
    ) -> None:
        self.view = view
        self.denoiser = denoiser
        self.channels = channels
        self.extra_channels = extra_channels
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        reads = model_input_channels(denoiser)
        self.denoiser_channels = reads if channels == 1 and reads is not None and reads > 1 else channels
        self.count = view.count
        self.frames = frames
        self._checked = False

    @property
    def c_max(self) -> int:
        """The most views one input entry can influence: every view for images, the view's own for clips."""
        return self.view.c_max if self.frames else self.count

    @property
    def uncovered(self) -> int:
        """Entries no view depends on: none for images (the denoiser spreads each pixel), the view's own for clips."""
        return self.view.uncovered if self.frames else 0

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        colour = noisy[..., : self.channels, :, :]
        denoised = self._denoise(colour)
        if self.extra_channels:
            denoised = torch.cat([denoised, noisy[..., self.channels :, :, :]], dim=-3)
        return self.view(denoised)

    def _denoise(self, colour: torch.Tensor) -> torch.Tensor:
        """Denoised frames of ``colour`` [..., C, H, W], shaped [..., C', H, W] (C' = the denoiser's channels)."""
        frames = colour.reshape(-1, *colour.shape[-3:])  # images [B, C, H, W]; clips frame by frame
        frames = frames.expand(-1, self.denoiser_channels, -1, -1)
        shape = (*colour.shape[:-3], self.denoiser_channels, *colour.shape[-2:])
        if frames.is_meta:  # memory planning: shapes only
            return torch.empty(shape, device="meta", dtype=colour.dtype)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        with autocast_context(frames.device, self.autocast_dtype):
            output = self.denoiser(frames) if self._checked else self._first_forward(frames)
        return self._check(output, frames).to(colour.dtype).reshape(shape)

    def _first_forward(self, frames: torch.Tensor) -> object:
        try:
            return self.denoiser(frames)
        except RuntimeError as exc:
            raise ModelOutputError(
                f"the denoiser failed on a first batch of noisy images shaped {tuple(frames.shape)} (in [0, 1] at the "
                f"input's own resolution, before any resize): {exc}"
            ) from exc

    def _check(self, output: object, frames: torch.Tensor) -> torch.Tensor:
        """``output`` if it is a floating tensor of ``frames``' shape and dtype (or the autocast dtype)."""
        if not isinstance(output, torch.Tensor):
            raise ModelOutputError(f"the denoiser returned {type(output).__name__}, not a tensor of denoised images "
                                   f"shaped like its input {tuple(frames.shape)}")
        if output.shape != frames.shape:
            raise ModelOutputError(
                f"the denoiser returned shape {tuple(output.shape)} for noisy images shaped {tuple(frames.shape)}: it "
                "must return denoised images of the shape it is given (the view's resize and crop come after it)"
            )
        allowed = {frames.dtype} | ({self.autocast_dtype} if self.autocast_dtype is not None else set())
        if output.dtype not in allowed:
            raise ModelOutputError(
                f"the denoiser returned {output.dtype} for {frames.dtype} inputs; expected "
                f"{' or '.join(sorted(str(d) for d in allowed))}: return floating images in the input's dtype"
            )
        if not self._checked:
            bad = int((~torch.isfinite(output)).flatten(1).any(dim=1).sum())  # one host sync, first batch only
            if bad:
                raise ModelOutputError(f"the denoiser returned NaN or Inf for {bad} of the first {frames.shape[0]} noisy "
                                       "images; check its weights and that it expects [0, 1] inputs")
            self._checked = True
        return output
