"""The sampling engine: one loop for every method.

noise → view → base model → tally, batch after batch, with

* memory bounded in n: one reused noise buffer of at most ``batch_size // views`` images (one per CUDA stream);
* one batch shape per phase: num draws split into the fewest equal batches (``plan_batches``),
  the few extra rows of the last one computed and masked;
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
    streams: int = 2
    """CUDA streams that consecutive batches alternate between (1: no overlap); ignored on the CPU."""

    def __post_init__(self) -> None:
        check_count("batch_size", self.batch_size)
        check_count("streams", self.streams)

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


class _DeviceCounts:
    """Counts kept on the device, with a count of non-finite model outputs; ``result`` is one host sync.

    Counting uses ``index_add_`` into preallocated counters: unlike ``bincount``, whose output
    size depends on the data, it never waits for the device.
    """

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None
        self.non_finite: torch.Tensor | None = None

    def _add(self, cells: torch.Tensor, shape: tuple[int, ...], logits: torch.Tensor) -> None:
        """Count one vote for each flat index in ``cells`` into counters of ``shape``."""
        if self.counts is None:
            self.counts = torch.zeros(shape, dtype=torch.int64, device=logits.device)
            self.non_finite = torch.zeros((), dtype=torch.int64, device=logits.device)
        flat = cells.flatten()
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))
        self.non_finite += (~torch.isfinite(logits)).flatten(1).any(dim=1).sum()

    def result(self) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("no samples were tallied")
        summary = torch.cat([self.counts.flatten(), self.non_finite.reshape(1)]).cpu()  # the one host sync
        counts, bad = summary[:-1], int(summary[-1])
        if bad:
            raise ModelOutputError(f"the model returned NaN or Inf logits for {bad} noisy inputs")
        return counts.numpy().astype(np.int64).reshape(tuple(self.counts.shape))


class VoteTally(_DeviceCounts):
    """Votes per class [classes]: the argmax of one view, or of the views' softmax reduced by ``reduce``.

    With several views per noisy image and ``reduce`` "mean" or "max", each draw's
    softmax outputs are averaged (or maxed) across views before the argmax: the
    reduced classifier is an ordinary base classifier of the noisy image.
    """

    def __init__(self, reduce: str | None = None) -> None:
        super().__init__()
        self.reduce = reduce

    def update(self, logits: torch.Tensor) -> None:
        if logits.shape[1] == 1 and self.reduce is None:
            scores = logits[:, 0, :]
        elif self.reduce == "mean":
            scores = logits.softmax(dim=-1).mean(dim=1)
        elif self.reduce == "max":
            scores = logits.softmax(dim=-1).amax(dim=1)
        else:
            raise ValueError(f"{logits.shape[1]} views need reduce='mean' or 'max', got {self.reduce!r}")
        self._add(scores.argmax(dim=1), (logits.shape[2],), logits)


class ViewVoteTally(_DeviceCounts):
    """Votes per view and class [views, classes]: how often each view's argmax was each class."""

    def update(self, logits: torch.Tensor) -> None:
        views, classes = logits.shape[1:]
        cells = torch.arange(views, device=logits.device) * classes + logits.argmax(dim=2)  # [B, k]
        self._add(cells, (views, classes), logits)


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


def _streams(device: torch.device, count: int) -> list[torch.cuda.Stream | None]:
    """``count`` CUDA streams for consecutive batches on a CUDA device; [None] (the current stream) elsewhere."""
    if device.type != "cuda" or count < 2:
        return [None]
    return [torch.cuda.Stream(device=device) for _ in range(count)]


def _forward(
    classifier: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, config: EngineConfig, note: str | None,
    num_classes: int | None,
) -> torch.Tensor:
    """Logits [N, classes] of N model inputs, in chunks of at most ``config.batch_size`` (views of one draw may be more)."""
    inputs = inputs.contiguous(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    outputs = []
    for chunk in inputs.split(config.batch_size):
        with _autocast(inputs.device, config.autocast_dtype):
            logits = classifier(chunk) if note is None else _first_forward(classifier, chunk, note)
        logits = check_logits(logits, chunk.shape[0], num_classes).float()
        num_classes, note = logits.shape[1], None
        outputs.append(logits)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def plan_batches(num: int, views: int, batch_size: int) -> tuple[int, int]:
    """(draws per batch, batches) for ``num`` noisy draws of ``views`` model inputs each.

    The fewest batches that keep a forward pass at most ``batch_size`` inputs (at
    least one draw each), all of one size, so the padding computed in the last batch
    is below one draw per batch: 100 draws at 64 per batch run as 2 × 50, not 2 × 64.
    """
    most = min(max(1, batch_size // views), num)
    batches = -(-num // most)
    return -(-num // batches), batches


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

    Each batch holds at most ``batch_size // views`` noisy images (at least one; see
    ``plan_batches``), so the model sees at most ``batch_size`` inputs per forward pass
    whatever ``num`` and the number of views are. On CUDA, consecutive batches go to
    ``config.streams`` streams, each with its own noise buffer, so noise, crops and the
    model of one batch overlap the next; the tally runs on the current stream after
    waiting for the batch's stream.
    """
    check_count("num", num)
    draws, _ = plan_batches(num, view.count, config.batch_size)
    # always contiguous: normal_ into a channels_last buffer is ~9x slower on the CPU, and the layout would change
    # which noise value lands on which pixel; _forward hands the model channels_last inputs when asked
    shape = (draws, noise.output_channels(image.shape[0]), *image.shape[1:])
    streams = _streams(image.device, config.streams)
    buffers = [torch.empty(shape, device=image.device, dtype=image.dtype) for _ in streams]
    main = torch.cuda.current_stream(image.device) if streams[0] is not None else None
    for stream, buffer in zip(streams, buffers):
        if stream is not None:
            stream.wait_stream(main)  # the image and the buffers are ready before any side stream uses them
            # made on the current stream, used on a side one: the allocator must not hand their memory out
            # again before that stream is done with them, also when an error ends the loop early
            buffer.record_stream(stream)
            image.record_stream(stream)
    done, step = 0, 0
    with torch.inference_mode(), tqdm(total=num, desc=desc, disable=not config.progress, leave=False) as bar:
        while done < num:
            valid = min(draws, num - done)
            stream, buffer = streams[step % len(streams)], buffers[step % len(buffers)]
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                inputs = view(noise.perturb_(buffer, image, generator))
                note = noise.input_note(image.shape[0]) if done == 0 else None
                logits = _forward(classifier, inputs, config, note, num_classes)
            if stream is not None:
                main.wait_stream(stream)  # counting waits for this batch, the next batch may already run
                logits.record_stream(main)
            num_classes = logits.shape[1]
            tally.update(rearrange(logits, "(b k) c -> b k c", k=view.count)[:valid])
            done, step = done + valid, step + 1
            bar.update(valid)
    return tally.result()
