"""Building models from names and checkpoint paths, offline.

Pretrained weights are looked up in the local caches only (the Hugging Face
hub cache and torch hub's ``checkpoints`` folder); nothing here opens a
network connection. Names:

* a timm name, e.g. ``"resnet18"`` or ``"resnet50.a1_in1k"``;
* ``"torchvision:<name>"``, e.g. ``"torchvision:resnet18"``;
* an embedded vision-rs model, e.g. ``"digits_cnn.sigma_0.25"`` (see :mod:`vision_rs.embedded`);
* a checkpoint path (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) together with ``arch``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .checkpoints import load_checkpoint_into
from .errors import CheckpointError, InvalidParameterError, ModelUnavailableError

TORCHVISION_PREFIX = "torchvision:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
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
        raise ModelUnavailableError(f"timm has no pretrained weights registered for {name!r}; use --checkpoint")
    names = ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ()) + _HF_WEIGHT_FILES
    found = (_cached_hf_file(cfg.hf_hub_id, names) if cfg.hf_hub_id else None) or _cached_url_file(cfg.url)
    if found is None:
        raise ModelUnavailableError(
            f"pretrained weights for timm model {name!r} are not on this machine "
            f"(looked in the Hugging Face cache {hf_hub_cache_dir()} for {cfg.hf_hub_id!r} "
            f"and in {torch_hub_checkpoints_dir()}); vision-rs never downloads. "
            "Pass a local file with --checkpoint (or checkpoint=...), or set pretrained=False."
        )
    return found


def create_timm_model(name: str, *, pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """``timm.create_model`` that reads pretrained weights from the local cache only."""
    import timm

    if not timm.is_model(name):
        raise InvalidParameterError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    weights = local_timm_weights(name)
    overlay = {"file": str(weights), "source": "", "hf_hub_id": None, "url": None}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # a corrupt or mismatched cached file: SafetensorError, RuntimeError, UnpicklingError, ...
        raise CheckpointError(
            f"cannot load the cached pretrained weights {weights} of timm model {name!r}: {exc!r}. "
            "Replace or delete that file, or pass a local file with --checkpoint (or checkpoint=...)."
        ) from exc


def create_torchvision_model(name: str, *, pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """A torchvision classifier with its weights' normalisation attached as a timm-style ``pretrained_cfg``."""
    import torchvision.models as tvm

    try:
        weights_enum = tvm.get_model_weights(name)
    except ValueError as exc:
        raise InvalidParameterError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from exc
    weights = weights_enum.DEFAULT
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = tvm.get_model(name, weights=None, **kwargs)
    if pretrained:
        cached = _cached_url_file(weights.url)
        if cached is None:
            raise ModelUnavailableError(
                f"pretrained weights for torchvision model {name!r} are not on this machine "
                f"(looked for {os.path.basename(weights.url)} in {torch_hub_checkpoints_dir()}); "
                "vision-rs never downloads. Pass a local file with --checkpoint (or checkpoint=...)."
            )
        load_checkpoint_into(model, cached)
    from .models import spec_from_torchvision_weights

    spec = spec_from_torchvision_weights(weights)
    model.pretrained_cfg = {"mean": spec.mean, "std": spec.std, "input_size": spec.input_size}
    return model


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
    from . import embedded

    if is_checkpoint_path(name):
        if checkpoint is not None:
            raise InvalidParameterError("give the checkpoint either as the model or as checkpoint=, not both")
        if arch is None:
            raise InvalidParameterError(
                f"{name} is a checkpoint: also say which architecture it holds with --arch (e.g. resnet18)"
            )
        if not Path(name).is_file():
            raise CheckpointError(f"checkpoint not found: {name}")
        name, checkpoint = arch, name
    if checkpoint is not None:
        pretrained = False
    if name in embedded.EMBEDDED_MODELS:
        model = embedded.load_embedded_model(name, pretrained=pretrained)
    elif name.startswith(TORCHVISION_PREFIX):
        model = create_torchvision_model(name[len(TORCHVISION_PREFIX):], pretrained=pretrained, num_classes=num_classes)
    else:
        model = create_timm_model(name, pretrained=pretrained, num_classes=num_classes)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint)
    return model
