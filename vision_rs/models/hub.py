"""Building models from names and checkpoint paths, offline.

Pretrained weights are looked up in the local caches only (the Hugging Face
hub cache and torch hub's ``checkpoints`` folder); nothing here opens a
network connection. Names:

* a timm name, e.g. ``"resnet18"`` or ``"resnet50.a1_in1k"``;
* ``"torchvision:<name>"``, e.g. ``"torchvision:resnet18"``;
* an embedded vision-rs model, e.g. ``"digits_cnn.sigma_0.25"`` (see :mod:`vision_rs.models.embedded`);
* a checkpoint path (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) together with ``arch``; a checkpoint written by
  ``vision-rs train`` (:func:`vision_rs.models.checkpoints.save_checkpoint`) carries its architecture, input spec
  and training noise in its record and needs nothing else.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, InvalidParameterError, ModelUnavailableError
from ..wording import Wording
from .checkpoints import load_checkpoint_into, read_checkpoint_record
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


def create_timm_model(name: str, *, pretrained: bool, num_classes: int | None = None,
                      model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, ModelSource]:
    """``timm.create_model`` that reads pretrained weights from the local cache only; returns the model and its source.

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``in_chans=4`` for the hierarchical indicator channel).
    """
    import timm

    if not timm.is_model(name):
        raise _unknown_name(name, "timm")
    kwargs = dict(model_kwargs or {}) | ({} if num_classes is None else {"num_classes": num_classes})
    built_with = dict(model_kwargs) if model_kwargs else None
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs), ModelSource(name, pretrained=False, kwargs=built_with)
    weights = local_timm_weights(name)
    overlay = {"file": str(weights), "source": "", "hf_hub_id": None, "url": None}
    source = ModelSource(name, pretrained=True, weights=str(weights), weights_sha256=file_sha256(weights), kwargs=built_with)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs), source
    except Exception as exc:  # a corrupt or mismatched cached file: SafetensorError, RuntimeError, UnpicklingError, ...
        raise CheckpointError(
            f"cannot load the cached pretrained weights {weights} of timm model {name!r}: {exc!r}. "
            "Replace or delete that file, or pass a local file with {checkpoint}.", checkpoint=CHECKPOINT,
        ) from exc


def create_torchvision_model(name: str, *, pretrained: bool, num_classes: int | None = None,
                             model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, ModelSource]:
    """A torchvision model with its weights' preset (mean, std, resize, crop) attached as a timm-style
    ``pretrained_cfg``; returns the model and its source."""
    import torchvision.models as tvm

    try:
        weights_enum = tvm.get_model_weights(name)
    except ValueError as exc:
        raise _unknown_name(name, "torchvision") from exc
    weights = weights_enum.DEFAULT
    kwargs: dict[str, object] = dict(model_kwargs or {}) | ({} if num_classes is None else {"num_classes": num_classes})
    if "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None  # segmentation / detection builders would download ImageNet backbone weights
    model = tvm.get_model(name, weights=None, **kwargs)
    source = ModelSource(TORCHVISION_PREFIX + name, pretrained=pretrained, kwargs=dict(model_kwargs) if model_kwargs else None)
    if pretrained:
        cached = _cached_url_file(weights.url)
        if cached is None:
            raise ModelUnavailableError(
                f"pretrained weights for torchvision model {name!r} are not on this machine (looked for "
                f"{os.path.basename(weights.url)} in {torch_hub_checkpoints_dir()}); vision-rs never downloads. "
                "{use_local_weights}", use_local_weights=USE_LOCAL_WEIGHTS)
        load_checkpoint_into(model, cached)
        source = replace(source, weights=f"{weights} ({cached})", weights_sha256=file_sha256(cached))
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
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelSource]:
    """:func:`create_model`, also returning where the model and its weights came from.

    An embedded model must be one for ``task`` ("image-classification", "video-classification",
    "segmentation"): the error says which ``smooth`` takes it otherwise. ``model_kwargs`` go to the timm /
    torchvision constructor. A checkpoint with a vision-rs record needs no ``arch``: the record says it.
    """
    if is_checkpoint_path(name):
        if checkpoint is not None:
            raise InvalidParameterError("give the checkpoint either as the model or as {checkpoint}, not both",
                                        checkpoint=CHECKPOINT)
        if not Path(name).is_file():
            raise CheckpointError(f"checkpoint not found: {name}")
        record = read_checkpoint_record(name)
        if arch is None:
            if record is None or not isinstance(record.get("architecture"), dict):
                raise InvalidParameterError(
                    f"{name} is a checkpoint without a vision-rs record: also say which architecture it holds with "
                    "{arch}", arch=ARCH)
            return create_recorded_model(name, record, num_classes=num_classes, task=task)
        name, checkpoint = arch, name
    model, source = _create_named(name, pretrained=pretrained and checkpoint is None, num_classes=num_classes,
                                  task=task, model_kwargs=model_kwargs)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, expected=name)
        record = read_checkpoint_record(checkpoint)
        source = source.with_checkpoint(checkpoint, training=record.get("noise") if record else None)
    return model, source


def _create_named(name: str, *, pretrained: bool, num_classes: int | None, task: str,
                  model_kwargs: dict[str, Any] | None) -> tuple[nn.Module, ModelSource]:
    """An embedded, torchvision or timm model by name."""
    from . import embedded

    architecture = embedded.architectures().get(name)
    if architecture is not None:
        task_of, build = architecture
        if task_of != task:
            raise InvalidParameterError(f"{name} is an embedded {task_of} architecture: smooth it with "
                                        f"{embedded.TASKS[task_of]}")
        if pretrained:
            raise ModelUnavailableError(
                f"{name} is an embedded architecture without weights of its own: train it from scratch with "
                "{no_weights}, or load a checkpoint into it with {checkpoint}",
                no_weights=Wording("pretrained=False", "--no-pretrained"), checkpoint=CHECKPOINT)
        classes = {} if num_classes is None else {"num_classes": num_classes}
        kwargs = dict(model_kwargs or {})
        return build(**classes, **kwargs).eval(), ModelSource(name, False, kwargs=kwargs or None)
    info = embedded.embedded_model_info(name)
    if info is not None:
        if model_kwargs:
            raise InvalidParameterError(f"{name} is an embedded model: it takes no model_kwargs (got {model_kwargs})")
        if info["task"] != task:
            raise InvalidParameterError(
                f"{name} is an embedded {info['task']} model: {{use}}",
                use=Wording(f"smooth it with {embedded.TASKS[str(info['task'])]}"
                            + (" (or vision_rs.video.smooth(..., framewise=True))" if info["task"] == "image-classification" else ""),
                            f"certify with {embedded.TASK_COMMANDS[str(info['task'])]}"))
        model = embedded.load_embedded(name, pretrained=pretrained)
        weights = embedded.shipped_weights(str(info["file"])) if pretrained else None
        return model, ModelSource(name, pretrained, str(weights) if weights else None, file_sha256(weights) if weights else None)
    if name.startswith(TORCHVISION_PREFIX):
        return create_torchvision_model(name[len(TORCHVISION_PREFIX):], pretrained=pretrained, num_classes=num_classes,
                                        model_kwargs=model_kwargs)
    return create_timm_model(name, pretrained=pretrained, num_classes=num_classes, model_kwargs=model_kwargs)


def recorded_pretrained_cfg(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``pretrained_cfg`` that :func:`vision_rs.models.adapters.read_input_spec` reads back as the recorded input
    ``spec`` exactly (mean, std, size, and the resize before the crop stated outright)."""
    from ..sampling.preprocess import timm_scale_size

    size = spec.get("input_size")
    resize = spec.get("resize_size")
    if resize is None and size is not None:
        resize = timm_scale_size((int(size[1]), int(size[2])), float(spec.get("crop_pct", 1.0)))
    return {key: spec[key] for key in ("mean", "std", "input_size", "crop_pct", "crop_mode", "interpolation")
            if key in spec} | {"resize_size": list(resize) if resize is not None else None}


def create_recorded_model(path: str | os.PathLike, record: dict[str, Any], *, num_classes: int | None = None,
                          task: str = "image-classification") -> tuple[nn.Module, ModelSource]:
    """The model a vision-rs checkpoint's ``record`` describes, with the checkpoint's weights and recorded input spec."""
    architecture = record["architecture"]
    name, recorded_classes = str(architecture.get("name")), architecture.get("num_classes")
    if name.startswith("module:"):
        kind = name[len("module:"):]
        raise InvalidParameterError(
            f"{path} was trained from a Python module of class {kind}, which {{build}}", build=Wording(
                "vision-rs cannot build by name: build that module and pass it with checkpoint=PATH",
                "the command line cannot build: certify it from Python (vision_rs.smooth(module, checkpoint=PATH))"))
    if record.get("task", task) != task:
        raise InvalidParameterError(f"{path} holds a {record['task']} model (trained by vision-rs); certify it as one")
    if num_classes is not None and recorded_classes is not None and num_classes != recorded_classes:
        raise InvalidParameterError(f"{path} holds a model with {recorded_classes} classes, not {num_classes}; "
                                    "leave the number of classes out: the checkpoint's record says it")
    model, source = _create_named(name, pretrained=False, num_classes=recorded_classes, task=task,
                                  model_kwargs=architecture.get("kwargs"))
    if isinstance(record.get("spec"), dict):
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **recorded_pretrained_cfg(record["spec"])}
    try:
        load_checkpoint_into(model, path)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} does not fit the architecture its own record names ({name}, {recorded_classes} "
                              f"classes): the file is damaged or was edited. {exc}") from exc
    return model, source.with_checkpoint(path, training=record.get("noise"))
