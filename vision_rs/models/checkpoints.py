"""Safe checkpoint loading: safetensors, or ``torch.load(weights_only=True)``; never arbitrary code.

Checkpoints written by vision-rs (:func:`save_checkpoint`, used by ``vision-rs train``) are safetensors files
whose metadata holds a JSON *record* under :data:`RECORD_KEY`: the architecture, input spec and noise the
weights were trained with, so that loading them needs no ``arch=`` or preprocessing options.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ..errors import CheckpointError, OutputPathError
from ..wording import Wording, plural

log = logging.getLogger(__name__)

RECORD_KEY = "vision_rs"
"""Safetensors metadata key of the JSON record a vision-rs checkpoint carries (its architecture, among others)."""

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


CHECK_ARCH = Wording("Check arch= and num_classes= against how it was trained",
                     "Check --arch and --num-classes against how it was trained")
"""What to do when a model checkpoint does not fit the architecture asked for."""


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike, *, expected: str | None = None,
                         advice: Wording = CHECK_ARCH) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strict: every key must match) and return it.

    A checkpoint that does not fit gets CheckpointError saying which architecture was asked for (``expected``, by
    default the model's class), which one the checkpoint holds when its record says, how many tensors differ, and
    ``advice``; the differing keys go to the debug log (the command line's ``--verbose``).
    """
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise _does_not_fit(model, Path(path), state, expected or type(model).__name__, advice) from exc
    return model


def _does_not_fit(model: nn.Module, path: Path, state: dict[str, torch.Tensor], expected: str,
                  advice: Wording) -> CheckpointError:
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    reshaped = sorted(key for key in own.keys() & state.keys() if own[key].shape != state[key].shape)
    log.debug("checkpoint %s against %s: missing %s; unexpected %s; other shapes %s", path, expected, missing,
              unexpected, [f"{key}: {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} in the model"
                           for key in reshaped])
    recorded = recorded_architecture(path)
    holds = f" (its record says it holds {recorded})" if recorded else ""
    differences = [f"{len(missing):,} of the model's tensors are not in it" if missing else "",
                   f"{len(unexpected):,} of its tensors are not in the model" if unexpected else "",
                   f"{plural(len(reshaped), 'tensor')} of both differ in shape" if reshaped else ""]
    return CheckpointError(
        f"checkpoint {path} holds another architecture than {expected}{holds}: "
        + ", ".join(filter(None, differences)) + ". {advice} ({keys}).", advice=advice,
        keys=Wording("the debug log lists the keys", "--verbose lists the keys"))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    A crash or Ctrl-C at any moment leaves either the old file or the new one, never a half-written one; a write
    that fails (a full disk, a folder that cannot be written) raises OutputPathError naming ``path``, left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}; it is left as it was") from exc
    finally:
        temporary.unlink(missing_ok=True)
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, torch.Tensor], record: dict[str, Any] | None = None) -> Path:
    """Write a state dict as a safetensors file, atomically, with ``record`` (JSON-ready) in its metadata."""
    from safetensors.torch import save

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    metadata = {RECORD_KEY: json.dumps(record)} if record is not None else None
    return write_atomically(path, lambda handle: handle.write(save(tensors, metadata=metadata)))


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The string metadata of a safetensors file; None for a file of another kind or one that does not exist.
    Raises CheckpointError for a ``.safetensors`` file that cannot be read."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc


def read_checkpoint_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a checkpoint written by :func:`save_checkpoint`; None for any other file (``.pt``, plain
    safetensors, safetensors from elsewhere)."""
    path = Path(path)
    text = (_safetensors_metadata(path) or {}).get(RECORD_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its vision-rs record is not valid JSON ({exc}); the file is damaged") from exc
    return record if isinstance(record, dict) else None


def recorded_architecture(path: str | os.PathLike) -> str | None:
    """The architecture a safetensors checkpoint's metadata names (``arch``, ``architecture``, or the ``architecture``
    of a vision-rs record); None when it names none or the file cannot say."""
    try:
        metadata, record = _safetensors_metadata(Path(path)) or {}, read_checkpoint_record(path) or {}
    except CheckpointError:
        return None
    named = record.get("architecture")
    named = named.get("name") if isinstance(named, dict) else named
    return str(named or metadata.get("architecture") or metadata.get("arch") or "") or None
