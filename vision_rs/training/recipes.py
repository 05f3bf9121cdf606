"""One call per kind of training, and the held-out certification of what it wrote.

* :func:`train` trains the network of a smoothed classifier, video classifier or segmenter with the noise it is
  smoothed with (Gaussian augmentation or consistency regularisation);
* :func:`train_denoiser` trains a denoiser for denoised smoothing (mean squared error, or stability through a
  frozen classifier);
* :func:`smooth_checkpoint` smooths a checkpoint written by them with the noise its record names;
* :func:`certify_held_out` certifies held-out data with it and returns the certified-accuracy summary.

Each writes its run into a folder (see :mod:`vision_rs.training.trainer`): the checkpoint ``model.safetensors``
carries a record of what produced it — architecture, input spec, noise, loss, data, settings, seed, versions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import InvalidParameterError
from ..models.adapters import model_input_channels
from ..models.checkpoints import read_checkpoint_record
from ..runs.datasets import certify_dataset
from ..runs.inputs import check_labels
from ..runs.summaries import DEFAULT_RADII, Summary
from ..sampling.methods import Hierarchical
from ..segmentation.localized import Localized
from ..segmentation.smoothing import SmoothedSegmenter
from ..smoothing import SmoothedClassifier, smooth
from ..video.models import ClipLayout
from ..wording import Wording
from .data import SegmentationFolderData
from .losses import DenoiserMSE, GaussianAugmentation, NoiseLoss, Stability
from .noise import NoisyBaseClassifier, NoisyDenoiser, Smoothed, network_of
from .objectives import ClassifierObjective, DenoiserObjective, StabilityObjective
from .trainer import TrainConfig, Trainer, TrainResult, as_pixels

RECORD_FORMAT = 1
"""Version of the training record's layout."""


def task_of(smoothed: Smoothed) -> str:
    """The task a smoothed model's checkpoint is certified for: which ``smooth`` rebuilds it."""
    if isinstance(smoothed, SmoothedSegmenter):
        return "segmentation"
    return "video-classification" if isinstance(smoothed.base.model, ClipLayout) else "image-classification"


def architecture_of(smoothed: Smoothed, num_classes: int) -> dict[str, Any]:
    """How to build the network again by name: its source's name, classes and constructor keywords; for a module
    passed in, the ``architecture`` its timm-style ``pretrained_cfg`` names when vision-rs can build that (an embedded
    architecture or a timm model), with its input channels when they are not 3; else ``module:<class>``."""
    source = smoothed.source
    if not source.name.startswith("module:"):
        return {"name": source.name, "num_classes": num_classes, "kwargs": source.kwargs or {}}
    network = network_of(smoothed)
    named = (getattr(network, "pretrained_cfg", None) or {}).get("architecture")
    if isinstance(named, str) and _buildable(named):
        channels = model_input_channels(network)
        return {"name": named, "num_classes": num_classes,
                "kwargs": {"in_chans": channels} if channels not in (None, 3) else {}}
    return {"name": source.name, "num_classes": num_classes, "kwargs": {}}


def _buildable(name: str) -> bool:
    """Whether vision-rs builds ``name`` itself: an embedded architecture or a timm model."""
    import timm

    from ..models.embedded import architectures

    return name in architectures() or timm.is_model(name)


def describe_data(data: Dataset) -> dict[str, Any]:
    """What a record keeps of a data set: its own ``describe()``, or its type and size."""
    describe = getattr(data, "describe", None)
    if callable(describe):
        return describe()
    return {"kind": f"{type(data).__module__}.{type(data).__qualname__}", "items": len(data)}  # type: ignore[arg-type]


def _check_data_labels(data: Dataset, num_classes: int) -> None:
    """Refuse labels outside the model's classes before the first step, when the data set can list them."""
    if isinstance(data, SegmentationFolderData):
        data.check_labels(num_classes)
        return
    labels = getattr(data, "labels", None)
    if labels is None:
        labels = getattr(data, "targets", None)  # torchvision's data sets
    if labels is not None:
        check_labels([int(label) for label in labels], num_classes, getattr(data, "sources", None))


def train(
    smoothed: Smoothed,
    data: Dataset,
    out: str | os.PathLike,
    *,
    loss: NoiseLoss = GaussianAugmentation(),
    config: TrainConfig = TrainConfig(),
    region: str = "mask",
    noise: bool = True,
    record: dict[str, Any] | None = None,
    distributed: bool | None = None,
) -> TrainResult:
    """Train the network inside ``smoothed`` (in place) with the noise it is smoothed with; write the run into ``out``.

    ``smoothed``: ``vision_rs.smooth(model, sigma)`` (Gaussian; ``hierarchical=`` for hierarchical smoothing),
    ``vision_rs.video.smooth(...)`` or ``vision_rs.segmentation.smooth(...)`` (isotropic or localized). ``data``:
    a torch ``Dataset`` of (pixels in [0, 1] at their own resolution — or uint8 —, class index or label map).
    ``loss``: :class:`GaussianAugmentation` (default) or :class:`Consistency`. ``region``: for localized
    segmentation, score every pixel (``"mask"``) or only the drawn cell's (``"cell"``). ``noise=False`` trains on the
    clean inputs (a baseline, or the classifier of denoised smoothing; recorded as trained without noise). ``record``: more of what
    produced the run (kept in the checkpoint). Resumes a run that ``out`` holds. Labels outside the network's
    classes are refused before the first step.
    """
    noisy = NoisyBaseClassifier(smoothed, seed=config.seed, noise_free=not noise)
    num_classes = smoothed.num_classes or smoothed.count_classes(as_pixels(torch.as_tensor(data[0][0])))
    _check_data_labels(data, num_classes)
    objective = ClassifierObjective(noisy, loss, region=region, num_classes=num_classes)
    full_record = {"format": RECORD_FORMAT, "task": task_of(smoothed), "architecture": architecture_of(smoothed, num_classes),
                   "spec": smoothed.spec.describe(), **objective.describe(), "data": describe_data(data), **(record or {})}
    return Trainer(objective, data, out, config, full_record, distributed=distributed).fit()


def train_denoiser(
    denoiser: nn.Module,
    data: Dataset,
    out: str | os.PathLike,
    *,
    sigma: float,
    loss: DenoiserMSE | Stability = DenoiserMSE(),
    classifier: nn.Module | str | None = None,
    config: TrainConfig = TrainConfig(),
    device: str | torch.device = "cpu",
    architecture: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    distributed: bool | None = None,
    **classifier_options: Any,
) -> TrainResult:
    """Train ``denoiser`` (in place) to remove N(0, σ²) noise ([0, 1] pixel units) for denoised smoothing.

    ``loss``: :class:`DenoiserMSE` (no classifier) or :class:`Stability`, which needs ``classifier`` (a module or a
    name, smoothed with ``classifier_options`` as :func:`vision_rs.smooth` takes them) and keeps it frozen.
    ``data`` yields (clean pixels, anything): the labels are not used. ``architecture``: how the denoiser is built
    again (``{"name": "digits_denoiser"}`` for the embedded one; recorded).
    """
    denoiser = denoiser.to(device)
    if isinstance(loss, Stability):
        if classifier is None:
            raise InvalidParameterError("the stability loss trains the denoiser through a frozen classifier: give "
                                        "{classifier}", classifier=Wording("classifier=...", "--classifier MODEL"))
        smoothed = smooth(classifier, sigma, denoiser=denoiser, device=device, progress=False, **classifier_options)
        objective: DenoiserObjective | StabilityObjective = StabilityObjective(
            NoisyBaseClassifier(smoothed, seed=config.seed, frozen_base=True), loss)
    elif isinstance(loss, DenoiserMSE):
        if classifier is not None:
            raise InvalidParameterError("the mse loss needs no classifier; use loss=Stability() to train through one")
        objective = DenoiserObjective(NoisyDenoiser(denoiser, sigma, device=device, seed=config.seed), loss, device)
    else:
        raise InvalidParameterError(f"a denoiser trains with DenoiserMSE() or Stability(), got {loss!r}")
    kind = type(denoiser)
    full_record = {"format": RECORD_FORMAT, "task": "denoiser",
                   "architecture": architecture or {"name": f"module:{kind.__module__}.{kind.__qualname__}"},
                   **objective.describe(), "data": describe_data(data), **(record or {})}
    return Trainer(objective, data, out, config, full_record, distributed=distributed).fit()


def smooth_checkpoint(path: str | os.PathLike, **options: Any) -> Smoothed:
    """A checkpoint of :func:`train` smoothed with the noise it was trained with (its record says which), by the
    ``smooth`` of its task. ``options``: as ``vision_rs.smooth`` takes them (device, batch_size, ...)."""
    record = read_checkpoint_record(path)
    if record is None or "noise" not in record:
        raise InvalidParameterError(f"{path} has no vision-rs training record: smooth it with vision_rs.smooth(...)")
    noise, task = record["noise"], record.get("task", "image-classification")
    if not noise.get("sigma"):
        raise InvalidParameterError(f"{path} was trained without noise: smooth it with vision_rs.smooth(path, sigma, "
                                    "denoiser=...) at the σ you choose")
    details, sigma = noise.get("details") or {}, float(noise["sigma"])
    if task == "segmentation":
        from ..segmentation.smoothing import smooth as smooth_segmentation

        if noise["method"] == "localized":
            localized = Localized(tuple(details["grid"]), details["sigma_min"], details["sigma_max"])  # type: ignore[arg-type]
            return smooth_segmentation(os.fspath(path), localized=localized, **options)
        return smooth_segmentation(os.fspath(path), sigma, **options)
    if task == "video-classification":
        from ..video.smoothing import smooth as smooth_video

        return smooth_video(os.fspath(path), sigma, **options)
    hierarchical = Hierarchical(details["p"], bool(details.get("indicator"))) if noise["method"] == "hierarchical" else None
    return smooth(os.fspath(path), sigma, hierarchical=hierarchical, **options)


def certify_held_out(
    smoothed: Smoothed,
    items: Sequence[tuple[Any, Any]],
    out: str | os.PathLike,
    *,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    radii: Sequence[float] = DEFAULT_RADII,
    progress: bool = True,
) -> Summary | object:
    """Certify held-out (input, label) ``items`` into ``out`` (TSV + JSONL, resumable); the run's summary (a
    classification :class:`~vision_rs.runs.summaries.Summary`, or a segmentation summary)."""
    if isinstance(smoothed, SmoothedSegmenter):
        from ..segmentation.datasets import certify_segmentation_dataset, summarize_segmentation

        certify_segmentation_dataset(smoothed, items, out, n0=n0, n=n, alpha=alpha, seed=seed, progress=progress)
        return summarize_segmentation(out)
    assert isinstance(smoothed, SmoothedClassifier)
    return certify_dataset(smoothed, items, out, n0=n0, n=n, alpha=alpha, seed=seed, radii=radii, progress=progress)


@torch.no_grad()
def denoising_psnr(denoiser: nn.Module, images: torch.Tensor, sigma: float, *, seed: int = 0) -> tuple[float, float]:
    """(PSNR of the noisy images, PSNR of the denoised ones) in dB, peak 1, over ``images`` [N, C, H, W] in [0, 1]
    (uint8 is divided by 255) under one draw of N(0, σ²) noise seeded with ``seed``."""
    device = next(iter(denoiser.parameters())).device
    clean = as_pixels(images).to(device)
    noisy = NoisyDenoiser(nn.Identity(), sigma, device=device, seed=seed)(clean)[0]
    was_training = denoiser.training
    denoiser.eval()
    try:
        denoised = denoiser(noisy)
    finally:
        denoiser.train(was_training)

    def psnr(estimate: torch.Tensor) -> float:
        return float(-10 * torch.log10(torch.mean((estimate - clean) ** 2)))

    return psnr(noisy), psnr(denoised)


__all__ = ["certify_held_out", "denoising_psnr", "network_of", "smooth_checkpoint", "train", "train_denoiser"]
