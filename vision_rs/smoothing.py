"""The smoothed classifier and the one-line ``smooth`` wrapper."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .engine import EngineConfig, sample
from .errors import InvalidParameterError
from .hub import create_model
from .images import ImageInput, to_unit_tensor
from .models import NormalizedClassifier, as_normalized_classifier, evaluation_mode, model_device, read_input_spec
from .methods import Gaussian, Hierarchical, Method, SmoothReduce
from .patches import Patches
from .params import check_alpha, check_count, check_seed
from .results import Certificate, Prediction
from .stats import top_two_pvalue
from .views import View


def _nonzero_counts(counts: np.ndarray) -> dict[int, int]:
    return {int(c): int(v) for c, v in enumerate(counts) if v}


def _generator(device: torch.device, seed: int | None) -> tuple[torch.Generator, int]:
    seed = check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        return generator, int(generator.seed())
    generator.manual_seed(seed)
    return generator, seed


class SmoothedClassifier:
    """A base classifier smoothed with noise: ``certify`` gives a label with a certified L2 radius, ``predict`` a label.

    Build it with :func:`smooth`. All radii and σ are in [0, 1] pixel units,
    L2 over all pixels and channels, at the resolution of the image passed in.
    """

    def __init__(
        self,
        base: NormalizedClassifier,
        smoothing: Method,
        sigma: float,
        input_size: tuple[int, int] | None,
        device: torch.device,
        config: EngineConfig,
        num_classes: int | None = None,
    ) -> None:
        self.base = base
        self.smoothing = smoothing
        self.noise = smoothing.make_noise(sigma)
        self.input_size = input_size
        """(H, W) the model runs at, or None (any size)."""
        self.device = device
        self.config = config
        self.num_classes = num_classes

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
    def spec(self):
        """The base model's :class:`~vision_rs.models.InputSpec` (mean, std, input size)."""
        return self.base.spec

    def _vote_counter(
        self, image: ImageInput, batch_size: int | None, progress: bool | None, seed: int | None
    ) -> tuple[Callable[[int, str], np.ndarray], View, int]:
        """Validate the image once; return ``votes(num, desc)`` drawing from one seeded stream, the view, the seed."""
        config = self.config.with_overrides(batch_size, progress)
        pixels = to_unit_tensor(image, channels=self.base.spec.channels).to(self.device)
        generator, seed = _generator(self.device, seed)
        view = self.smoothing.make_view(tuple(pixels.shape[-2:]), self.input_size, generator)

        def votes(num: int, desc: str) -> np.ndarray:
            tally = self.smoothing.make_tally()
            return sample(self.base, pixels, self.noise, view, tally, num, generator, config, self.num_classes, desc)

        return votes, view, seed

    def certify(
        self,
        image: ImageInput,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY: choose the class on ``n0`` samples, bound its probability on ``n`` fresh ones.

        With probability ≥ 1 − ``alpha`` over the sampling, the smoothed classifier
        predicts ``label`` for every input within L2 distance ``radius`` of ``image``
        (hierarchical smoothing: within ``radius_for(r)`` for changes of at most r pixels).
        Abstains (``label=None``, ``radius=0``) when the bound does not clear its threshold.
        """
        n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
        votes, view, seed = self._vote_counter(image, batch_size, progress, seed)
        start = time.perf_counter()
        with evaluation_mode(self.base):
            candidate = self.smoothing.select(votes(n0, "select (n0)"))
            estimation = votes(n, "estimate (n)")
        bound = self.smoothing.bound(candidate, estimation, n, alpha, self.sigma, view)
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
        )

    def predict(
        self,
        image: ImageInput,
        n: int = 1000,
        alpha: float = 0.001,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool | None = None,
    ) -> Prediction:
        """Cohen et al.'s PREDICT: the top class of ``n`` samples, unless a two-sided binomial test of the
        top two counts cannot reject a tie at level ``alpha`` (then abstain). Wrong with probability ≤ α."""
        n, alpha = check_count("n", n), check_alpha(alpha)
        if not self.smoothing.votes_once_per_draw:
            raise InvalidParameterError(f"predict needs one vote per draw; use certify for mode={self.details.get('mode')!r}")
        votes, _, seed = self._vote_counter(image, batch_size, progress, seed)
        start = time.perf_counter()
        with evaluation_mode(self.base):
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


def smooth(
    model: nn.Module | str,
    sigma: float,
    *,
    hierarchical: Hierarchical | None = None,
    patches: Patches | None = None,
    reduce: str = "mean",
    mode: str = "vote",
    pretrained: bool = True,
    weights: object | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    num_classes: int | None = None,
    arch: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    streams: int = 2,
    progress: bool = True,
) -> SmoothedClassifier:
    """Wrap a classifier for randomized smoothing with noise std ``sigma`` (in [0, 1] pixel units).

    Gaussian smoothing (Cohen et al.) by default; ``hierarchical=Hierarchical(p, indicator)``
    noises each pixel only with probability p and certifies against changes of r pixels;
    ``patches=Patches(size, stride | count)`` with ``reduce`` ("mean" | "max") and ``mode``
    ("vote" | "smoothed" | "probit-mean") is Smooth-Reduce over overlapping patches.

    ``model`` is an ``nn.Module`` (timm, torchvision, DataParallel/DDP-wrapped or
    your own) or a name: a timm name, ``"torchvision:<name>"``, an embedded name
    such as ``"digits_cnn.sigma_0.25"``, or a checkpoint path with ``arch=``.
    Names load pretrained weights from the local caches only (``pretrained``),
    or ``checkpoint=`` (safetensors or a weights-only torch file).

    Normalisation (mean/std) and input size are read from timm's
    ``pretrained_cfg`` or torchvision ``weights=``; ``mean``/``std``/``input_size``
    override them. ``device`` moves the model there (in place); by default the
    model stays where it is. ``batch_size``, ``autocast_dtype``,
    ``channels_last``, ``streams`` (CUDA streams that consecutive batches
    alternate between; ignored on the CPU) and ``progress`` change speed and
    display, never the guarantee (``batch_size`` and ``device`` may change which
    noise values a seed gives, ``channels_last`` and autocast the model's rounding).
    """
    if hierarchical is not None and patches is not None:
        raise InvalidParameterError("choose hierarchical= or patches=, not both")
    if hierarchical is not None and not isinstance(hierarchical, Hierarchical):
        raise InvalidParameterError(f"hierarchical must be a vision_rs.Hierarchical(p=..., indicator=...), got {hierarchical!r}")
    smoothing: Method = (
        hierarchical if hierarchical is not None
        else SmoothReduce(patches, reduce, mode) if patches is not None
        else Gaussian()
    )
    smoothing.make_noise(sigma)  # validates sigma before any model is built
    if num_classes is not None:
        check_count("num_classes", num_classes)
    if isinstance(model, (str, os.PathLike)):
        model = create_model(os.fspath(model), pretrained=pretrained, num_classes=num_classes, arch=arch, checkpoint=checkpoint)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    elif not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be an nn.Module or a model name, got {type(model).__name__}")
    elif checkpoint is not None:
        from .checkpoints import load_checkpoint_into

        load_checkpoint_into(model, checkpoint)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # certification is single-process inference; DDP's forward adds collectives
    spec = read_input_spec(model, weights=weights, mean=mean, std=std, input_size=input_size)
    base = as_normalized_classifier(model, spec)
    if device is not None:
        base = base.to(torch.device(device))
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    config = EngineConfig(batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last,
                          streams=streams, progress=progress)
    size = spec.input_size[1:] if spec.input_size is not None else None
    return SmoothedClassifier(base, smoothing, sigma, size, model_device(base), config, num_classes=num_classes)
