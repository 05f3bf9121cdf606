"""The sampling engine: one loop for every method.

noise → view → base model → tally, batch after batch, with

* memory bounded in n: one noise buffer of ``batch_size`` images, reused;
* fixed batch shapes: the last batch is computed whole and its extra rows masked;
* noise drawn on the model's device from a seeded ``torch.Generator``;
* votes counted on the device, one host sync per phase (``Tally.result``);
* ``torch.inference_mode``, optional autocast and ``channels_last``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from .errors import ModelOutputError
from .noise import Noise
from .params import check_count
from .views import View


@dataclass(frozen=True)
class EngineConfig:
    """How samples are pushed through the model; none of it changes what is certified."""

    batch_size: int = 256
    """Noisy images per forward pass (times the number of views)."""
    autocast_dtype: torch.dtype | None = None
    """Run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``); None = fp32."""
    channels_last: bool = False
    """Feed the model ``channels_last`` tensors (convert the model too; see ``smooth``)."""
    progress: bool = True
    """Show a tqdm progress bar per sampling phase."""

    def __post_init__(self) -> None:
        check_count("batch_size", self.batch_size)

    def with_overrides(self, batch_size: int | None = None, progress: bool | None = None) -> EngineConfig:
        changes: dict[str, object] = {}
        if batch_size is not None:
            changes["batch_size"] = batch_size
        if progress is not None:
            changes["progress"] = progress
        return replace(self, **changes) if changes else self


class Tally(Protocol):
    """Accumulates model outputs [B, views, classes] on the device; ``result`` is the phase's one host sync."""

    def update(self, logits: torch.Tensor) -> None: ...

    def result(self) -> np.ndarray: ...


class VoteTally:
    """Counts argmax votes of a single view per class, and non-finite outputs, on the device."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None
        self.non_finite: torch.Tensor | None = None

    def update(self, logits: torch.Tensor) -> None:
        if logits.shape[1] != 1:
            raise ValueError(f"VoteTally counts a single view, got {logits.shape[1]}")
        scores = logits[:, 0, :]
        votes = torch.bincount(scores.argmax(dim=1), minlength=scores.shape[1])
        bad = (~torch.isfinite(scores)).any(dim=1).sum()
        if self.counts is None:
            self.counts, self.non_finite = votes, bad
        else:
            self.counts += votes
            self.non_finite += bad

    def result(self) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("no samples were tallied")
        summary = torch.cat([self.counts, self.non_finite.reshape(1)]).cpu()  # the one host sync
        counts, bad = summary[:-1], int(summary[-1])
        if bad:
            raise ModelOutputError(f"the model returned NaN or Inf logits for {bad} noisy inputs")
        return counts.numpy().astype(np.int64)


def check_logits(logits: object, batch: int, num_classes: int | None) -> torch.Tensor:
    """Return ``logits`` if it is a tensor [batch, num_classes]; raise ModelOutputError otherwise."""
    if not isinstance(logits, torch.Tensor):
        raise ModelOutputError(
            f"the model returned {type(logits).__name__}, not a tensor of logits [B, num_classes]; "
            "wrap it in a module whose forward returns the class scores"
        )
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ModelOutputError(
            f"the model returned shape {tuple(logits.shape)} for a batch of {batch}; "
            f"expected [{batch}, num_classes] logits (is it a classifier, or does it keep spatial dimensions?)"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ModelOutputError(f"the model returned {logits.shape[1]} classes, expected num_classes={num_classes}")
    return logits


def _first_forward(classifier: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, note: str) -> torch.Tensor:
    """The first batch's forward pass, turning a shape/channel failure of the model into our error."""
    try:
        return classifier(inputs)
    except RuntimeError as exc:
        hint = f"; {note}" if note else ""
        raise ModelOutputError(f"the model failed on a first batch of inputs shaped {tuple(inputs.shape)}: {exc}{hint}") from exc


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sample(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    noise: Noise,
    view: View,
    tally: Tally,
    num: int,
    generator: torch.Generator,
    config: EngineConfig,
    num_classes: int | None = None,
    desc: str = "sampling",
) -> np.ndarray:
    """Push ``num`` noisy copies of ``image`` [C, H, W] through view and classifier into ``tally``; return its result.

    Runs in batches of ``min(config.batch_size, num)`` images; memory does not grow with ``num``.
    """
    check_count("num", num)
    batch = min(config.batch_size, num)
    layout = torch.channels_last if config.channels_last and image.ndim == 3 else torch.contiguous_format
    shape = (batch, noise.output_channels(image.shape[0]), *image.shape[1:])
    buffer = torch.empty(shape, device=image.device, dtype=image.dtype, memory_format=layout)
    done = 0
    with torch.inference_mode(), tqdm(total=num, desc=desc, disable=not config.progress, leave=False) as bar:
        while done < num:
            valid = min(batch, num - done)
            inputs = view(noise.perturb_(buffer, image, generator))
            if config.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with _autocast(image.device, config.autocast_dtype):
                logits = classifier(inputs) if done else _first_forward(classifier, inputs, noise.input_note(image.shape[0]))
            logits = check_logits(logits, inputs.shape[0], num_classes).float()
            num_classes = logits.shape[1]
            tally.update(rearrange(logits, "(b k) c -> b k c", k=view.count)[:valid])
            done += valid
            bar.update(valid)
    return tally.result()
