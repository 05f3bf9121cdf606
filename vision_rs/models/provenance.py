"""What produced a result: the model's source and weights, and the software versions.

Every data-set run writes these into its run record (see :mod:`vision_rs.runs.files`), so that a resumed
run can refuse to mix models, weights or settings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
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

    @classmethod
    def of_module(cls, model: nn.Module) -> ModelSource:
        kind = type(model)
        return cls(name=f"module:{kind.__module__}.{kind.__qualname__}")

    def with_checkpoint(self, path: str | os.PathLike) -> ModelSource:
        return ModelSource(self.name, self.pretrained, self.weights, self.weights_sha256, os.fspath(path), file_sha256(path))

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
