"""What the app's three tabs compute, without gradio: inputs checked against the app's limits, the smoothed model
built from a catalog choice, the certificate, what the page says of it (advice after an abstention, a warning for
inputs unlike the training data, one perturbation inside the certified ball), and its pictures and tables.

Every error raised on purpose is a :class:`~vision_rs.errors.VisionRSError` (the page shows its message). A run
given a ``stop`` event ends at its next forward pass once the event is set (:class:`CertificationCancelled`): a
forward pre-hook on the smoothed model, removed afterwards; the model's train/eval flags are restored by the
engine's ``evaluation_mode`` on the way out, as after any error. A run given a ``progress`` function shows it a
:class:`~vision_rs.app.progress.ProgressLine` (draws done of the run's planned total) after every batch.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from ..errors import InvalidImageError, InvalidParameterError, InvalidVideoError, VisionRSError
from ..images import read_image_file
from ..models.adapters import evaluation_mode
from ..models.hub import TORCHVISION_PREFIX
from ..sampling.engine import ViewVoteTally, sample
from ..sampling.results import Certificate
from ..smoothing import SmoothedClassifier, seeded_generator
from . import pictures
from .ball import SHARE, BallPoint, inside_ball, margin_gradient
from .catalog import IMAGE, SEGMENTATION, VIDEO, ModelCatalog, ModelChoice
from .progress import ProgressLine, RunProgress

METHODS = ("Gaussian", "Smooth-Reduce", "Hierarchical")
EXAMPLES = 24
"""Embedded examples offered per tab (the first ones of each test split)."""
PROJECTION_SIZES = tuple(int(v) for v in np.unique(np.geomspace(100, 1_000_000, 31).round()))
"""Sample sizes N of the radius-against-N plot."""
COLLECTIVE_BINS_ABOVE = 256 * 256
"""Masks with more pixels are solved with each cell's bounds binned (conservative, faster)."""
COLLECTIVE_BINS = 128


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask of the server."""

    max_file_size: int = 20 << 20
    """Bytes of one upload (gradio refuses larger ones before they reach the app)."""
    max_image_pixels: int = 1024 * 1024
    max_video_frames: int = 64
    max_frame_pixels: int = 640 * 480
    max_n0: int = 100_000
    max_n: int = 1_000_000
    view_draws: int = 200
    """Draws of the separate, display-only run that counts each view's votes (Smooth-Reduce, sub-clips)."""
    ball_draws: int = 1000
    """Most estimation draws of the display-only certification of the perturbed input (see :mod:`.ball`)."""
    max_eps: int = 12
    """ε values of one segmentation plot."""


class CertificationCancelled(VisionRSError):
    """The user cancelled the certification."""


# ------------------------------------------------------------------------------------------------ parameters


def whole(value: object, name: str, low: int = 1, high: int | None = None) -> int:
    """An integer parameter from the page (a whole float such as 5.0 is taken), within [low, high]."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidParameterError(f"{name} must be a whole number >= {low}, got {value!r}")
    if high is not None and value > high:
        raise InvalidParameterError(f"{name} = {value:,} is more than this app allows ({high:,}); certify larger runs "
                                    "with the vision-rs command line")
    return int(value)


def real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidParameterError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def optional_classes(value: object) -> int | None:
    """The checkpoint's class count (None or 0: the architecture's own)."""
    return None if value in (None, 0, 0.0, "") else whole(value, "number of classes")


def parse_eps(text: str, most: int) -> list[float]:
    """'0.1, 0.25 0.5' → [0.1, 0.25, 0.5]: L2 budgets ≥ 0, at most ``most`` of them, sorted."""
    from ..segmentation.certificates import check_eps

    parts = [part for part in re.split(r"[,\s;]+", str(text)) if part]
    try:
        values = sorted({check_eps(float(part)) for part in parts})
    except ValueError as exc:
        raise InvalidParameterError(f"ε must be numbers >= 0 separated by commas, e.g. 0.1, 0.25, 0.5, got {text!r}") from exc
    if not values or len(values) > most:
        raise InvalidParameterError(f"give between 1 and {most} ε values, got {len(values)}")
    return values


# ------------------------------------------------------------------------------------------------ stopping


@contextlib.contextmanager
def stoppable(modules: Sequence[nn.Module], stop: threading.Event | None) -> Iterator[None]:
    """While inside, a forward pass of any of ``modules`` raises CertificationCancelled once ``stop`` is set."""
    if stop is None:
        yield
        return

    def check(_module: nn.Module, _inputs: object) -> None:
        if stop.is_set():
            raise CertificationCancelled("the certification was cancelled")

    if stop.is_set():
        raise CertificationCancelled("the certification was cancelled")
    handles = [module.register_forward_pre_hook(check) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------ inputs


def _hide_path(message: str, path: Path) -> str:
    """A message about an upload with the server's temporary path replaced by the file's own name."""
    return message.replace(str(path), path.name).replace(str(path.parent), "")


def read_image_upload(path: str | Path, limits: AppLimits) -> torch.Tensor:
    """uint8 [C, H, W] of an uploaded image, its size checked against the limits before its pixels are decoded."""
    path = Path(path)
    try:
        with Image.open(path) as pil:
            width, height = pil.size
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{path.name} is too large to decode safely ({exc}); resize it first") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"cannot read {path.name} as an image ({_hide_path(str(exc), path)}). "
                                "Upload a complete PNG, JPEG, BMP, GIF, TIFF or WebP file.") from exc
    if width * height > limits.max_image_pixels:
        raise InvalidImageError(f"{path.name} is {width}×{height} pixels; this app certifies images of at most "
                                f"{limits.max_image_pixels:,} pixels. Resize it first.")
    try:
        return read_image_file(path)
    except InvalidImageError as exc:
        raise InvalidImageError(_hide_path(str(exc), path)) from exc


def read_video_upload(path: str | Path, limits: AppLimits) -> torch.Tensor:
    """float [T, 3, H, W] of an uploaded video; its frame count and size are checked on its first frame."""
    from ..video import read_clip_info

    path = Path(path)
    try:
        head = read_clip_info(path, frames=1)
        if head.total_frames > limits.max_video_frames:
            raise InvalidVideoError(f"{path.name} has {head.total_frames} frames; this app certifies clips of at most "
                                    f"{limits.max_video_frames} frames. Trim it, or certify it with `vision-rs "
                                    "certify-video --frames N`.")
        height, width = head.source_size
        if height * width > limits.max_frame_pixels:
            raise InvalidVideoError(f"{path.name} has {width}×{height} frames; this app certifies frames of at most "
                                    f"{limits.max_frame_pixels:,} pixels. Resize it first.")
        return read_clip_info(path).pixels
    except InvalidVideoError as exc:
        raise InvalidVideoError(_hide_path(str(exc), path)) from exc


def _example_index(index: object) -> int:
    return whole(index, "example", 0, EXAMPLES - 1)


def digit_example(index: object) -> tuple[torch.Tensor, int]:
    """Embedded test digit ``index``: uint8 [3, 32, 32] and its class."""
    from ..models.embedded import DigitsDataset

    return DigitsDataset("test")[_example_index(index)]


def clip_example(index: object) -> tuple[torch.Tensor, int]:
    """Embedded moving-digit test clip ``index``: uint8 [16, 3, 32, 32] and its class."""
    from ..models.embedded.clips import digit_clips

    clips, labels = digit_clips("test")
    i = _example_index(index)
    return clips[i], int(labels[i])


def scene_example(index: object) -> tuple[torch.Tensor, np.ndarray]:
    """Embedded test scene ``index``: uint8 [3, 64, 64] and its label map int64 [64, 64]."""
    from ..models.embedded.scenes import DigitScenes

    image, truth = DigitScenes("test")[_example_index(index)]
    return image, truth.numpy()


# ------------------------------------------------------------------------------------------------ class names


def class_namer(choice: ModelChoice, num_classes: int | None) -> pictures.ClassNames:
    """Index → name: digits for the embedded models, the weights' categories for torchvision, ImageNet's for timm."""
    if choice.name.startswith("digits_segnet"):
        return lambda i: "background" if i == 10 else f"digit {i}"
    if choice.name.startswith("digits_"):
        return lambda i: f"digit {i}"
    categories: Sequence[str] = ()
    if num_classes is None and choice.name.startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        categories = tvm.get_model_weights(choice.name[len(TORCHVISION_PREFIX):]).DEFAULT.meta.get("categories", ())
    elif num_classes is None and choice.key.startswith("timm:"):
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        categories = [info.index_to_description(i) for i in range(1000)]
    return lambda i: categories[i] if 0 <= i < len(categories) else f"class {i}"


# ------------------------------------------------------------------------------------------------ shared pieces


def vote_shares(counts: dict[int, int], total: int, names: pictures.ClassNames, most: int = 5) -> dict[str, float]:
    """The ``most`` classes with most votes → their share of ``total`` (what ``gr.Label`` shows)."""
    top = sorted(counts.items(), key=lambda item: -item[1])[:most]
    return {names(cls): count / total for cls, count in top}


def view_votes(smoothed: SmoothedClassifier, data: Any, seed: int, draws: int) -> tuple[Any, np.ndarray]:
    """Votes per view and class [views, classes] of ``draws`` separate draws, for display: the views are made from a
    generator seeded like the certificate's, so random patch positions are the certificate's own."""
    pixels = smoothed.inputs(data, smoothed.spec.channels).to(smoothed.device)
    generator, _ = seeded_generator(smoothed.device, seed)
    view = smoothed.smoothing.make_view(tuple(pixels.shape), smoothed.spec.transform, generator)
    with evaluation_mode(smoothed.base):
        counts = sample(smoothed.base, pixels, smoothed.noise, view, ViewVoteTally(smoothed.num_classes), draws,
                        generator, smoothed.config, "per-view votes (display)")
    return view, counts


def _counts_array(counts: dict[int, int], candidate: int) -> np.ndarray:
    array = np.zeros(max([candidate, *counts]) + 1, dtype=np.int64)
    for cls, count in counts.items():
        array[cls] = count
    return array


def projected_radii(smoothed: SmoothedClassifier, cert: Certificate, view: Any, view_counts: np.ndarray | None,
                    sizes: Sequence[int] = PROJECTION_SIZES) -> tuple[list[int], list[float], str]:
    """The radius the method's own bound gives with N estimation samples at the observed vote shares, for each N.

    Methods with one vote per draw use the certificate's counts; the per-view modes use the display run's
    per-view counts. Returns the sizes (with the run's n), the radii and a note saying which.
    """
    if smoothed.smoothing.votes_once_per_draw:
        votes, total, note = _counts_array(cert.counts, cert.candidate), cert.n, "at this run's vote shares"
    else:
        votes, total = view_counts, int(view_counts[0].sum())  # type: ignore[index]
        note = f"at the per-view vote shares of {total} display draws"
    sizes = sorted({*sizes, cert.n})
    radii = [smoothed.smoothing.bound(cert.candidate, np.rint(votes * (size / total)).astype(np.int64), size, cert.alpha,
                                      cert.sigma, view).radius for size in sizes]
    return sizes, radii, note


def abstain_reason(cert: Certificate) -> str:
    if cert.details.get("mode") == "probit-mean":
        return "the lower bound on the mean probit margin of the candidate over every other class is not positive"
    if cert.p_upper is not None:
        return (f"the lower bound p̲A = {cert.p_lower:.4f} on the candidate's probability does not exceed the upper "
                f"bound p̄B = {cert.p_upper:.4f} on every other class (α = {cert.alpha:g})")
    return (f"the lower bound p̲A = {cert.p_lower:.4f} on the candidate's probability is not above 1/2 (α = "
            f"{cert.alpha:g})")


def _method_text(cert: Certificate) -> str:
    if cert.method == "hierarchical":
        return f"hierarchical, p = {cert.details['p']}, indicator {'on' if cert.details['indicator'] else 'off'}"
    if cert.method == "smooth-reduce":
        patches, subclips = cert.details.get("patches"), cert.details.get("subclips")
        if patches:
            size, stride = patches["size"], patches["stride"] or ["random"] * 2
            views = f"{cert.views} patches of {size[0]}×{size[1]}, stride {stride[0]}×{stride[1]}"
        else:
            views = f"{cert.views} sub-clips of {subclips['length']} frames, stride {subclips['stride']}"
        return (f"Smooth-Reduce, {views}, reduce {cert.details['reduce']}, mode {cert.details['mode']}, "
                f"at most {cert.c_max} views per pixel")
    return "Gaussian"


def abstain_advice(cert: Certificate, sizes: Sequence[int], radii: Sequence[float], one_vote_per_draw: bool) -> str:
    """What may certify instead, read off the radius that N samples would give at this run's vote shares (the plot
    of radius against N): the N that would certify, or why no N up to the plot's largest would."""
    enough = [size for size, radius in zip(sizes, radii) if size > cert.n and radius > 0]
    if enough:
        return (f"At these vote shares about N = {enough[0]:,} estimation samples would certify (the plot of radius "
                "against N): a larger n may help.")
    share = cert.counts.get(cert.candidate, 0) / max(1, sum(cert.counts.values()))
    why = (f"the candidate has {share:.1%} of the votes, and more samples only bring p̲A closer to that share, which "
           "is not above 1/2" if one_vote_per_draw and share <= 0.5 else
           f"even N = {max(sizes):,} samples at these vote shares would not certify (the plot stays at 0)")
    return (f"More samples cannot help: {why}. A model trained with this noise, another σ or another input may "
            "certify.")


def certificate_markdown(cert: Certificate, names: pictures.ClassNames, what: str, truth: int | None,
                         notes: Sequence[str] = (), advice: str = "", warning: str = "") -> str:
    """The certificate as the page shows it: the verdict (with ``advice`` when it abstained, and ``warning`` about the
    input under it), then a table of its numbers and the ``notes``."""
    if cert.abstained:
        head = f"### Abstained\nNo class is certified: {abstain_reason(cert)}. {advice}".rstrip()
    else:
        head = (f"### Certified: {names(int(cert.label))}, radius {cert.radius:.4f}\nEvery perturbation of L2 norm below "  # type: ignore[arg-type]
                f"{cert.radius:.4f} ([0, 1] pixel units, over all {what}) keeps this prediction, with probability "
                f"≥ 1 − {cert.alpha:g} over the sampling.")
    if warning:
        head += f"\n\n{warning}"
    if truth is not None:
        verdict = "correct" if cert.label == truth else "abstained" if cert.abstained else "wrong"
        head += f"\n\nTrue class: {names(truth)} ({verdict})."
    rows = [
        ("candidate (from n0)", names(cert.candidate)),
        ("votes for it", f"{cert.counts.get(cert.candidate, 0):,} of {sum(cert.counts.values()):,}"
                         + (" (views × draws)" if sum(cert.counts.values()) != cert.n else "")),
        ("p̲A (lower bound)", f"{cert.p_lower:.4f}"),
        *([("p̄B (upper bound, others)", f"{cert.p_upper:.4f}")] if cert.p_upper is not None else []),
        ("method", _method_text(cert)),
        ("σ, n0, n, α", f"{cert.sigma:g}, {cert.n0:,}, {cert.n:,}, {cert.alpha:g}"),
        ("seed", str(cert.seed)),
        ("time", f"{cert.seconds:.2f} s"),
    ]
    table = "\n".join(["| certificate | |", "|---|---|", *[f"| {key} | {value} |" for key, value in rows]])
    extra = "".join(f"\n\n{note}" for note in notes if note)
    return f"{head}\n\n{table}{extra}"


def unlike_training_warning(choice: ModelChoice, pixels: torch.Tensor, answers: str) -> str:
    """A warning when ``pixels`` (an image [3, H, W] or a clip [T, 3, H, W] in [0, 1]) is unlike the data ``choice``
    was trained on (:mod:`vision_rs.models.embedded.typicality`); '' when it is like it or there is no data to check
    against. ``answers``: what the model answers for any input ('a digit')."""
    if choice.reference is None or pixels.shape[-3] not in (1, 3):
        return ""
    from ..models.embedded.typicality import TRAINING_DATA, training_statistics

    reference = training_statistics(choice.reference)
    check = reference.check(pixels.expand(*pixels.shape[:-3], 3, *pixels.shape[-2:]))
    if not check.unusual:
        return ""
    return (f"**This input is unlike the data the model was trained on** ({TRAINING_DATA[choice.reference]}): its "
            f"image statistics lie farther from the training images' than those of every one of the "
            f"{len(reference.held_back):,} training images held back to calibrate this check (p = {check.p_value:.4f}). "
            f"The certificate is exact about the smoothed classifier, but that classifier answers {answers} for "
            "any input: the answer says nothing about what this input shows.")


def sigma_note(choice: ModelChoice, sigma: float) -> str:
    if choice.sigma is not None and abs(choice.sigma - sigma) > 1e-9:
        return (f"Note: {choice.name} was trained with noise σ = {choice.sigma:g}, and this run smooths with σ = "
                f"{sigma:g}: expect abstentions and small radii.")
    return ""


# ------------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class SamplingRequest:
    """What every tab asks: σ (in [0, 1] pixel units; σ_min for localized smoothing), the sampling, and the
    architecture of a checkpoint model (a timm, torchvision: or embedded name) with its class count."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    seed: int = 0
    arch: str = ""
    num_classes: int | None = None


@dataclass(frozen=True)
class ImageRequest(SamplingRequest):
    """The image tab's settings (patch sizes in pixels of the input)."""

    model: str = "embedded:digits_cnn.sigma_0.25"
    method: str = "Gaussian"
    patch_size: int = 28
    patch_stride: int = 4
    reduce: str = "mean"
    mode: str = "vote"
    p: float = 0.85
    indicator: bool = True


@dataclass(frozen=True)
class VideoRequest(SamplingRequest):
    """The video tab's settings; sub-clips along time are temporal Smooth-Reduce."""

    model: str = "embedded:digits_c3d.sigma_0.25"
    n0: int = 60
    n: int = 600
    subclips: bool = False
    subclip_length: int = 8
    subclip_stride: int = 4
    reduce: str = "mean"
    mode: str = "vote"


@dataclass(frozen=True)
class SegmentationRequest(SamplingRequest):
    """The segmentation tab's settings: an isotropic model, a localized one, or both (each may be '' to skip)."""

    isotropic_model: str = "embedded:digits_segnet.sigma_0.25"
    localized_model: str = "embedded:digits_segnet_localized.grid_3x3_sigma_0.25_1.00"
    grid_rows: int = 3
    grid_cols: int = 3
    sigma_min: float = 0.25
    sigma_max: float = 1.0
    n0: int = 10
    n: int = 100
    alpha: float = 0.01
    eps: str = "0, 0.1, 0.25, 0.5, 0.75, 1.0"


@dataclass
class ImageResult:
    certificate: Certificate
    summary: str
    shares: dict[str, float]
    picture: Image.Image | None
    """Smooth-Reduce: what each patch sees and how it votes (None for the other methods)."""
    budgets: list[tuple[int, float]]
    """Hierarchical smoothing: (r changed pixels, certified L2 budget); empty for other methods."""
    sample_plot: Any
    view_counts: np.ndarray | None = None
    ball: BallPoint | None = None
    """A perturbation inside the certified ball (None when the run abstained)."""
    ball_picture: Image.Image | None = None
    ball_text: str = ""


@dataclass
class VideoResult:
    certificate: Certificate
    summary: str
    shares: dict[str, float]
    votes_plot: Any
    view_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))


@dataclass
class SegmentationRun:
    name: str
    certificate: Any
    mask: Image.Image
    heatmap: Any


@dataclass
class SegmentationResult:
    runs: list[SegmentationRun]
    summary: str
    curves: dict[str, tuple[list[float], list[float]]]
    eps_plot: Any
    table: list[list[Any]]


ShowProgress = Callable[[ProgressLine], None]
"""How a tab shows where its run stands (the page's progress bar)."""


# ------------------------------------------------------------------------------------------------ the three tabs


@dataclass
class AppCertifier:
    """Certifies what the tabs ask, with models from ``catalog``, within ``limits``, on ``device``.

    Each ``certify_*`` takes a ``stop`` event (the run ends at its next forward pass once it is set) and a
    ``progress`` function that is shown the run's :class:`~vision_rs.app.progress.ProgressLine` after every batch.
    """

    catalog: ModelCatalog
    limits: AppLimits = field(default_factory=AppLimits)
    device: str | None = None
    """Torch device of every model (None: the GPU when there is one)."""
    batch_size: int = 256

    def _device(self) -> str:
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _options(self, progress: RunProgress | None) -> dict[str, Any]:
        return {"device": self._device(), "progress": progress or False, "batch_size": self.batch_size}

    def _model(self, key: str, task: str, arch: str, num_classes: object) -> tuple[ModelChoice, nn.Module, int | None]:
        classes = optional_classes(num_classes)
        choice = self.catalog.get(key, task)
        return choice, self.catalog.load(choice, arch, classes), classes

    def _counts(self, request: SamplingRequest) -> tuple[int, int, int]:
        return (whole(request.n0, "n0", 1, self.limits.max_n0), whole(request.n, "n", 1, self.limits.max_n),
                whole(request.seed, "seed", 0))

    def certify_image(self, image: Any, request: ImageRequest, *, truth: int | None = None,
                      stop: threading.Event | None = None, progress: ShowProgress | None = None) -> ImageResult:
        """Certify one image (path, PIL, array or tensor) as the image tab asks, and move it inside the certified
        ball to show how large the radius is."""
        from ..sampling.methods import Hierarchical
        from ..sampling.patches import Patches
        from ..smoothing import smooth

        if request.method not in METHODS:
            raise InvalidParameterError(f"method must be one of {METHODS}, got {request.method!r}")
        n0, n, seed = self._counts(request)
        sigma = real(request.sigma, "σ")
        choice, model, classes = self._model(request.model, IMAGE, request.arch, request.num_classes)
        hierarchical = Hierarchical(real(request.p, "p"), bool(request.indicator)) if request.method == "Hierarchical" else None
        patches = (Patches(whole(request.patch_size, "patch size"), stride=whole(request.patch_stride, "patch stride"))
                   if request.method == "Smooth-Reduce" else None)
        per_view = patches is not None
        tracker = RunProgress(n0 + n + (min(n, self.limits.view_draws) if per_view else 0), progress) if progress else None
        smoothed = smooth(model, sigma, hierarchical=hierarchical, patches=patches, reduce=request.reduce,
                          mode=request.mode, **self._options(tracker))
        names = class_namer(choice, classes)
        shown = smoothed.inputs(image, smoothed.spec.channels)
        with stoppable([smoothed.base], stop):
            cert = smoothed.certify(shown, n0=n0, n=n, alpha=request.alpha, seed=seed)
            view, view_counts = (view_votes(smoothed, shown, seed, min(n, self.limits.view_draws))
                                 if per_view else (None, None))
            ball = None if cert.abstained else self._ball(smoothed, shown, cert, names, tracker)
        label = cert.candidate if cert.label is None else cert.label
        target = f"{names(label)}, the {'candidate (abstained)' if cert.abstained else 'certified class'}"
        picture = (pictures.patch_votes(shown, view.positions, view.size, view_counts, label, names, target)
                   if view_counts is not None and hasattr(view, "positions") else None)
        sizes, radii, note = projected_radii(smoothed, cert, view, view_counts)
        what = "{}×{}×{} values of the image".format(*shown.shape)
        notes = [sigma_note(choice, sigma)]
        if cert.uncovered:
            notes.append(f"{cert.uncovered} pixels lie in no patch: they cannot change the prediction.")
        summary = certificate_markdown(
            cert, names, what, truth, notes,
            advice=abstain_advice(cert, sizes, radii, smoothed.smoothing.votes_once_per_draw),
            warning=unlike_training_warning(choice, shown, "a digit" if choice.embedded else "one of its classes"))
        return ImageResult(
            certificate=cert,
            summary=summary,
            shares=vote_shares(cert.counts, sum(cert.counts.values()), names),
            picture=picture,
            budgets=[(r, cert.radius_for(r)) for r in cert.radii],
            sample_plot=pictures.sample_size_plot(sizes, radii, cert.n, cert.radius, note, sigma, cert.alpha),
            view_counts=view_counts,
            ball=ball[0] if ball else None,
            ball_picture=ball[1] if ball else None,
            ball_text=ball[2] if ball else "",
        )

    def _ball(self, smoothed: SmoothedClassifier, pixels: torch.Tensor, cert: Certificate, names: pictures.ClassNames,
              tracker: RunProgress | None) -> tuple[BallPoint, Image.Image, str]:
        """A perturbation inside the certified ball of ``cert`` (see :mod:`.ball`), its picture, and what the smoothed
        classifier says of it (a display-only certification of at most ``limits.ball_draws`` draws)."""
        hierarchical = cert.method == "hierarchical"
        point = inside_ball(pixels, margin_gradient(smoothed, pixels, int(cert.label), cert.seed or 0),  # type: ignore[arg-type]
                            cert.radius, one_pixel=hierarchical)
        n0, n = min(cert.n0, 100), min(cert.n, self.limits.ball_draws)
        if tracker is not None:
            tracker.plan(n0 + n, "the perturbed input")
        there = smoothed.certify(point.perturbed, n0=n0, n=n, alpha=cert.alpha, seed=cert.seed)
        said = (f"abstains there ({abstain_reason(there)})" if there.abstained else
                f"gives {names(int(there.label))} there (certified with radius {there.radius:.4f}, n0 = {n0:,}, "  # type: ignore[arg-type]
                f"n = {n:,})")
        ball = (f"in the 1 pixel whose gradient is largest (the ball: at most r = 1 changed pixel with L2 norm below "
                f"ε(1) = {cert.radius:.4f})" if hierarchical else f"(the ball: L2 norm below {cert.radius:.4f})")
        text = (f"**One perturbation inside the certified ball** {ball}: L2 norm {point.norm:.4f}, in the direction "
                f"the base model's gradient suggests lowers the margin of {names(int(cert.label))} most, scaled to "  # type: ignore[arg-type]
                f"{SHARE:.0%} of the radius and clipped to [0, 1] (clipping can only shrink it). It is not an attack "
                f"result: the certificate covers every perturbation inside the ball. The smoothed classifier {said}.")
        titles = ("input", f"input + δ (‖δ‖ = {point.norm:.3f})", "δ, amplified (grey = 0)")
        return point, pictures.ball_picture(pixels, point.perturbed, titles), text

    def certify_video(self, clip: Any, request: VideoRequest, *, truth: int | None = None,
                      stop: threading.Event | None = None, progress: ShowProgress | None = None) -> VideoResult:
        """Certify one clip ([T, C, H, W] tensor, numpy [T, H, W, C] or a video file) as the video tab asks."""
        from ..video import SubClips, smooth

        n0, n, seed = self._counts(request)
        sigma = real(request.sigma, "σ")
        choice, model, classes = self._model(request.model, VIDEO, request.arch, request.num_classes)
        subclips = (SubClips(whole(request.subclip_length, "sub-clip length"), whole(request.subclip_stride, "sub-clip stride"))
                    if request.subclips else None)
        tracker = RunProgress(n0 + n + (min(n, self.limits.view_draws) if subclips else 0), progress) if progress else None
        smoothed = smooth(model, sigma, subclips=subclips, reduce=request.reduce, mode=request.mode,
                          framewise=choice.framewise, **self._options(tracker))
        names = class_namer(choice, classes)
        shown = smoothed.inputs(clip, None)
        with stoppable([smoothed.base], stop):
            cert = smoothed.certify(shown, n0=n0, n=n, alpha=request.alpha, seed=seed)
            if cert.views > 1:
                view, view_counts = view_votes(smoothed, shown, seed, min(n, self.limits.view_draws))
                starts, length = view.starts, view.length
            else:
                view, view_counts = None, _counts_array(cert.counts, cert.candidate)[None]
        frames = int(shown.shape[0])
        if cert.views == 1:
            starts, length = (0,), frames
        label = cert.candidate if cert.label is None else cert.label
        notes = [sigma_note(choice, sigma)]
        if cert.views > 1:
            notes.append(f"The votes along time are each sub-clip's share of {int(view_counts[0].sum())} separate draws "
                         "(for display; the certificate uses its own n0 + n draws).")
        sizes, radii, _ = (projected_radii(smoothed, cert, view, view_counts)
                           if view is not None or smoothed.smoothing.votes_once_per_draw else ([cert.n], [cert.radius]))
        what = "{} frames × {}×{}×{} values of the clip".format(frames, *shown.shape[1:])
        summary = certificate_markdown(
            cert, names, what, truth, notes,
            advice=abstain_advice(cert, sizes, radii, smoothed.smoothing.votes_once_per_draw),
            warning=unlike_training_warning(choice, shown, "a digit" if choice.embedded else "one of its classes"))
        return VideoResult(
            certificate=cert,
            summary=summary,
            shares=vote_shares(cert.counts, sum(cert.counts.values()), names),
            votes_plot=pictures.subclip_plot(starts, length, frames, view_counts, label, names),
            view_counts=view_counts,
        )

    def certify_segmentation(self, image: Any, request: SegmentationRequest, *, truth: np.ndarray | None = None,
                             stop: threading.Event | None = None,
                             progress: ShowProgress | None = None) -> SegmentationResult:
        """Certify every pixel of one image with the isotropic model, the localized one, or both, and count the
        pixels certified at each ε (per pixel, and collectively for localized smoothing)."""
        from ..segmentation import Localized, check_label_map, smooth

        n0, n, seed = self._counts(request)
        eps = parse_eps(request.eps, self.limits.max_eps)
        plans = []
        if request.isotropic_model:
            plans.append(("isotropic", request.isotropic_model, dict(sigma=real(request.sigma, "σ")), 1))
        if request.localized_model:
            grid = (whole(request.grid_rows, "grid rows"), whole(request.grid_cols, "grid columns"))
            localized = Localized(grid, real(request.sigma_min, "σ_min"), real(request.sigma_max, "σ_max"))
            plans.append(("localized", request.localized_model, dict(localized=localized), grid[0] * grid[1]))
        if not plans:
            raise InvalidParameterError("choose an isotropic model, a localized model, or both")
        tracker = RunProgress(sum(cells * (n0 + n) for *_, cells in plans), progress) if progress else None
        runs: list[SegmentationRun] = []
        curves: dict[str, tuple[list[float], list[float]]] = {}
        table: list[list[Any]] = []
        notes = []
        warning = ""
        for name, key, smoothing, _ in plans:
            choice, model, classes = self._model(key, SEGMENTATION, request.arch, request.num_classes)
            smoothed = smooth(model, **smoothing, **self._options(tracker))
            shown = smoothed.inputs(image, smoothed.spec.channels)
            with stoppable([smoothed.base], stop):
                cert = smoothed.certify(shown, n0=n0, n=n, alpha=request.alpha, seed=seed)
            if truth is not None:
                truth = check_label_map(truth, cert.shape, cert.num_classes)
            run_curves, rows = _eps_counts(name, cert, eps, truth)
            curves.update(run_curves)
            table += rows
            names = class_namer(choice, classes)
            mask = pictures.mask_picture(cert.labels, cert.abstained, cert.num_classes, names, f"{name}: predicted mask")
            runs.append(SegmentationRun(name, cert, mask, pictures.radius_heatmap(
                cert.radii, cert.abstained, f"{name}: certified radius per pixel")))
            notes.append(_segmentation_line(name, choice, cert, truth))
            note = sigma_note(choice, cert.sigma) if name == "isotropic" else ""
            if note:
                notes.append(note)
            warning = warning or unlike_training_warning(choice, shown, "a digit mask" if choice.embedded else "a mask")
        what = "certified correct pixels / labelled pixels" if truth is not None else "certified pixels / pixels"
        summary = ("### Segmentation certificates\n" + (f"{warning}\n\n" if warning else "")
                   + "\n".join(f"- {line}" for line in notes) +
                   f"\n\nThe plot shows {what} against the L2 budget ε: per pixel, each pixel certified on its own "
                   "(radius > ε); collective, the pixels that provably keep their class under one shared perturbation "
                   "of norm ≤ ε (localized smoothing, LP relaxation, sound).")
        return SegmentationResult(runs, summary, curves, pictures.eps_plot(curves, what), table)


def _median_radius(cert: Any) -> float:
    kept = cert.radii[~cert.abstained]
    return float(np.median(kept)) if kept.size else 0.0


def _eps_counts(name: str, cert: Any, eps: list[float], truth: np.ndarray | None) -> tuple[dict, list[list[Any]]]:
    """Pixels certified (correct ones, with ``truth``) at each ε, each on its own and, for localized smoothing,
    collectively: {curve name: (ε, ratio to the labelled pixels)} and the table's rows."""
    from ..segmentation import IGNORE_INDEX

    counted = max(1, int((truth != IGNORE_INDEX).sum()) if truth is not None else int(cert.abstained.size))
    per_pixel = [int(cert.certified(e, truth).sum()) for e in eps]
    counts = {f"{name}, per pixel" if cert.localized else name: per_pixel}
    collective: list[Any] = [None] * len(eps)
    if cert.localized:
        bins = COLLECTIVE_BINS if cert.abstained.size > COLLECTIVE_BINS_ABOVE else None
        collective = [c.certified for c in cert.collective(eps, labels=truth, bins=bins)]
        counts[f"{name}, collective"] = collective
    curves = {label: (eps, [count / counted for count in values]) for label, values in counts.items()}
    return curves, [[name, e, p, c] for e, p, c in zip(eps, per_pixel, collective)]


def _segmentation_line(name: str, choice: ModelChoice, cert: Any, truth: np.ndarray | None) -> str:
    pixels = int(cert.abstained.size)
    line = (f"**{name}** ({choice.name or choice.label}, σ = {cert.sigma:g}"
            + (f", grid {cert.localized['grid'][0]}×{cert.localized['grid'][1]}, σ_max = {cert.localized['sigma_max']:g}"
               if cert.localized else "")
            + f"): {int(cert.abstained.sum()):,} of {pixels:,} pixels abstain (magenta); median radius "
            f"{_median_radius(cert):.3f}; n0 = {cert.n0}, n = {cert.n} per "
            f"{'output cell' if cert.localized else 'image'}, α = {cert.alpha:g} for the whole mask; {cert.seconds:.1f} s")
    if truth is not None:
        from ..segmentation import IGNORE_INDEX

        labelled = truth != IGNORE_INDEX
        correct = int(((cert.labels == truth) & ~cert.abstained & labelled).sum())
        line += f"; {correct:,} of {int(labelled.sum()):,} labelled pixels correct"
    return line
