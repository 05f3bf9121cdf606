"""The sampling engine: one loop for every method.

noise → view → base model → tally, batch after batch, with

* memory bounded in n and in input size: one reused noise buffer of at most ``batch_size // views`` draws
  (one per CUDA stream), fewer when the draws and their model inputs would exceed ``memory_budget``;
* one batch shape per phase: num draws split into the fewest equal batches (``plan_batches``),
  the few extra rows of the last one computed and masked;
* noise drawn on the model's device from a seeded ``torch.Generator``;
* votes counted on the device in a few kernels per batch, one host sync per phase (``Tally.result``), plus one per look when a
  stopping rule (``stop``) is checked between batches on a geometric schedule (``look_schedule``);
* ``torch.inference_mode``, optional autocast and ``channels_last``;
* on CUDA, optionally, full batches replayed as one CUDA graph (``cuda_graphs``, :mod:`.graphs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from typing_extensions import Self

from ..errors import InvalidImageError, ModelOutputError
from ..params import check_count, check_flag
from ..wording import Wording, size_in_bytes
from .graphs import MIN_REPLAYS, GraphedBatch, record_batch
from .noise import Noise
from .views import View

GIB = 1 << 30
FIRST_LOOK = 32
"""A stopping rule is first checked at the first batch boundary at or after this many draws."""
LOOK_RATIO = 1.25
"""Each later look comes at the first batch boundary at or after this many times the draws of the one before."""

StopRule = Callable[[np.ndarray, int], bool]
"""``stop(counts, draws)``: the tally's counts after ``draws`` draws; True ends sampling there."""
ProgressReport = Callable[[str, int, int], None]
"""``report(phase, done, total)``: called when a sampling phase starts (``done`` = 0) and after each of its batches,
with the draws done of the phase's total."""


@dataclass(frozen=True)
class EngineConfig:
    """How samples are pushed through the model; none of it changes what is certified."""

    batch_size: int = 256
    """Noisy images per forward pass (times the number of views)."""
    autocast_dtype: torch.dtype | None = None
    """Run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``); None = fp32."""
    channels_last: bool = False
    """Feed the model ``channels_last`` tensors (convert the model too; see ``smooth``)."""
    progress: bool | ProgressReport = True
    """Show a tqdm progress bar per sampling phase (True), nothing (False), or call ``progress(phase, done, total)``
    at the start of each phase and after each batch (a :data:`ProgressReport`, e.g. for a page's progress bar)."""
    streams: int = 2
    """CUDA streams that consecutive batches alternate between (1: no overlap); ignored on the CPU."""
    memory_budget: int = 2 * GIB
    """Bytes the noisy draws of one batch and their model inputs may take, over all streams."""
    cuda_graphs: bool = False
    """On CUDA, record a full batch as a CUDA graph and replay it (one stream; same noise as without, see
    :mod:`.graphs`); for small models whose rate is bound by launching kernels. Ignored on the CPU."""

    def __post_init__(self) -> None:
        check_count("batch_size", self.batch_size)
        check_count("streams", self.streams)
        check_count("memory_budget", self.memory_budget)
        check_flag("cuda_graphs", self.cuda_graphs)

    def streams_on(self, device: torch.device) -> int:
        """The CUDA streams batches alternate between on ``device``: ``streams`` on CUDA, 1 with graphs or elsewhere."""
        return self.streams if device.type == "cuda" and not self.cuda_graphs else 1

    def with_overrides(self, batch_size: int | None = None, progress: bool | ProgressReport | None = None) -> EngineConfig:
        changes: dict[str, object] = {}
        if batch_size is not None:
            changes["batch_size"] = batch_size
        if progress is not None:
            changes["progress"] = progress
        return replace(self, **changes) if changes else self


class Tally(Protocol):
    """Accumulates model outputs [B, views, ...] on the device; ``result`` is the phase's one host sync."""

    def check(self, outputs: object, rows: int) -> torch.Tensor:
        """The outputs of one forward pass over ``rows`` inputs, validated; raises ModelOutputError."""
        ...

    def update(self, outputs: torch.Tensor) -> None: ...

    def result(self) -> np.ndarray: ...


class _DeviceCounts:
    """Counts kept on the device, with a running sum of every model output; ``result`` is one host sync.

    Counting uses ``index_add_`` of one reused vector of ones into preallocated counters: unlike ``bincount``,
    whose output size depends on the data, it never waits for the device. Model outputs are class logits
    [rows, num_classes] (``num_classes`` fixed by the first batch when not given).

    Non-finite outputs are caught by one reduction per batch: the float64 sum of all outputs is finite exactly
    when every output is. float32 values are exact in float64, fewer than 2^53 of them (each below 3.5e38)
    cannot overflow it, and NaN and ±Inf propagate (+Inf with −Inf gives NaN).
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.counts: torch.Tensor | None = None
        self.output_sum: torch.Tensor | None = None
        self._ones: torch.Tensor | None = None
        self._starts: torch.Tensor | None = None

    def check(self, outputs: object, rows: int) -> torch.Tensor:
        logits = check_logits(outputs, rows, self.num_classes)
        self.num_classes = logits.shape[1]
        return logits

    def _add(self, cells: torch.Tensor, shape: tuple[int, ...], outputs: torch.Tensor) -> None:
        """Count one vote for each flat index in ``cells`` into counters of ``shape``; add ``outputs`` to the sum."""
        flat = cells.flatten()
        if self.counts is None:
            self.counts = torch.zeros(shape, dtype=torch.int64, device=outputs.device)
            self.output_sum = torch.zeros((), dtype=torch.float64, device=outputs.device)
        if self._ones is None or self._ones.numel() < flat.numel():
            self._ones = torch.ones_like(flat)
        self.counts.view(-1).index_add_(0, flat, self._ones[: flat.numel()])
        self.output_sum += outputs.sum(dtype=torch.float64)

    def _cell_starts(self, cells: int, classes: int, device: torch.device) -> torch.Tensor:
        """The flat index of class 0 of each of ``cells`` counters of ``classes`` classes (made once)."""
        if self._starts is None or self._starts.numel() != cells:
            self._starts = torch.arange(cells, device=device) * classes
        return self._starts

    def result(self) -> np.ndarray:
        if self.counts is None or self.output_sum is None:
            raise RuntimeError("no samples were tallied")
        finite = torch.isfinite(self.output_sum).reshape(1).to(torch.int64)
        summary = torch.cat([self.counts.flatten(), finite]).cpu()  # the one host sync
        if not summary[-1]:
            raise ModelOutputError("the model returned NaN or Inf logits for noisy copies of the input")
        return summary[:-1].numpy().astype(np.int64).reshape(tuple(self.counts.shape))


class VoteTally(_DeviceCounts):
    """Votes per class [classes]: the argmax of one view, or of the views' softmax reduced by ``reduce``.

    With several views per noisy image and ``reduce`` "mean" or "max", each draw's
    softmax outputs are averaged (or maxed) across views before the argmax: the
    reduced classifier is an ordinary base classifier of the noisy image.
    """

    def __init__(self, reduce: str | None = None, num_classes: int | None = None) -> None:
        super().__init__(num_classes)
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
        cells = self._cell_starts(views, classes, logits.device) + logits.argmax(dim=2)  # [B, k]
        self._add(cells, (views, classes), logits)


class PixelVoteTally(_DeviceCounts):
    """Per-pixel votes [h, w, classes] of segmentation outputs [B, 1, classes, H, W], counted inside ``region``.

    ``region`` is (rows, columns) slices of the H×W output (None: all of it), so localized smoothing
    counts only the output cell whose distribution produced the draws; ``size`` is the (H, W) every
    output must have (the input's own).
    """

    def __init__(self, size: tuple[int, int], region: tuple[slice, slice] | None = None, num_classes: int | None = None) -> None:
        super().__init__(num_classes)
        self.size = tuple(size)
        self.region = region or (slice(None), slice(None))

    def check(self, outputs: object, rows: int) -> torch.Tensor:
        masks = check_masks(outputs, rows, self.num_classes, self.size)
        self.num_classes = masks.shape[1]
        return masks

    def update(self, outputs: torch.Tensor) -> None:
        rows, cols = self.region
        labels = outputs[:, 0, :, rows, cols].argmax(dim=1)  # [B, h, w]
        height, width = labels.shape[1:]
        classes = outputs.shape[2]
        cells = self._cell_starts(height * width, classes, labels.device) + labels.flatten(1)
        self._add(cells, (height, width, classes), outputs)


def check_masks(masks: object, batch: int, num_classes: int | None, size: tuple[int, ...]) -> torch.Tensor:
    """Return ``masks`` if it is a tensor [batch, num_classes, H, W] at ``size``; raise ModelOutputError otherwise."""
    if not isinstance(masks, torch.Tensor):
        raise ModelOutputError(
            f"the segmentation model returned {type(masks).__name__}, not a tensor of class scores [B, classes, H, W] "
            "(or a dict with 'out', as torchvision's segmentation models)"
        )
    if masks.ndim != 4 or masks.shape[0] != batch or tuple(masks.shape[2:]) != tuple(size):
        raise ModelOutputError(
            f"the segmentation model returned shape {tuple(masks.shape)} for a batch of {batch}; expected "
            f"[{batch}, classes, {size[0]}, {size[1]}] (is it a classifier? {{use}})",
            use=Wording("use vision_rs.smooth", "use vision-rs certify"))
    if num_classes is not None and masks.shape[1] != num_classes:
        raise ModelOutputError(f"the segmentation model returned {masks.shape[1]} classes, expected {{classes}}",
                               classes=_classes_given(num_classes))
    return masks


def _classes_given(num_classes: int) -> Wording:
    return Wording(f"num_classes={num_classes}", f"--num-classes {num_classes}")


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
        raise ModelOutputError(f"the model returned {logits.shape[1]} classes, expected {{classes}}",
                               classes=_classes_given(num_classes))
    return logits


def _first_forward(classifier: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, note: Wording) -> torch.Tensor:
    """The first batch's forward pass, turning a shape/channel failure of the model into our error."""
    try:
        return classifier(inputs)
    except RuntimeError as exc:
        hint = Wording(f"; {note.python}", f"; {note.cli}") if note.python else Wording("", "")
        raise ModelOutputError(f"the model failed on a first batch of inputs shaped {tuple(inputs.shape)}: {exc}{{hint}}",
                               hint=hint) from exc


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``; nothing when ``dtype`` is None (fp32).

    Without the weight-cast cache: it lives for one context (one batch here), and CUDA graphs need it off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def _streams(device: torch.device, count: int) -> list[torch.cuda.Stream | None]:
    """``count`` CUDA streams for consecutive batches on a CUDA device; [None] (the current stream) elsewhere."""
    if device.type != "cuda" or count < 2:
        return [None]
    return [torch.cuda.Stream(device=device) for _ in range(count)]


def _memory_format(inputs: torch.Tensor, channels_last: bool) -> torch.memory_format:
    """channels_last for image batches [N, C, H, W]; clips [N, T, C, H, W] stay contiguous (their model's adapter
    chooses its own layout)."""
    return torch.channels_last if channels_last and inputs.ndim == 4 else torch.contiguous_format


def _forward(
    classifier: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, config: EngineConfig, note: Wording | None,
    check: Callable[[object, int], torch.Tensor],
) -> torch.Tensor:
    """Outputs [N, ...] of N model inputs, in chunks of at most ``config.batch_size`` (views of one draw may be more),
    each validated by ``check``."""
    inputs = inputs.contiguous(memory_format=_memory_format(inputs, config.channels_last))
    chunks = (inputs,) if inputs.shape[0] <= config.batch_size else inputs.split(config.batch_size)
    outputs = []
    with autocast_context(inputs.device, config.autocast_dtype):
        for chunk in chunks:
            output = classifier(chunk) if note is None else _first_forward(classifier, chunk, note)
            outputs.append(check(output, chunk.shape[0]))
            note = None
    # float32 outside autocast (a no-op for float32 outputs)
    return outputs[0].float() if len(outputs) == 1 else torch.cat(outputs).float()


def plan_batches(num: int, views: int, batch_size: int, max_draws: int | None = None) -> tuple[int, int]:
    """(draws per batch, batches) for ``num`` noisy draws of ``views`` model inputs each.

    The fewest batches that keep a forward pass at most ``batch_size`` inputs (at
    least one draw each) and a batch at most ``max_draws`` draws, all of one size, so the
    padding computed in the last batch is below one draw per batch: 100 draws at 64 per
    batch run as 2 × 50, not 2 × 64.
    """
    most = min(max(1, batch_size // views), num, max_draws or num)
    batches = -(-num // most)
    return -(-num // batches), batches


def look_schedule(num: int, per_batch: int, first: int = FIRST_LOOK, ratio: float = LOOK_RATIO) -> list[int]:
    """Draw counts after which a stopping rule is checked: batch boundaries (``per_batch`` draws each, the last
    one shorter), the first at or after ``first`` draws, each next at or after ``ratio`` times the one before and
    at least one batch later (``ratio`` <= 1: every batch), the last at ``num``. Fixed before any draw."""
    check_count("num", num)
    check_count("per_batch", per_batch)
    looks: list[int] = []
    done, target = 0, first
    while done < num:
        done = min(done + per_batch, num)
        if done >= target or done == num:
            looks.append(done)
            target = max(done * ratio, done + 1)
    return looks


def draw_bytes(image_shape: tuple[int, ...], noise: Noise, view: View, dtype: torch.dtype = torch.float32) -> int:
    """Bytes one noisy draw takes with its model inputs (shapes worked out on the meta device, nothing computed)."""
    noisy = torch.empty((1, image_shape[0] + noise.extra_channels, *image_shape[1:]), device="meta", dtype=dtype)
    inputs = view(noisy)
    return (noisy.numel() + inputs.numel()) * noisy.element_size()


def max_draws_per_batch(
    image_shape: tuple[int, ...], noise: Noise, view: View, config: EngineConfig, streams: int = 1, output_bytes: int = 0
) -> int:
    """How many noisy draws fit ``config.memory_budget`` per batch (each of ``streams`` keeps one batch).

    ``output_bytes``: what the model's outputs of one draw take when they are large (segmentation maps).
    Raises InvalidImageError when not even one draw fits: the input is too large for the budget.
    """
    per_draw = draw_bytes(image_shape, noise, view) + output_bytes
    most = config.memory_budget // (per_draw * streams) - 1  # one draw's worth for the image itself
    if most < 1:
        copies = f"x{streams} streams, " if streams > 1 else ""
        what = (f"an input of shape {tuple(image_shape)} takes {size_in_bytes(per_draw)} per noisy draw with its "
                f"model inputs, more than the memory budget of {size_in_bytes(config.memory_budget)} allows ({copies}"
                "plus the input itself): pass a smaller input (resize it to the model's input size first), or raise ")
        raise InvalidImageError(what + "{budget}", budget=Wording("memory_budget=BYTES", "--memory-budget SIZE"))
    return most


class _ReportedProgress:
    """A tqdm-like bar that hands each update to a :data:`ProgressReport` instead of drawing."""

    def __init__(self, report: ProgressReport, total: int, desc: str) -> None:
        self.report, self.total, self.desc, self.done = report, total, desc, 0
        report(desc, 0, total)

    def update(self, draws: int) -> None:
        self.done += draws
        self.report(self.desc, self.done, self.total)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(progress: bool | ProgressReport, total: int, desc: str) -> tqdm | _ReportedProgress:
    """The progress display of one sampling phase: a tqdm bar (shown when ``progress`` is True) or a report."""
    if callable(progress):
        return _ReportedProgress(progress, total, desc)
    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def sample(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    noise: Noise,
    view: View,
    tally: Tally,
    num: int,
    generator: torch.Generator,
    config: EngineConfig,
    desc: str = "sampling",
    output_bytes: int = 0,
    stop: StopRule | None = None,
    first_look: int = FIRST_LOOK,
    look_ratio: float = LOOK_RATIO,
) -> np.ndarray:
    """Push ``num`` noisy copies of ``image`` [C, H, W] (or [T, C, H, W]) through view and classifier into
    ``tally``; return its result.

    With ``stop``, the counts so far are handed to ``stop(counts, draws)`` at each look of
    :func:`look_schedule` (batch boundaries on a geometric schedule, the last at ``num``; one host sync
    each), and sampling ends at the first look where it returns True: the result is then the counts of
    the first ``draws`` draws, exactly those a run without ``stop`` draws first (same seed, same batches).

    Each batch holds at most ``batch_size // views`` noisy draws (at least one; see
    ``plan_batches``), so the model sees at most ``batch_size`` inputs per forward pass
    whatever ``num`` and the number of views are, and fewer when the draws would exceed the
    memory budget (see ``max_draws_per_batch``; ``output_bytes`` per draw counts large model outputs such as
    segmentation maps). On CUDA, consecutive batches go to
    ``config.streams`` streams, each with its own noise buffer, so noise, crops and the
    model of one batch overlap the next; the tally runs on the current stream after
    waiting for the batch's stream. With ``config.cuda_graphs`` (one stream), the first batch runs eagerly, is then
    recorded, and every later full batch is a replay; a last, shorter batch runs eagerly.
    """
    check_count("num", num)
    streams = _streams(image.device, config.streams_on(image.device))
    most = max_draws_per_batch(tuple(image.shape), noise, view, config, len(streams), output_bytes)
    draws, _ = plan_batches(num, view.count, config.batch_size, most)
    # always contiguous: normal_ into a channels_last buffer is ~9x slower on the CPU, and the layout would change
    # which noise value lands on which pixel; _forward hands the model channels_last inputs when asked
    shape = (draws, image.shape[0] + noise.extra_channels, *image.shape[1:])
    buffers = [torch.empty(shape, device=image.device, dtype=image.dtype) for _ in streams]
    looks = set(look_schedule(num, draws, first_look, look_ratio)) if stop is not None else set()
    main = torch.cuda.current_stream(image.device) if streams[0] is not None else None
    for stream, buffer in zip(streams, buffers):
        if stream is not None:
            stream.wait_stream(main)  # the image and the buffers are ready before any side stream uses them
            # made on the current stream, used on a side one: the allocator must not hand their memory out
            # again before that stream is done with them, also when an error ends the loop early
            buffer.record_stream(stream)
            image.record_stream(stream)

    def batch_outputs(buffer: torch.Tensor, draw_from: torch.Generator, note: Wording | None) -> torch.Tensor:
        """The model's outputs [draws, views, ...] for a batch of noisy draws made in ``buffer``."""
        outputs = _forward(classifier, view(noise.perturb_(buffer, image, draw_from)), config, note, tally.check)
        return outputs.unflatten(0, (-1, view.count))

    def full_batch(draw_from: torch.Generator) -> None:
        """One full batch on the first buffer, counted whole: what a CUDA graph records."""
        tally.update(batch_outputs(buffers[0], draw_from, None))

    graphed: GraphedBatch | None = None
    done, step = 0, 0
    try:
        with torch.inference_mode(), _progress_bar(config.progress, num, desc) as bar:
            while done < num:
                valid = min(draws, num - done)
                if graphed is not None and valid == draws:
                    graphed.replay()
                else:
                    stream, buffer = streams[step % len(streams)], buffers[step % len(buffers)]
                    draw_from = generator if graphed is None else graphed.generator
                    note = noise.input_note(image.shape[0]) if done == 0 else None
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        outputs = batch_outputs(buffer, draw_from, note)
                    if stream is not None:
                        main.wait_stream(stream)  # counting waits for this batch, the next batch may already run
                        outputs.record_stream(main)
                    tally.update(outputs[:valid])
                done, step = done + valid, step + 1
                bar.update(valid)
                if config.cuda_graphs and step == 1 and (num - done) // draws >= MIN_REPLAYS:
                    graphed = record_batch(full_batch, generator, image.device)
                if done in looks:
                    counts = tally.result()  # the look's one host sync
                    if stop(counts, done) or done == num:  # type: ignore[misc]
                        return counts
        return tally.result()
    finally:
        if graphed is not None:
            graphed.hand_back(generator)  # later phases draw on from where the replays left off
