"""The smoothed classifier and the one-line ``smooth`` wrapper."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn
from typing_extensions import Unpack

from .errors import InvalidParameterError
from .images import ImageInput, to_unit_tensor
from .models.adapters import (
    InputSpec,
    NormalizedClassifier,
    as_normalized_classifier,
    check_is_classifier,
    fit_to_channels,
    model_device,
    model_input_channels,
    read_input_spec,
)
from .models.denoising import Denoiser, DenoiserLike, behind_denoiser, evaluating, load_denoiser
from .models.devices import check_device
from .models.hub import create_model_with_source
from .models.provenance import ModelSource, state_sha256
from .params import check_alpha, check_count, check_seed
from .sampling.certificates import Bound
from .sampling.engine import EngineConfig, ProgressReport, StopRule, check_logits, max_draws_per_batch, sample
from .sampling.methods import Gaussian, Hierarchical, Method, SmoothReduce, ViewMaker
from .sampling.noise import Noise
from .sampling.patches import Patches
from .sampling.results import Certificate, Prediction
from .sampling.sequential import BUDGET, SequentialGoal, Stopped, StoppingRule, check_sequential_method, sequential_goal
from .sampling.stats import top_two_pvalue
from .sampling.views import View
from .wording import Wording, duration, significant

log = logging.getLogger(__name__)

UPSCALE_WARNING = 4.0
"""Warn when the model's input is more than this many times larger (per side) than the image."""
DOWNSCALE_WARNING = 16.0
"""Warn when the image is more than this many times larger (per side) than the model's input."""
SLOW_RUN_SECONDS = 60.0
"""Warn how long a certification will take when it will take longer than this (per input)."""


def _nonzero_counts(counts: np.ndarray) -> dict[int, int]:
    return {int(c): int(v) for c, v in enumerate(counts) if v}


def seeded_generator(device: torch.device, seed: int | None) -> tuple[torch.Generator, int]:
    """A generator on ``device`` seeded with ``seed``, or with a fresh seed that is returned to reproduce the run."""
    seed = check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        return generator, int(generator.seed())
    generator.manual_seed(seed)
    return generator, seed


def describe_smoothed(smoothed: Any) -> dict[str, Any]:
    """The run-record description every smoothed model shares (classifier, video, segmentation): where the model
    came from and a fingerprint of its weights, the denoiser (when there is one), its input spec, the method and its
    settings, σ, and the engine."""
    config = smoothed.config
    denoiser = getattr(smoothed, "denoiser", None)
    return {
        "model": smoothed.source.to_dict(),
        **({} if denoiser is None else {"denoiser": denoiser.describe()}),
        "state_sha256": state_sha256(smoothed.base.model),
        "spec": smoothed.spec.describe(),
        "method": smoothed.method,
        "details": smoothed.details,
        "sigma": smoothed.sigma,
        "num_classes": smoothed.num_classes,
        "autocast": None if config.autocast_dtype is None else str(config.autocast_dtype).removeprefix("torch."),
        "device": str(smoothed.device),
        "batch_size": config.batch_size,
        "channels_last": config.channels_last,
        "streams": config.streams,
        "cuda_graphs": config.cuda_graphs,
        "memory_budget": config.memory_budget,
    }


class SmoothedClassifier:
    """A base classifier smoothed with noise: ``certify`` gives a label with a certified L2 radius, ``predict`` a label.

    Build it with :func:`smooth`. All radii and σ are in [0, 1] pixel units,
    L2 over all pixels and channels, at the resolution of the image passed in.
    """

    def __init__(
        self,
        base: NormalizedClassifier,
        smoothing: Method,
        noise: Noise,
        device: torch.device,
        config: EngineConfig,
        num_classes: int | None = None,
        source: ModelSource | None = None,
        inputs: Callable[[Any, int], torch.Tensor] = to_unit_tensor,
        denoiser: Denoiser | None = None,
    ) -> None:
        self.base = base
        self.smoothing = smoothing
        self.noise = noise
        self.device = device
        self.config = config
        self.num_classes = num_classes
        self.source = source or ModelSource.of_module(base.model)
        """Where the base model and its weights came from (recorded with dataset runs)."""
        self.inputs = inputs
        """Turns an input (image, clip) into float [0, 1] pixels in its own channels, checked against the model."""
        self.denoiser = None if denoiser is None else place_denoiser(denoiser, device, config)
        """The denoiser between the noise and the view (denoised smoothing), on ``device``; None without one."""
        self._warned: set[str] = set()

    @property
    def method(self) -> str:
        """Name of the smoothing method (``"gaussian"``, ``"hierarchical"``, ``"smooth-reduce"``)."""
        return self.smoothing.name

    @property
    def sigma(self) -> float:
        """Noise std in [0, 1] pixel units."""
        return self.noise.sigma

    @property
    def details(self) -> dict:
        """Method-specific settings recorded with every certificate."""
        return self.smoothing.details

    @property
    def spec(self) -> InputSpec:
        """The base model's :class:`~vision_rs.models.adapters.InputSpec` (mean, std, input size, resize and crop)."""
        return self.base.spec

    def describe(self) -> dict[str, Any]:
        """What defines this smoothed classifier, JSON-ready: model source and weights fingerprint, input spec,
        method, σ and the engine settings (the run record of :func:`~vision_rs.certify_dataset`)."""
        return describe_smoothed(self)

    def _warn_once(self, key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, message, *args)

    def _pixels(self, image: ImageInput) -> torch.Tensor:
        """The input as float [C, H, W] (or [T, C, H, W]) in [0, 1] in its own channels, checked against the model."""
        return self.inputs(image, self.spec.channels)

    def _warn_about_scale(self, height: int, width: int) -> None:
        transform = self.spec.transform
        if transform is None:
            return
        out_h, out_w = transform.resized_size(height, width)
        factor = max(out_h / height, out_w / width)
        if factor > UPSCALE_WARNING:
            self._warn_once("upscale", "the %d×%d image is upscaled %.1f× to the model's input: its certificate is about "
                            "the small image, and the model sees little detail", height, width, factor)
        elif factor < 1 / DOWNSCALE_WARNING:
            self._warn_once("downscale", "the %d×%d image is shrunk %.0f× to the model's input: the noise and the radius "
                            "live at the full resolution (radii grow with the pixel count); resize it first if you "
                            "want the usual convention", height, width, 1 / factor)

    def view_for(self, shape: tuple[int, ...], generator: torch.Generator) -> View:
        """The method's view of an input of ``shape``, behind the denoiser when there is one."""
        view = self.smoothing.make_view(shape, self.spec.transform, generator)
        return behind_denoiser(view, self.denoiser, shape[-3], self.noise.extra_channels, self.config,
                               frames=len(shape) == 4)

    def check_fits(self, image_shape: Sequence[int]) -> None:
        """Raise InvalidImageError when one noisy draw of an image of ``image_shape`` (C, H, W) cannot fit the
        memory budget; run before any output is written."""
        shape = tuple(int(v) for v in image_shape)
        view = self.view_for(shape, torch.Generator())
        max_draws_per_batch(shape, self.noise, view, self.config, self.config.streams_on(self.device))

    def count_classes(self, image: ImageInput) -> int:
        """How many classes the base classifier scores: the width of its output on the clean ``image`` (one forward pass
        of the method's views, no noise; a hierarchical indicator channel of zeros), checked against ``num_classes``."""
        pixels = self._pixels(image).to(self.device)
        view = self.view_for(tuple(pixels.shape), torch.Generator(device=self.device).manual_seed(0))
        indicator = torch.zeros_like(pixels.narrow(-3, 0, 1)).expand(*pixels.shape[:-3], self.noise.extra_channels,
                                                                      *pixels.shape[-2:])
        clean = torch.cat([pixels, indicator], dim=-3)[None]
        with torch.inference_mode(), evaluating(self.base, self.denoiser):
            return int(check_logits(self.base(view(clean)), view.count, self.num_classes).shape[1])

    def _vote_counter(
        self, image: ImageInput, batch_size: int | None, progress: bool | ProgressReport | None, seed: int | None
    ) -> tuple[Callable[..., np.ndarray], View, int]:
        """Validate the image once; return ``votes(num, desc, stop=None)`` drawing from one seeded stream, the view,
        the seed."""
        config = self.config.with_overrides(batch_size, progress)
        pixels = self._pixels(image)
        self._warn_about_scale(*pixels.shape[-2:])
        pixels = pixels.to(self.device)
        generator, seed = seeded_generator(self.device, seed)
        view = self.view_for(tuple(pixels.shape), generator)

        def votes(num: int, desc: str, stop: StopRule | None = None) -> np.ndarray:
            tally = self.smoothing.make_tally(self.num_classes)
            return sample(self.base, pixels, self.noise, view, tally, num, generator, config, desc, stop=stop)

        return votes, view, seed

    def _announce_views(self, view: View, n0: int, n: int) -> None:
        """Say, once, how many model evaluations a draw costs when the method has several views (Smooth-Reduce)."""
        if view.count > 1:
            kind = str(self.details.get("subclips") and "sub-clips" or "patches")
            self._warn_once("views", "%s: every draw runs the model on %s %s (c_max %d), so the n0 + n = %s draws of an "
                            "input are %s model evaluations", self.method, view.count, kind, view.c_max, f"{n0 + n:,}",
                            f"{(n0 + n) * view.count:,}", level=logging.INFO)

    def _estimate_time(self, draws: int, seconds: float, n: int, views: int) -> None:
        """Log, once, how long ``n`` draws will take at the rate of the first ``draws``: a warning above
        :data:`SLOW_RUN_SECONDS` per input, and for several views (Smooth-Reduce) always."""
        if "time" in self._warned or seconds <= 0:
            return
        rate = draws / seconds
        slow = n / rate > SLOW_RUN_SECONDS
        if slow or views > 1:
            per_view = f" ({significant(rate * views)} model evaluations/s)" if views > 1 else ""
            self._warn_once("time", "n=%s will take about %s per input at the measured %s draws/s%s on %s%s", f"{n:,}",
                            duration(n / rate), significant(rate), per_view, self.device,
                            "; lower n, or use a GPU" if slow else "", level=logging.WARNING if slow else logging.INFO)

    def certify(
        self,
        image: ImageInput,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        *,
        radius: float | None = None,
        sequential: bool = False,
        tolerance: float | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool | ProgressReport | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY: choose the class on ``n0`` samples, bound its probability on ``n`` fresh ones.

        With probability ≥ 1 − ``alpha`` over the sampling, the smoothed classifier
        predicts ``label`` for every input within L2 distance ``radius`` of ``image``
        (hierarchical smoothing: within ``radius_for(r)`` for changes of at most r pixels).
        Abstains (``label=None``, ``radius=0``) when the bound does not clear its threshold.

        Sequential certification draws at most ``n`` and stops as soon as the answer is known, with the
        same guarantee (an anytime-valid confidence sequence; docs/theory.md). ``radius=r`` (decision
        mode): stop once r is certified (``decision`` True, the certificate's radius > r) or can no
        longer be within n (``decision`` False). ``sequential=True, tolerance=τ`` (radius mode, τ = 0.02
        by default): stop once the radius is within τ (relative) of the best the rest of the budget
        could still certify, or once abstaining is certain. ``n_used`` says how many draws it took.
        Needs one vote per draw (Gaussian, hierarchical, Smooth-Reduce ``mode="vote"``).
        """
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        goal = sequential_goal(radius, sequential, tolerance)
        if goal is not None:
            check_sequential_method(self.smoothing.votes_once_per_draw, self.details)
        votes, view, seed = self._vote_counter(image, batch_size, progress, seed)
        self._announce_views(view, n0, n)
        start = time.perf_counter()
        with evaluating(self.base, self.denoiser):
            candidate = self.smoothing.select(votes(n0, "select (n0)"))
            if goal is None:
                self._estimate_time(n0, time.perf_counter() - start, n, view.count)
                counts = votes(n, "estimate (n)")
                stopped = Stopped(self.smoothing.bound(candidate, counts, n, alpha, self.sigma, view), n, counts, BUDGET)
            else:
                rule = self._stopping_rule(goal, candidate, view, n, alpha)
                votes(n, "estimate (at most n)", stop=rule)
                assert rule.stopped is not None, "the engine checks the rule at n at the latest"
                stopped = rule.stopped
        bound, estimation = stopped.bound, stopped.counts
        return Certificate(
            label=bound.label,
            radius=bound.radius,
            p_lower=bound.p_lower,
            p_upper=bound.p_upper,
            counts=_nonzero_counts(estimation if estimation.ndim == 1 else estimation.sum(axis=0)),
            n0=n0,
            n=n,
            alpha=alpha,
            sigma=self.sigma,
            abstained=bound.label is None,
            seconds=time.perf_counter() - start,
            method=self.method,
            candidate=candidate,
            seed=seed,
            details=self.details,
            views=view.count,
            c_max=view.c_max,
            uncovered=view.uncovered,
            n_used=stopped.draws,
            **(goal.certificate_fields(stopped) if goal is not None else {}),
        )

    def _stopping_rule(self, goal: SequentialGoal, candidate: int, view: View, n: int, alpha: float) -> StoppingRule:
        """The engine's ``stop`` callback for one certification: this method's certificate at each look's share of α."""

        def certify(counts: np.ndarray, draws: int, level: float) -> Bound:
            return self.smoothing.bound(candidate, counts, draws, level, self.sigma, view)

        return StoppingRule(goal, certify, candidate, n, alpha)

    def predict(
        self,
        image: ImageInput,
        n: int = 1000,
        alpha: float = 0.001,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool | ProgressReport | None = None,
    ) -> Prediction:
        """Cohen et al.'s PREDICT: the top class of ``n`` samples, unless a two-sided binomial test of the
        top two counts cannot reject a tie at level ``alpha`` (then abstain). Wrong with probability ≤ α."""
        n, alpha = check_count("n", n), check_alpha(alpha)
        if not self.smoothing.votes_once_per_draw:
            raise InvalidParameterError(f"predict needs one vote per draw; use certify for mode={self.details.get('mode')!r}")
        votes, _, seed = self._vote_counter(image, batch_size, progress, seed)
        start = time.perf_counter()
        with evaluating(self.base, self.denoiser):
            counts = votes(n, "predict (n)")
        order = np.argsort(-counts, kind="stable")
        top, second = int(counts[order[0]]), int(counts[order[1]]) if counts.size > 1 else 0
        p_value = top_two_pvalue(top, second)
        abstained = p_value > alpha
        return Prediction(
            label=None if abstained else int(order[0]),
            abstained=abstained,
            counts=_nonzero_counts(counts),
            n=n,
            alpha=alpha,
            sigma=self.sigma,
            p_value=p_value,
            seconds=time.perf_counter() - start,
            method=self.method,
            seed=seed,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, sigma={self.sigma}, device={self.device}, spec={self.spec})"


def _colour_channels(model: nn.Module, noise: Noise, spec: InputSpec, overridden: bool) -> InputSpec:
    """The spec fitted to the colour channels the model's first convolution reads (beyond the noise's extras)."""
    in_chans = model_input_channels(model)
    if in_chans is None or overridden:
        return spec
    colours = in_chans - noise.extra_channels
    if colours == spec.channels:
        return spec
    if noise.extra_channels == 0 and colours == spec.channels + 1:
        what = (f"the model reads {in_chans} input channels for images of {spec.channels}: it was built for "
                "hierarchical smoothing with the noise-indicator channel. ")
        raise InvalidParameterError(what + "{add}.", add=Wording("Pass hierarchical=Hierarchical(p=..., indicator=True)",
                                                                  "Add --hierarchical-p P --indicator"))
    if noise.extra_channels and (colours < 1 or in_chans == spec.channels):
        raise InvalidParameterError(f"the model reads {in_chans} input channels, but {{note}}", note=noise.input_note(spec.channels))
    return fit_to_channels(spec, colours)


class ModelOptions(TypedDict, total=False):
    """The options every ``smooth`` shares (images, ``vision_rs.video.smooth``, ``vision_rs.segmentation.smooth``).

    Model: ``pretrained`` (names load weights from the local caches only), ``weights`` (a torchvision
    WeightsEnum member, for its preset), ``checkpoint`` (safetensors or a weights-only torch file),
    ``arch`` (the architecture of a checkpoint given as the model), ``num_classes``, ``model_kwargs`` (more
    keyword arguments for a named timm / torchvision model, e.g. ``{"in_chans": 4}``). A checkpoint written by
    ``vision-rs train`` carries its architecture, classes, preprocessing and training noise: give its path as the
    model and nothing else.
    Preprocessing, read from timm's ``pretrained_cfg`` or the torchvision weights and applied after the
    noise; these override it: ``mean``, ``std``, ``input_size`` ((H, W) or (C, H, W)), ``crop_pct``,
    ``interpolation``, ``use_test_size`` (timm's ``test_input_size``).
    Speed and memory, which never change the guarantee: ``device`` (moves the model there, in place;
    a name goes to the GPU when there is one), ``batch_size`` (model inputs per forward pass),
    ``autocast_dtype``, ``channels_last``, ``streams`` (CUDA streams; ignored on the CPU), ``cuda_graphs`` (replay each
    full batch as one CUDA graph: for small models bound by kernel launches; ignored on the CPU),
    ``memory_budget`` (bytes the noisy draws of a batch and their model inputs may take; default 2 GiB),
    ``progress`` (True: a tqdm bar per sampling phase; False: none; or a function ``report(phase, done, total)``
    called as each phase starts and after each batch). ``batch_size``, ``memory_budget`` and ``device`` may change which noise values a seed
    gives, ``channels_last`` and autocast the model's rounding.
    Denoised smoothing: ``denoiser`` (an ``nn.Module`` mapping noisy [N, C, H, W] in [0, 1] to images of the
    same shape, an embedded name such as ``"digits_denoiser.sigma_0.25"``, a checkpoint of that architecture,
    or a diffusers folder; see :mod:`vision_rs.models.denoising`) runs on every noisy draw before the view, resize
    and normalisation; it is part of the base classifier, so every certificate holds unchanged.
    """

    pretrained: bool
    weights: object
    checkpoint: str | os.PathLike
    arch: str
    num_classes: int
    model_kwargs: dict[str, Any]
    mean: Sequence[float]
    std: Sequence[float]
    input_size: Sequence[int]
    crop_pct: float
    interpolation: str
    use_test_size: bool
    device: str | torch.device
    batch_size: int
    autocast_dtype: torch.dtype
    channels_last: bool
    streams: int
    cuda_graphs: bool
    memory_budget: int
    progress: bool | ProgressReport
    denoiser: DenoiserLike


_MODEL_KEYS = ("pretrained", "weights", "checkpoint", "arch", "num_classes", "model_kwargs")
_SPEC_KEYS = ("mean", "std", "input_size", "crop_pct", "interpolation", "use_test_size")
_ENGINE_KEYS = ("batch_size", "autocast_dtype", "channels_last", "streams", "cuda_graphs", "memory_budget", "progress")


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to be wrapped into a base classifier: where it came from, its input spec, the engine settings."""

    model: nn.Module
    source: ModelSource
    spec: InputSpec
    config: EngineConfig
    device: str | torch.device | None
    num_classes: int | None
    denoiser: Denoiser | None = None
    """The denoiser of denoised smoothing (loaded, fitted to σ, not yet placed); None without one."""


def prepare_model(
    model: nn.Module | str | os.PathLike,
    noise: Noise,
    options: ModelOptions,
    *,
    check: Callable[[nn.Module], None] = check_is_classifier,
    task: str = "image-classification",
) -> PreparedModel:
    """The one path from a model or name to what a smoothed classifier needs, shared by every modality.

    Loads the model (offline), checks it (``check``: a classifier by default), reads its input spec
    and fits it to the channels its first convolution reads, validates the speed options and loads the
    ``denoiser`` option (the caller puts ``prepared.denoiser`` in front of its views). ``task`` says which
    embedded models fit.
    """
    unknown = set(options) - set(ModelOptions.__annotations__)
    if unknown:
        raise InvalidParameterError(f"unknown option(s) {sorted(unknown)}; see vision_rs.smoothing.ModelOptions")
    config = EngineConfig(**{key: options[key] for key in _ENGINE_KEYS if key in options})  # type: ignore[misc]
    check_device(options.get("device"))
    num_classes = options.get("num_classes")
    if num_classes is not None:
        check_count("num_classes", num_classes)
    loaded, source, device = load_model(
        model, pretrained=options.get("pretrained", True), num_classes=num_classes, arch=options.get("arch"),
        checkpoint=options.get("checkpoint"), device=options.get("device"), task=task,
        model_kwargs=options.get("model_kwargs"),
    )
    check(loaded)
    spec = read_input_spec(loaded, weights=options.get("weights"), **{key: options[key] for key in _SPEC_KEYS if key in options})  # type: ignore[misc]
    spec = _colour_channels(loaded, noise, spec, overridden=options.get("mean") is not None)
    denoiser = None if options.get("denoiser") is None else load_denoiser(options["denoiser"], noise.sigma)
    warn_about_model(source, noise.sigma, denoised=denoiser is not None)
    return PreparedModel(loaded, source, spec, config, device, num_classes, denoiser)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-d parameter and buffer channels-last and every 5-d one channels-last-3d (in place)."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.ndim in formats:
                tensor.data = tensor.data.contiguous(memory_format=formats[tensor.ndim])
    return module


def place(base: nn.Module, prepared: PreparedModel) -> tuple[nn.Module, torch.device]:
    """Move a base model to the requested device and memory layout; return it and its device."""
    if prepared.device is not None:
        base = base.to(torch.device(prepared.device))
    if prepared.config.channels_last:
        base = to_channels_last(base)
    return base, model_device(base)


def place_denoiser(denoiser: Denoiser, device: torch.device, config: EngineConfig) -> Denoiser:
    """The denoiser's module moved to the base model's ``device`` (in place), channels-last when the engine is."""
    module = denoiser.module.to(device)
    if config.channels_last:
        module = to_channels_last(module)
    return Denoiser(module, denoiser.source, denoiser.trained_sigma)


def method_for(hierarchical: Hierarchical | None, views: ViewMaker | None, reduce: str, mode: str) -> Method:
    """Gaussian smoothing, hierarchical smoothing, or Smooth-Reduce over ``views``."""
    if hierarchical is not None and views is not None:
        raise InvalidParameterError("choose {hierarchical} or {patches}, not both",
                                    hierarchical=Wording("hierarchical=", "--hierarchical-p"),
                                    patches=Wording("patches=", "--patch-size"))
    if hierarchical is not None and not isinstance(hierarchical, Hierarchical):
        raise InvalidParameterError(f"hierarchical must be a vision_rs.Hierarchical(p=..., indicator=...), got {hierarchical!r}")
    if views is not None:
        return SmoothReduce(views, reduce, mode)
    return hierarchical if hierarchical is not None else Gaussian()


def smooth(
    model: nn.Module | str,
    sigma: float,
    *,
    hierarchical: Hierarchical | None = None,
    patches: Patches | None = None,
    reduce: str = "mean",
    mode: str = "vote",
    **options: Unpack[ModelOptions],
) -> SmoothedClassifier:
    """Wrap an image classifier for randomized smoothing with noise std ``sigma`` (in [0, 1] pixel units).

    Gaussian smoothing (Cohen et al.) by default; ``hierarchical=Hierarchical(p, indicator)``
    noises each pixel only with probability p and certifies against changes of r pixels;
    ``patches=Patches(size, stride | count)`` with ``reduce`` ("mean" | "max") and ``mode``
    ("vote" | "smoothed" | "probit-mean") is Smooth-Reduce over overlapping patches.

    ``model`` is an ``nn.Module`` (timm, torchvision, DataParallel/DDP-wrapped or
    your own) or a name: a timm name, ``"torchvision:<name>"``, an embedded name
    such as ``"digits_cnn.sigma_0.25"``, or a checkpoint path with ``arch=``.
    Feature extractors (timm ``num_classes=0``, an identity head) are refused.

    The model's evaluation preprocessing (mean/std, input size, crop_pct or resize size, crop
    mode, interpolation) is read from timm's ``pretrained_cfg`` or torchvision ``weights=`` and
    applied after the noise. Grey images are certified in grey units and repeated to the model's
    colour channels after the noise. ``options``: see :class:`ModelOptions` (model, preprocessing
    overrides, speed and memory knobs).
    """
    smoothing = method_for(hierarchical, patches, reduce, mode)
    noise = smoothing.make_noise(sigma)  # validates sigma before any model is built
    prepared = prepare_model(model, noise, options)
    base, device = place(as_normalized_classifier(prepared.model, prepared.spec, noise.extra_channels), prepared)
    return SmoothedClassifier(base, smoothing, noise, device, prepared.config, num_classes=prepared.num_classes,
                              source=prepared.source, denoiser=prepared.denoiser)


def load_model(
    model: nn.Module | str | os.PathLike,
    *,
    pretrained: bool,
    num_classes: int | None,
    arch: str | None,
    checkpoint: str | os.PathLike | None,
    device: str | torch.device | None,
    task: str = "image-classification",
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelSource, str | torch.device | None]:
    """The model to smooth, where it came from, and the device to put it on.

    A name is built (offline) on the GPU when there is one; a module stays where it is unless
    ``device`` says otherwise, and gets ``checkpoint`` loaded into it. DDP wrappers are removed:
    certification is single-process inference, and DDP's forward adds collectives.
    """
    if isinstance(model, (str, os.PathLike)):
        model, source = create_model_with_source(os.fspath(model), pretrained=pretrained, num_classes=num_classes,
                                                 arch=arch, checkpoint=checkpoint, task=task, model_kwargs=model_kwargs)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    elif not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be an nn.Module or a model name, got {type(model).__name__}")
    else:
        if model_kwargs:
            raise InvalidParameterError("model_kwargs builds a named model; a module passed in is already built")
        source = ModelSource.of_module(model)
        if checkpoint is not None:
            from .models.checkpoints import load_checkpoint_into, read_checkpoint_record

            load_checkpoint_into(model, checkpoint)
            record = read_checkpoint_record(checkpoint)
            source = source.with_checkpoint(checkpoint, training=record.get("noise") if record else None)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model, source, device


_BUILDING_TO_TRAIN = contextvars.ContextVar("vision_rs_building_to_train", default=False)


@contextlib.contextmanager
def building_to_train() -> Iterator[None]:
    """Within it, ``smooth`` builds a model that is about to be trained: :func:`warn_about_model` stays silent (its
    random weights, or weights trained with other noise, are what the training changes)."""
    token = _BUILDING_TO_TRAIN.set(True)
    try:
        yield
    finally:
        _BUILDING_TO_TRAIN.reset(token)


def warn_about_model(source: ModelSource, sigma: float, *, denoised: bool = False) -> None:
    """Warn when the certificates would say little: random weights, or a model trained with other noise than it is
    smoothed with — an embedded model, or a checkpoint of ``vision-rs train`` whose record names its noise (unless a
    denoiser stands in front of it: it then sees denoised images). Silent within :func:`building_to_train`."""
    from .models.embedded import embedded_model_info

    if _BUILDING_TO_TRAIN.get():
        return
    if source.pretrained is False and source.checkpoint is None:
        log.warning("%s has random weights (pretrained=False, CLI --no-pretrained): its certificates say nothing "
                    "about a trained model", source.name)
    if denoised:
        return
    if source.training is not None:
        trained, what = source.training.get("sigma"), f"checkpoint {source.checkpoint}"
    elif source.pretrained:
        trained, what = (embedded_model_info(source.name) or {}).get("sigma"), f"embedded model {source.name}"
    else:
        return
    if trained is None:
        return
    if float(trained) == 0:  # type: ignore[arg-type]
        log.warning("%s was trained without noise: smoothed at σ=%g without a denoiser, expect abstentions and small "
                    "radii; put one in front of it (denoiser=, CLI --denoiser)", what, sigma)
    elif abs(float(trained) - sigma) > 1e-9:  # type: ignore[arg-type]
        log.warning("%s was trained with noise σ=%g, but smoothing uses σ=%g: expect abstentions and small radii",
                    what, trained, sigma)
