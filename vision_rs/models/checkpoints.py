"""Safe checkpoint loading: safetensors, or ``torch.load(weights_only=True)``; never arbitrary code.

Checkpoints written by vision-rs (:func:`save_checkpoint`, used by ``vision-rs train``) are safetensors files
whose metadata holds a JSON *record* under :data:`RECORD_KEY`: the architecture, input spec and noise the
weights were trained with, so that loading them needs no ``arch=`` or preprocessing options.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ..errors import CheckpointError

RECORD_KEY = "vision_rs"
"""Safetensors metadata key of the JSON record a vision-rs checkpoint carries."""

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, refusing anything that needs code to unpickle.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and the
    ``module.`` prefix of DataParallel/DDP checkpoints are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refusing to load {path}: it needs arbitrary Python code to unpickle "
                "(torch.load with weights_only=True failed). Save a plain state_dict, "
                "preferably with safetensors.torch.save_file, and pass that instead."
            ) from exc
        except Exception as exc:  # a corrupt file surfaces as RuntimeError, KeyError, EOFError, ... depending on its bytes
            raise CheckpointError(f"cannot read checkpoint {path}: {exc!r}. Is the file complete?") from exc
    return _unwrap_state_dict(state, path)


def _unwrap_state_dict(state: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, dict) and not _is_tensor_dict(state):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not _is_tensor_dict(state):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    cleaned = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):  # nested wrappers: "_orig_mod.module.", "module._orig_mod.", ...
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def _is_tensor_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strict: every key must match) and return it."""
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: {exc}\n"
            "Check --arch and --num-classes (or arch=/num_classes=) against how it was trained."
        ) from exc
    return model


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    A crash or Ctrl-C at any moment leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, torch.Tensor], record: dict[str, Any] | None = None) -> Path:
    """Write a state dict as a safetensors file, atomically, with ``record`` (JSON-ready) in its metadata."""
    from safetensors.torch import save

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    metadata = {RECORD_KEY: json.dumps(record)} if record is not None else None
    return write_atomically(path, lambda handle: handle.write(save(tensors, metadata=metadata)))


def read_checkpoint_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a checkpoint written by :func:`save_checkpoint`; None for any other file (``.pt``, plain
    safetensors, safetensors from elsewhere)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            text = (handle.metadata() or {}).get(RECORD_KEY)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its vision-rs record is not valid JSON ({exc}); the file is damaged") from exc
    return record if isinstance(record, dict) else None
