"""Torch devices by name, checked against what this machine has before any model is built on one."""

from __future__ import annotations

import os

import torch

from ..errors import InvalidParameterError
from ..wording import Wording, plural

DEVICE_FORMS = "cpu, cuda, cuda:N or mps"
"""The device strings vision-rs takes (any other torch device type works too, where this torch build has it)."""


def devices_here() -> list[str]:
    """The devices this process can use: ``cpu``, then ``cuda:0`` … ``cuda:N-1``, then ``mps`` where present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None: the caller's default), refused with our error when it is
    not a device string or names a device this process cannot see."""
    if device is None:
        return None
    said = Wording(f"device={str(device)!r}", f"--device {device}")
    here = ", ".join(devices_here())
    if isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError):
            raise InvalidParameterError(f"{{device}} is not a torch device: write {DEVICE_FORMS} "
                                        f"(the devices here: {here})", device=said) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise InvalidParameterError(f"{{device}}: no CUDA device is visible to this process{hidden}; the devices "
                                        f"here: {here}", device=said)
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InvalidParameterError(f"{{device}}: this process sees "
                                        f"{plural(torch.cuda.device_count(), 'CUDA device')}; "
                                        f"the devices here: {here}", device=said)
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidParameterError(f"{{device}}: no Apple MPS device here; the devices here: {here}", device=said)
    elif parsed.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as exc:
            raise InvalidParameterError(f"{{device}}: this torch build cannot use it ({exc}); the devices here: {here}",
                                        device=said) from exc
    return parsed
