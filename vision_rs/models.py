"""Model adapters: read a model's input normalisation and size, and make normalisation its first layer.

Noise is added to pixels in [0, 1]; the base classifier is
``model((x - mean) / std)``. The mean, std and input size come from timm's
``pretrained_cfg`` (through ``timm.data.resolve_model_data_config``), from a
torchvision ``WeightsEnum``'s transforms, or from explicit overrides.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InvalidParameterError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What a classifier expects: per-channel mean/std on [0, 1] pixels and an optional (C, H, W) size."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int] | None = None
    """(channels, height, width) the model runs at; None means any size (no resize)."""

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise InvalidParameterError(f"mean and std need one value per channel, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise InvalidParameterError(f"std values must be > 0, got {self.std}")
        if self.input_size is not None and (len(self.input_size) != 3 or min(self.input_size) < 1):
            raise InvalidParameterError(f"input_size must be (C, H, W) with positive entries, got {self.input_size}")

    @property
    def channels(self) -> int:
        return self.input_size[0] if self.input_size is not None else len(self.mean)


class NormalizedClassifier(nn.Module):
    """``model((x - mean) / std)``: a classifier of [0, 1] pixels with the normalisation as its first layer."""

    def __init__(self, model: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        device = model_device(model)  # a model already on the GPU gets its normalisation there too
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        colours = self.mean.shape[1]
        if pixels.shape[1] == colours:
            return self.model((pixels - self.mean) / self.std)
        # channels beyond the colour channels (the hierarchical indicator) pass through unnormalised
        return self.model(torch.cat([(pixels[:, :colours] - self.mean) / self.std, pixels[:, colours:]], dim=1))


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` wrappers (the model itself otherwise)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _is_torchvision_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def spec_from_torchvision_weights(weights: object) -> InputSpec:
    """Mean, std and crop size from a torchvision ``WeightsEnum`` member (e.g. ``ResNet50_Weights.DEFAULT``)."""
    transforms = getattr(weights, "transforms", None)
    if transforms is None:
        raise InvalidParameterError(f"weights must be a torchvision WeightsEnum member, got {weights!r}")
    preset = transforms()
    crop = preset.crop_size[0] if isinstance(preset.crop_size, Sequence) else preset.crop_size
    mean = tuple(float(v) for v in preset.mean)
    return InputSpec(mean=mean, std=tuple(float(v) for v in preset.std), input_size=(len(mean), int(crop), int(crop)))


def _spec_from_pretrained_cfg(model: nn.Module) -> InputSpec:
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    size = tuple(int(v) for v in config["input_size"])
    return InputSpec(mean=tuple(config["mean"]), std=tuple(config["std"]), input_size=size)  # type: ignore[arg-type]


def read_input_spec(
    model: nn.Module,
    *,
    weights: object | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
) -> InputSpec:
    """Work out the model's input normalisation and size; explicit ``mean``/``std``/``input_size`` win.

    Sources, in order: the overrides; a torchvision ``weights`` enum; a timm-style
    ``pretrained_cfg`` on the model (timm models, vision-rs embedded models);
    an existing :class:`NormalizedClassifier`. A torchvision model with none of
    these is refused (its normalisation cannot be known); any other module is
    taken to read [0, 1] pixels directly.
    """
    inner = unwrap_parallel(model)
    if weights is not None:
        base = spec_from_torchvision_weights(weights)
    elif isinstance(inner, NormalizedClassifier):
        base = inner.spec
    elif isinstance(getattr(inner, "pretrained_cfg", None), dict) and inner.pretrained_cfg:
        base = _spec_from_pretrained_cfg(inner)
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
    overridden_mean = tuple(float(v) for v in mean) if mean is not None else base.mean
    overridden_std = tuple(float(v) for v in std) if std is not None else base.std
    size = tuple(int(v) for v in input_size) if input_size is not None else base.input_size
    if size is not None and len(size) == 2:
        size = (len(overridden_mean), *size)
    return InputSpec(mean=overridden_mean, std=overridden_std, input_size=size)  # type: ignore[arg-type]


def as_normalized_classifier(model: nn.Module, spec: InputSpec) -> NormalizedClassifier:
    """Put the normalisation in front of ``model``, never twice: an existing wrapper is re-used for its inner model."""
    inner = unwrap_parallel(model)
    if isinstance(inner, NormalizedClassifier):
        model = inner.model
    return NormalizedClassifier(model, spec)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every submodule to eval mode and restore each one's training flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
