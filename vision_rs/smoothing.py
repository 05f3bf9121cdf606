"""The smoothed classifier and the one-line ``smooth`` wrapper."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .engine import EngineConfig, VoteTally, sample
from .errors import InvalidParameterError
from .hub import create_model
from .images import ImageInput, to_unit_tensor
from .models import NormalizedClassifier, as_normalized_classifier, evaluation_mode, model_device, read_input_spec
from .methods import Gaussian, Hierarchical, Method
from .params import check_alpha, check_count, check_seed
from .results import Certificate, Prediction
from .stats import top_two_pvalue
from .views import View, WholeImage

log = logging.getLogger(__name__)


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
        view: View,
        device: torch.device,
        config: EngineConfig,
        num_classes: int | None = None,
    ) -> None:
        self.base = base
        self.smoothing = smoothing
        self.noise = smoothing.make_noise(sigma)
        self.view = view
        self.device = device
        self.config = config
        self.num_classes = num_classes

    @property
    def method(self) -> str:
        """Name of the smoothing method (``"gaussian"``, ``"hierarchical"``)."""
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
    ) -> tuple[Callable[[int, str], np.ndarray], int]:
        """Validate the image once; return ``votes(num, desc)`` drawing from one seeded stream, and the seed."""
        config = self.config.with_overrides(batch_size, progress)
        pixels = to_unit_tensor(image, channels=self.base.spec.channels).to(self.device)
        generator, seed = _generator(self.device, seed)

        def votes(num: int, desc: str) -> np.ndarray:
            tally = VoteTally()
            return sample(self.base, pixels, self.noise, self.view, tally, num, generator, config, self.num_classes, desc)

        return votes, seed

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
        votes, seed = self._vote_counter(image, batch_size, progress, seed)
        start = time.perf_counter()
        with evaluation_mode(self.base):
            candidate = int(votes(n0, "select (n0)").argmax())
            estimation = votes(n, "estimate (n)")
        bound = self.smoothing.bound(candidate, estimation, n, alpha, self.sigma)
        return Certificate(
            label=bound.label,
            radius=bound.radius,
            p_lower=bound.p_lower,
            p_upper=bound.p_upper,
            counts=_nonzero_counts(estimation),
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
        votes, seed = self._vote_counter(image, batch_size, progress, seed)
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
    progress: bool = True,
) -> SmoothedClassifier:
    """Wrap a classifier for randomized smoothing with noise std ``sigma`` (in [0, 1] pixel units).

    Gaussian smoothing (Cohen et al.) by default; ``hierarchical=Hierarchical(p, indicator)``
    noises each pixel only with probability p and certifies against changes of r pixels.

    ``model`` is an ``nn.Module`` (timm, torchvision, DataParallel/DDP-wrapped or
    your own) or a name: a timm name, ``"torchvision:<name>"``, an embedded name
    such as ``"digits_cnn.sigma_0.25"``, or a checkpoint path with ``arch=``.
    Names load pretrained weights from the local caches only (``pretrained``),
    or ``checkpoint=`` (safetensors or a weights-only torch file).

    Normalisation (mean/std) and input size are read from timm's
    ``pretrained_cfg`` or torchvision ``weights=``; ``mean``/``std``/``input_size``
    override them. ``device`` moves the model there (in place); by default the
    model stays where it is. ``batch_size``, ``autocast_dtype``,
    ``channels_last`` and ``progress`` only change speed and display.
    """
    smoothing: Method = hierarchical if hierarchical is not None else Gaussian()
    if not isinstance(smoothing, (Gaussian, Hierarchical)):
        raise InvalidParameterError(f"hierarchical must be a vision_rs.Hierarchical(p=..., indicator=...), got {hierarchical!r}")
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
    view = WholeImage(input_size=spec.input_size[1:] if spec.input_size is not None else None)
    config = EngineConfig(batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last, progress=progress)
    return SmoothedClassifier(base, smoothing, sigma, view, model_device(base), config, num_classes=num_classes)
