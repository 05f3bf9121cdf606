"""Building models from names and checkpoint paths, offline.

Pretrained weights are looked up in the local caches only (the Hugging Face
hub cache and torch hub's ``checkpoints`` folder); nothing here opens a
network connection. Names:

* a timm name, e.g. ``"resnet18"`` or ``"resnet50.a1_in1k"``;
* ``"torchvision:<name>"``, e.g. ``"torchvision:resnet18"``;
* an embedded vision-rs model, e.g. ``"digits_cnn.sigma_0.25"`` (see :mod:`vision_rs.models.embedded`);
* a checkpoint path (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) together with ``arch``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, InvalidParameterError, ModelUnavailableError
from ..wording import Wording
from .checkpoints import load_checkpoint_into
from .provenance import ModelSource, file_sha256

TORCHVISION_PREFIX = "torchvision:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
ARCH = Wording("arch=... (e.g. arch='resnet18')", "--arch NAME (e.g. --arch resnet18)")
CHECKPOINT = Wording("checkpoint=PATH", "--checkpoint PATH")
USE_LOCAL_WEIGHTS = Wording("Pass a local file with checkpoint=PATH, or pretrained=False for random weights.",
                            "Pass a local file with --checkpoint PATH, or --no-pretrained for random weights.")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints_dir() -> Path:
    """torch hub's download folder (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _cached_hf_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_hub_cache_dir()))
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _cached_url_file(url: str | None) -> Path | None:
    if not url:
        return None
    candidate = torch_hub_checkpoints_dir() / os.path.basename(url.split("?")[0])
    return candidate if candidate.is_file() else None


def local_timm_weights(name: str) -> Path:
    """Path of the locally cached pretrained weights of timm model ``name``; raises if absent."""
    from timm.models import get_pretrained_cfg, parse_model_name

    _, model_name = parse_model_name(name)
    cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    if cfg is None:
        raise ModelUnavailableError(f"timm has no pretrained weights registered for {name!r}. {{use_local_weights}}",
                                    use_local_weights=USE_LOCAL_WEIGHTS)
    names = ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ()) + _HF_WEIGHT_FILES
    found = (_cached_hf_file(cfg.hf_hub_id, names) if cfg.hf_hub_id else None) or _cached_url_file(cfg.url)
    if found is None:
        raise ModelUnavailableError(
            f"pretrained weights for timm model {name!r} are not on this machine (looked in the Hugging Face cache "
            f"{hf_hub_cache_dir()} for {cfg.hf_hub_id!r} and in {torch_hub_checkpoints_dir()}); vision-rs never "
            "downloads. {use_local_weights}", use_local_weights=USE_LOCAL_WEIGHTS)
    return found


def _embedded_names() -> str:
    from .embedded import describe_embedded_models

    return ", ".join(str(row["name"]) for row in describe_embedded_models())


def _unknown_name(name: str, where: str) -> InvalidParameterError:
    return InvalidParameterError(
        f"unknown {where} model {name!r}. Embedded models: {_embedded_names()}; timm names{{timm_list}}; "
        "torchvision:NAME{torchvision_list}; or a checkpoint file with {arch}.{listed}",
        timm_list=Wording(" (timm.list_models())", ""), torchvision_list=Wording(" (torchvision.models.list_models())", ""),
        arch=ARCH, listed=Wording("", " `vision-rs models` lists them."),
    )


def create_timm_model(name: str, *, pretrained: bool, num_classes: int | None = None) -> tuple[nn.Module, ModelSource]:
    """``timm.create_model`` that reads pretrained weights from the local cache only; returns the model and its source."""
    import timm

    if not timm.is_model(name):
        raise _unknown_name(name, "timm")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs), ModelSource(name, pretrained=False)
    weights = local_timm_weights(name)
    overlay = {"file": str(weights), "source": "", "hf_hub_id": None, "url": None}
    source = ModelSource(name, pretrained=True, weights=str(weights), weights_sha256=file_sha256(weights))
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs), source
    except Exception as exc:  # a corrupt or mismatched cached file: SafetensorError, RuntimeError, UnpicklingError, ...
        raise CheckpointError(
            f"cannot load the cached pretrained weights {weights} of timm model {name!r}: {exc!r}. "
            "Replace or delete that file, or pass a local file with {checkpoint}.", checkpoint=CHECKPOINT,
        ) from exc


def create_torchvision_model(name: str, *, pretrained: bool, num_classes: int | None = None) -> tuple[nn.Module, ModelSource]:
    """A torchvision model with its weights' preset (mean, std, resize, crop) attached as a timm-style
    ``pretrained_cfg``; returns the model and its source."""
    import torchvision.models as tvm

    try:
        weights_enum = tvm.get_model_weights(name)
    except ValueError as exc:
        raise _unknown_name(name, "torchvision") from exc
    weights = weights_enum.DEFAULT
    kwargs: dict[str, object] = {} if num_classes is None else {"num_classes": num_classes}
    if "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None  # segmentation / detection builders would download ImageNet backbone weights
    model = tvm.get_model(name, weights=None, **kwargs)
    source = ModelSource(TORCHVISION_PREFIX + name, pretrained=pretrained)
    if pretrained:
        cached = _cached_url_file(weights.url)
        if cached is None:
            raise ModelUnavailableError(
                f"pretrained weights for torchvision model {name!r} are not on this machine (looked for "
                f"{os.path.basename(weights.url)} in {torch_hub_checkpoints_dir()}); vision-rs never downloads. "
                "{use_local_weights}", use_local_weights=USE_LOCAL_WEIGHTS)
        load_checkpoint_into(model, cached)
        source = ModelSource(source.name, True, f"{weights} ({cached})", file_sha256(cached))
    model.pretrained_cfg = torchvision_pretrained_cfg(weights)
    return model, source


def torchvision_pretrained_cfg(weights: object) -> dict[str, object]:
    """A timm-style ``pretrained_cfg`` dict holding a torchvision weights preset (with its exact ``resize_size``)."""
    from .adapters import spec_from_torchvision_weights

    spec = spec_from_torchvision_weights(weights)
    return {
        "mean": spec.mean, "std": spec.std, "input_size": spec.input_size, "crop_pct": spec.crop_pct,
        "crop_mode": spec.crop_mode, "interpolation": spec.interpolation, "resize_size": spec.resize_size,
    }


def is_checkpoint_path(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES) or os.path.isfile(name)


def create_model(
    name: str,
    *,
    pretrained: bool = True,
    num_classes: int | None = None,
    arch: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> nn.Module:
    """Build a classifier from a name or a checkpoint path (see the module docstring for the forms)."""
    return create_model_with_source(name, pretrained=pretrained, num_classes=num_classes, arch=arch, checkpoint=checkpoint)[0]


def create_model_with_source(
    name: str,
    *,
    pretrained: bool = True,
    num_classes: int | None = None,
    arch: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    task: str = "image-classification",
) -> tuple[nn.Module, ModelSource]:
    """:func:`create_model`, also returning where the model and its weights came from.

    An embedded model must be one for ``task`` ("image-classification", "video-classification",
    "segmentation"): the error says which ``smooth`` takes it otherwise.
    """
    from . import embedded

    if is_checkpoint_path(name):
        if checkpoint is not None:
            raise InvalidParameterError("give the checkpoint either as the model or as {checkpoint}, not both",
                                        checkpoint=CHECKPOINT)
        if arch is None:
            raise InvalidParameterError(f"{name} is a checkpoint: also say which architecture it holds with {{arch}}",
                                        arch=ARCH)
        if not Path(name).is_file():
            raise CheckpointError(f"checkpoint not found: {name}")
        name, checkpoint = arch, name
    if checkpoint is not None:
        pretrained = False
    info = embedded.embedded_model_info(name)
    if info is not None:
        if info["task"] != task:
            raise InvalidParameterError(
                f"{name} is an embedded {info['task']} model: {{use}}",
                use=Wording(f"smooth it with {embedded.TASKS[str(info['task'])]}"
                            + (" (or vision_rs.video.smooth(..., framewise=True))" if info["task"] == "image-classification" else ""),
                            f"certify with {embedded.TASK_COMMANDS[str(info['task'])]}"))
        model = embedded.load_embedded(name, pretrained=pretrained)
        weights = embedded.shipped_weights(str(info["file"])) if pretrained else None
        source = ModelSource(name, pretrained, str(weights) if weights else None, file_sha256(weights) if weights else None)
    elif name.startswith(TORCHVISION_PREFIX):
        model, source = create_torchvision_model(name[len(TORCHVISION_PREFIX):], pretrained=pretrained, num_classes=num_classes)
    else:
        model, source = create_timm_model(name, pretrained=pretrained, num_classes=num_classes)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, expected=name)
        source = source.with_checkpoint(checkpoint)
    return model, source
