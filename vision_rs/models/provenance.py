"""What produced a result: the model's source and weights, and the software versions.

Every data-set run writes these into its run record (see :mod:`vision_rs.runs.files`), so that a resumed
run can refuse to mix models, weights or settings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from typing import Any

import torch
from torch import nn

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of a model's state dict: names, dtypes, shapes and values of every parameter and buffer.

    Two models with this fingerprint compute the same function (given the same code), whatever file
    or cache their weights came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (num_batches_tracked) too
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """Where a base model came from, as far as vision-rs can tell."""

    name: str
    """The name given to ``smooth`` (timm, ``torchvision:``, embedded, a checkpoint path) or ``module:<class>``."""
    pretrained: bool | None = None
    """Whether pretrained weights were loaded for a name (None for a module passed in)."""
    weights: str | None = None
    """The pretrained weights: the local file they were read from, or the embedded weight file."""
    weights_sha256: str | None = None
    checkpoint: str | None = None
    """A checkpoint file loaded into the model (``checkpoint=`` or a path given as the model)."""
    checkpoint_sha256: str | None = None
    kwargs: dict[str, Any] | None = None
    """Keyword arguments the named model was built with beyond its classes (e.g. ``{"in_chans": 4}``); None for none."""
    training: dict[str, Any] | None = None
    """The noise the weights were trained with, from a vision-rs training checkpoint's record (``method``, ``sigma``,
    ``details``); None when not known."""

    @classmethod
    def of_module(cls, model: nn.Module) -> ModelSource:
        kind = type(model)
        return cls(name=f"module:{kind.__module__}.{kind.__qualname__}")

    def with_checkpoint(self, path: str | os.PathLike, training: dict[str, Any] | None = None) -> ModelSource:
        """This source with the weights of checkpoint ``path`` loaded into it (and the noise they were trained with)."""
        return replace(self, checkpoint=os.fspath(path), checkpoint_sha256=file_sha256(path), training=training)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions of vision-rs and of the libraries whose changes can change results."""
    return {package: _version(package) for package in ("vision-rs", "torch", "torchvision", "timm", "numpy", "scipy")}
