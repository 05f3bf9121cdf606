"""CUDA graphs for the engine's full batches (``EngineConfig.cuda_graphs``): one launch per batch instead of one per
kernel, for models so fast on the GPU that launching their kernels from Python is what limits the rate.

A full batch (noise → view → model → tally, on the engine's static buffers) is recorded once and replayed for every
later full batch. The recording runs nothing. It draws from a *twin* of the caller's generator (same seed and
offset), registered with the graph, which torch advances by the graph's whole offset at each replay: every replay
draws fresh noise exactly where the eager batch would have. When the engine is done, the twin's state is handed back
to the caller's generator, so later phases continue where an eager run would. A failed recording leaves the caller's
generator untouched and the engine runs the batches eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MIN_REPLAYS = 8
"""Record a graph only when at least this many full batches are left: a recording costs about one eager batch plus
the graph's instantiation."""

_reported: set[str] = set()


@dataclass(frozen=True)
class GraphedBatch:
    """A recorded full batch: ``replay()`` runs one more batch, drawing from ``generator`` (the twin)."""

    replay: Callable[[], None]
    generator: torch.Generator

    def hand_back(self, generator: torch.Generator) -> None:
        """Move ``generator`` to where the replays left the twin (the draws made so far, as an eager run)."""
        generator.set_state(self.generator.get_state())


def twin_of(generator: torch.Generator) -> torch.Generator:
    """A new generator on ``generator``'s device in the same state (seed and offset)."""
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


def record_batch(step: Callable[[torch.Generator], None], generator: torch.Generator,
                 device: torch.device) -> GraphedBatch | None:
    """``step(twin)`` (one full batch on static buffers) recorded as a CUDA graph; None on a device without graphs or
    when the recording fails (a model that waits for the host, say), with the reason logged once per process."""
    if device.type != "cuda":
        _report(f"cuda_graphs has no effect on {device.type}: batches run as usual")
        return None
    graph = torch.cuda.CUDAGraph()
    if not hasattr(graph, "register_generator_state"):
        _report(f"torch {torch.__version__} cannot record the engine's own generator in a CUDA graph (newer versions "
                "can): batches run as usual")
        return None
    twin = twin_of(generator)
    graph.register_generator_state(twin)
    torch.cuda.synchronize(device)  # the eager batches before are finished before the recording starts
    failure: RuntimeError | None = None
    # capture_begin/end rather than torch.cuda.graph, which also runs gc.collect() and empty_cache() (tens of ms)
    with torch.cuda.stream(torch.cuda.Stream(device)):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            step(twin)
        except RuntimeError as exc:  # the cause; ending the recording then fails too
            failure = exc
        finally:  # also when another error ends the step: no recording stays open
            try:
                graph.capture_end()
            except RuntimeError as exc:
                failure = failure or exc
    if failure is not None:
        _report(f"cannot record a batch as a CUDA graph, batches run without one: {str(failure).splitlines()[0]}")
        return None
    return GraphedBatch(graph.replay, twin)


def _report(message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        log.warning("%s", message)
