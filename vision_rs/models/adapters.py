"""Model adapters: what a model expects as input, and the base classifier of [0, 1] pixels built around it.

Noise is added to pixels in [0, 1] at the image's own resolution. Everything after it belongs to the
base classifier: the view (crops), the model's evaluation resize and crop (:mod:`vision_rs.sampling.preprocess`),
grey → RGB repetition, the normalisation ``(x - mean) / std`` and the model. The input spec comes from
timm's ``pretrained_cfg`` (through ``timm.data.resolve_model_data_config``), from a torchvision
``WeightsEnum``'s transforms, or from explicit overrides.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import InvalidParameterError, ModelOutputError
from ..sampling.preprocess import EvalTransform, timm_scale_size
from ..wording import Wording

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: per-channel mean/std of [0, 1] pixels and its evaluation resize and crop.

    ``input_size`` (C, H, W) is the model input (None: any size, no resize). The resize before the crop
    follows timm's data config: ``resize_size`` when given (torchvision's presets), else
    floor(size / ``crop_pct``); ``crop_mode`` is timm's "center" | "squash" | "border".
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int] | None = None
    crop_pct: float = 1.0
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    resize_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise InvalidParameterError(f"{{mean_std}} need one value per channel each, got {self.mean} and {self.std}",
                                        mean_std=Wording("mean and std", "--mean and --std"))
        if any(s <= 0 for s in self.std):
            raise InvalidParameterError(f"{{std}} values must be > 0, got {self.std}", std=Wording("std", "--std"))
        if self.input_size is not None and (len(self.input_size) != 3 or min(self.input_size) < 1):
            raise InvalidParameterError(f"{{size}} must be (C, H, W) with positive entries, got {self.input_size}",
                                        size=Wording("input_size", "--input-size"))
        self.transform  # validates crop_pct, crop_mode, interpolation and sizes

    @property
    def channels(self) -> int:
        """Colour channels the model reads (an appended hierarchical indicator is not one of them)."""
        return len(self.mean)

    @property
    def transform(self) -> EvalTransform | None:
        """The evaluation resize and crop to ``input_size``, or None when the model takes any size."""
        if self.input_size is None:
            return None
        size = (int(self.input_size[1]), int(self.input_size[2]))
        scale = self.resize_size if self.resize_size is not None else timm_scale_size(size, self.crop_pct)
        return EvalTransform(size, scale, self.crop_mode, self.interpolation, fill=self.mean)

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, recorded with every run."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class NormalizedClassifier(nn.Module):
    """``model((x - mean) / std)`` on [0, 1] pixels, repeating a grey image to the model's colour channels.

    Channels are dim -3, so images [N, C, H, W] and clips [N, T, C, H, W] alike are normalised (a clip
    model gets its layout from an adapter, see :mod:`vision_rs.video.models`). ``extra_channels``
    trailing input channels (the hierarchical indicator) pass through unnormalised. A grey input (one
    colour channel) for a model of ``spec.channels`` colours is repeated after the noise, so the
    noise — and every radius — lives in the grey image's own space.
    """

    def __init__(self, model: nn.Module, spec: InputSpec, extra_channels: int = 0) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.extra_channels = extra_channels
        device = model_device(model)  # a model already on the GPU gets its normalisation there too
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32, device=device).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32, device=device).view(-1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        colours = pixels.shape[-3] - self.extra_channels
        colour = pixels if self.extra_channels == 0 else pixels[..., :colours, :, :]
        if colours != self.spec.channels:  # grey → RGB (checked up front)
            colour = colour.expand(*colour.shape[:-3], self.spec.channels, *colour.shape[-2:])
        normalised = (colour - self.mean) / self.std
        if self.extra_channels == 0:
            return self.model(normalised)
        return self.model(torch.cat([normalised, pixels[..., colours:, :, :]], dim=-3))


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` wrappers (the model itself otherwise)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _is_torchvision_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def _first(values: Sequence[Any] | Any) -> Any:
    return values[0] if isinstance(values, Sequence) and not isinstance(values, str) else values


def spec_from_torchvision_weights(weights: object) -> InputSpec:
    """Mean, std, resize, crop and interpolation from a torchvision ``WeightsEnum`` member's ``transforms()``.

    Image presets resize the shorter side and crop the centre; video presets resize to an exact
    (h, w) first (timm's "squash"); segmentation presets only resize (no crop, input size None).
    """
    transforms = getattr(weights, "transforms", None)
    if transforms is None:
        raise InvalidParameterError(f"weights must be a torchvision WeightsEnum member, got {weights!r}")
    preset = transforms()
    mean = tuple(float(v) for v in preset.mean)
    std = tuple(float(v) for v in preset.std)
    interpolation = getattr(preset, "interpolation", None)
    interpolation = interpolation.value if interpolation is not None else "bilinear"
    resize = [int(v) for v in preset.resize_size] if isinstance(preset.resize_size, Sequence) else [int(preset.resize_size)]
    crop = getattr(preset, "crop_size", None)
    if crop is None:  # segmentation: resize only
        return InputSpec(mean=mean, std=std, interpolation=interpolation, resize_size=(resize[0], resize[-1]))
    crop = [int(v) for v in crop] if isinstance(crop, Sequence) else [int(crop)]
    size = (crop[0], crop[-1])
    squash = len(resize) == 2
    return InputSpec(
        mean=mean, std=std, input_size=(len(mean), *size), crop_pct=size[0] / resize[0],
        crop_mode="squash" if squash else "center", interpolation=interpolation,
        resize_size=(resize[0], resize[-1]),
    )


def _spec_from_pretrained_cfg(model: nn.Module, use_test_size: bool) -> InputSpec:
    """The spec of a timm-style ``pretrained_cfg``: timm resolves it. A torchvision preset attached by
    :func:`vision_rs.models.hub.create_torchvision_model`, or the spec a vision-rs checkpoint recorded
    (:func:`vision_rs.models.hub.recorded_pretrained_cfg`), has a ``resize_size`` key and is read as it is: timm
    would fill a missing input size (segmentation presets have none) with its own defaults."""
    cfg = model.pretrained_cfg
    if "resize_size" in cfg:
        size = cfg.get("input_size")
        return InputSpec(
            mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
            input_size=tuple(int(v) for v in size) if size is not None else None,  # type: ignore[arg-type]
            crop_pct=float(cfg.get("crop_pct", 1.0)), crop_mode=str(cfg.get("crop_mode", "center")),
            interpolation=str(cfg.get("interpolation", "bilinear")),
            resize_size=tuple(int(v) for v in cfg["resize_size"]) if cfg["resize_size"] is not None else None,  # type: ignore[arg-type]
        )
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model, use_test_size=use_test_size)
    return InputSpec(
        mean=tuple(float(v) for v in config["mean"]), std=tuple(float(v) for v in config["std"]),
        input_size=tuple(int(v) for v in config["input_size"]),  # type: ignore[arg-type]
        crop_pct=float(config["crop_pct"]), crop_mode=str(config["crop_mode"]),
        interpolation=str(config["interpolation"]),
    )


def model_input_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution (timm's ``pretrained_cfg["first_conv"]``, else the
    first Conv1d/2d/3d in module order); None when that cannot be told."""
    inner = unwrap_parallel(model)
    if isinstance(inner, NormalizedClassifier):
        inner = inner.model
    cfg = getattr(inner, "pretrained_cfg", None)
    first = _first(cfg.get("first_conv")) if isinstance(cfg, dict) else None
    if isinstance(first, str) and first:
        with contextlib.suppress(AttributeError):
            channels = getattr(inner.get_submodule(first), "in_channels", None)
            if isinstance(channels, int):
                return channels
    for module in inner.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
    return None


def fit_to_channels(spec: InputSpec, channels: int) -> InputSpec:
    """The spec for a model reading ``channels`` colour channels: a 3-value mean/std is averaged for 1."""
    if channels == spec.channels:
        return spec
    if channels == 1:
        mean, std = (sum(spec.mean) / len(spec.mean),), (sum(spec.std) / len(spec.std),)
        size = (1, *spec.input_size[1:]) if spec.input_size is not None else None
        return replace(spec, mean=mean, std=std, input_size=size)  # type: ignore[arg-type]
    raise InvalidParameterError(
        f"the model reads {channels} colour channels but its mean/std have {spec.channels} values; "
        f"give {{mean_std}} with {channels} values each", mean_std=Wording("mean= and std=", "--mean and --std"))


def read_input_spec(
    model: nn.Module,
    *,
    weights: object | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    use_test_size: bool = False,
) -> InputSpec:
    """Work out the model's input normalisation, size and evaluation resize; explicit arguments win.

    Sources, in order: a torchvision ``weights`` enum; an existing :class:`NormalizedClassifier`; a
    timm-style ``pretrained_cfg`` on the model (timm, vision-rs embedded and named torchvision models;
    ``use_test_size`` takes its ``test_input_size``/``test_crop_pct``); ``mean`` and ``std``. A
    torchvision model with none of these is refused (its normalisation cannot be known); any other
    module is taken to read [0, 1] pixels directly (see :func:`fit_to_channels` for models reading
    other than 3 colour channels).
    """
    inner = unwrap_parallel(model)
    if weights is not None:
        base = spec_from_torchvision_weights(weights)
    elif isinstance(inner, NormalizedClassifier):
        base = inner.spec
    elif isinstance(getattr(inner, "pretrained_cfg", None), dict) and inner.pretrained_cfg:
        base = _spec_from_pretrained_cfg(inner, use_test_size)
    elif mean is not None and std is not None:
        base = InputSpec(mean=tuple(mean), std=tuple(std))
    elif _is_torchvision_model(inner):
        raise InvalidParameterError(
            f"cannot tell the input normalisation of torchvision {type(inner).__name__}: "
            "pass weights=<its WeightsEnum> (e.g. ResNet50_Weights.DEFAULT) or mean=/std=."
        )
    else:
        log.info("%s has no pretrained_cfg: assuming it reads [0,1] pixels (pass mean=/std= if not)", type(inner).__name__)
        base = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        changes["std"] = tuple(float(v) for v in std)
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        changes["input_size"] = size if len(size) == 3 else (len(changes.get("mean", base.mean)), *size)
        changes["resize_size"] = None  # a preset's fixed resize belongs to its own input size
    if crop_pct is not None:
        changes["crop_pct"], changes["resize_size"] = float(crop_pct), None
    if interpolation is not None:
        changes["interpolation"] = interpolation
    return replace(base, **changes) if changes else base


_CLASSIFIER_HEADS = ("fc", "classifier", "head", "heads")


def check_is_classifier(model: nn.Module) -> None:
    """Refuse a feature extractor: a timm model with ``num_classes == 0`` or a head that is ``nn.Identity``.

    Its pooled features would otherwise be taken for class scores and certified as labels.
    """
    inner = unwrap_parallel(model)
    if isinstance(inner, NormalizedClassifier):
        inner = inner.model
    hint = Wording("(timm: create_model(name, num_classes=K) or a pretrained tag with a head; torchvision: keep its "
                   "fc/classifier)", "(--num-classes K, or a pretrained tag with a head)")
    if getattr(inner, "num_classes", None) == 0:
        raise ModelOutputError(f"{type(inner).__name__} has no classification head (num_classes 0): it returns "
                               "features, not class scores; give it one {hint}", hint=hint)
    for name in _CLASSIFIER_HEADS:
        head = getattr(inner, name, None)
        last = head[-1] if isinstance(head, nn.Sequential) and len(head) else head
        if isinstance(last, nn.Identity):
            raise ModelOutputError(f"{type(inner).__name__}.{name} is an nn.Identity: it returns features, not class "
                                   "scores; give it a classification head {hint}", hint=hint)


def as_normalized_classifier(model: nn.Module, spec: InputSpec, extra_channels: int = 0) -> NormalizedClassifier:
    """Put the normalisation in front of ``model``, never twice: an existing wrapper is re-used for its inner model."""
    inner = unwrap_parallel(model)
    if isinstance(inner, NormalizedClassifier):
        model = inner.model
    return NormalizedClassifier(model, spec, extra_channels)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class _EvalModeUsers:
    """Who is inside :func:`evaluation_mode` for each model: the first in switches, the last out restores."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[int, tuple[int, list[tuple[nn.Module, bool]]]] = {}

    def enter(self, model: nn.Module) -> None:
        with self.lock:
            users, flags = self.entries.get(id(model), (0, []))
            if users == 0:
                flags = [(module, module.training) for module in model.modules()]
                model.eval()
            self.entries[id(model)] = (users + 1, flags)

    def leave(self, model: nn.Module) -> None:
        with self.lock:
            users, flags = self.entries[id(model)]
            if users > 1:
                self.entries[id(model)] = (users - 1, flags)
                return
            del self.entries[id(model)]
            for module, training in flags:
                module.training = training


_EVAL_MODE_USERS = _EvalModeUsers()


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for every submodule while inside; each one's training flag is restored afterwards.

    Safe under concurrency: several threads certifying with one model share one switch — the first to
    enter saves the flags and switches, the last to leave restores them, so no forward pass of any of
    them runs in train mode.
    """
    _EVAL_MODE_USERS.enter(model)
    try:
        yield model
    finally:
        _EVAL_MODE_USERS.leave(model)
