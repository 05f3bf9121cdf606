"""Safe checkpoint loading: safetensors, or ``torch.load(weights_only=True)``; never arbitrary code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

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
