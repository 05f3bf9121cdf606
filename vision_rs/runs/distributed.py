"""Data-set runs over many processes, GPUs and machines, launched by ``torchrun``.

Under ``torchrun`` every process (a *rank*) runs the same command. :func:`ranks_from_environment` reads
what torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`process_group` joins the ranks with ``torch.distributed`` (gloo on CPUs, NCCL on GPUs) for the
few messages a run needs: rank 0 says which inputs are left, and when all ranks are done it merges their
files. No tensors travel: every rank certifies its own inputs, each with its own seed ``seed + idx``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import InvalidParameterError, MissingDependencyError, VisionRSError
from ..wording import plural

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun (and ``torch.distributed``'s ``env://`` rendezvous) sets for every process."""

RANK_WAIT = timedelta(hours=24)
"""How long a rank waits for the others in the process group. A rank that finished its share waits for the
slowest one (up to about one input's time, hours for a long video at a large n), so the default timeouts
(10 min for NCCL) would end healthy runs; a rank that fails ends the run at once under torchrun, whose
agent stops every process when one exits with an error."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run over ``world_size`` processes."""

    rank: int
    world_size: int
    local_rank: int | None
    """Position on its own machine (the GPU it takes); None when not known (a process group set up by hand)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 merges the files and shows the progress bar."""
        return self.rank == 0

    def share(self, indices: Sequence[int]) -> list[int]:
        """This rank's inputs among the unfinished ``indices`` (in order): every ``world_size``-th, from position ``rank``.

        Dealing the *unfinished* inputs (not i ≡ rank mod world_size over all of them) keeps the shares within
        one input of each other also when resuming a run that another number of processes, or a crash, left
        half done; neighbours (often of one class, of similar cost) go to different ranks.
        """
        return list(indices[self.rank :: self.world_size])

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def ranks_from_environment(environ: Mapping[str, str] = os.environ) -> Ranks | None:
    """The ranks torchrun describes in ``environ``, or None when not running under torchrun."""
    if not all(environ.get(name) for name in TORCHRUN_VARIABLES):
        return None
    try:
        rank, world_size, local_rank = (int(environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError as exc:
        raise InvalidParameterError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {exc}") from exc
    if not 0 <= rank < world_size or local_rank < 0:
        raise InvalidParameterError(f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} do not describe a "
                                    "process of the run: need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return Ranks(rank, world_size, local_rank)


def resolve_ranks(distributed: bool | None) -> Ranks | None:
    """The ranks a run shards over: None (one process) when ``distributed`` is False, or when it is None (auto) and
    neither torchrun's environment nor an initialised process group is there; ``True`` insists on one of them."""
    if distributed is False:
        return None
    ranks = ranks_from_environment()
    if ranks is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        local = os.environ.get("LOCAL_RANK")
        ranks = Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(local) if local else None)
    if ranks is None and distributed:
        raise InvalidParameterError(
            "distributed=True needs torchrun (or a torch.distributed process group): start the run with "
            "`torchrun --nproc-per-node N -m vision_rs certify ...` or leave distributed=None")
    return ranks


def rank_device(device: torch.device | str, ranks: Ranks | None) -> torch.device:
    """The device a rank certifies on: the GPU of its ``LOCAL_RANK`` when ``device`` is a GPU, ``device`` otherwise."""
    device = torch.device(device)
    if ranks is None or device.type != "cuda" or ranks.local_rank is None:
        return device
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise InvalidParameterError(
            f"{ranks} has LOCAL_RANK {ranks.local_rank} but sees {plural(count, 'GPU')}: start at most {count} per "
            "machine (--nproc-per-node), or certify on the CPU (--device cpu)")
    return torch.device("cuda", ranks.local_rank)


def place_on_rank_device(certifier: object, ranks: Ranks | None) -> None:
    """Move a smoothed model (classifier, video, segmentation: anything with a ``base`` module and a ``device``) on a
    GPU to the GPU of its rank (in place); others stay where they are."""
    if ranks is None or not isinstance(getattr(certifier, "base", None), torch.nn.Module) or getattr(certifier, "device", None) is None:
        return
    target = rank_device(certifier.device, ranks)
    if target != certifier.device:
        certifier.base.to(target)
        certifier.device = target


def backend_for(device: torch.device | str | None) -> str:
    """NCCL for ranks on GPUs, gloo for ranks on CPUs."""
    return "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(ranks: Ranks | None, device: torch.device | str | None) -> Iterator[None]:
    """Join the ranks (``env://`` rendezvous: the variables torchrun sets) for the duration, and leave cleanly.

    Nothing happens for one process, or when a process group is already initialised (its owner destroys it).
    """
    dist = torch.distributed
    if ranks is None or (dist.is_available() and dist.is_initialized()):
        yield
        return
    backend = backend_for(device)
    if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()) or (
            backend == "nccl" and not dist.is_nccl_available()):
        raise MissingDependencyError(f"this torch build has no torch.distributed {backend} backend, which {ranks} needs; "
                                     "install a torch build with it, or run one process")
    options: dict[str, Any] = {}
    if backend == "nccl":
        device = torch.device(device)  # type: ignore[arg-type]
        torch.cuda.set_device(device)
        options["device_id"] = device
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size, timeout=RANK_WAIT, **options)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _together(ranks: Ranks) -> Iterator[None]:
    """A message between the ranks; when another rank has died (its connection closes), say so in our words."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed.DistBackendError, or gloo's "Connection closed by peer"
        raise VisionRSError(
            "another process of the run stopped before the end (its own error says why); every row written so far "
            "is kept: run the same command again to resume") from exc


def _shareable(error: BaseException) -> BaseException:
    """``error`` as it can be sent to the other ranks: our own errors as they are, others named in a message."""
    return error if isinstance(error, VisionRSError) else VisionRSError(f"rank 0 failed: {type(error).__name__}: {error}")


def on_rank_zero(ranks: Ranks | None, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only, and give every rank its result, or raise its error on every rank."""
    if ranks is None:
        return work()
    message: list[Any] = [None]
    if ranks.is_main:
        try:
            message[0] = (work(), None)
        except Exception as exc:  # every rank must hear of it, or the others would wait for rank 0 forever
            with _together(ranks):
                torch.distributed.broadcast_object_list([(None, _shareable(exc))], src=0)
            raise
    with _together(ranks):
        torch.distributed.broadcast_object_list(message, src=0)
    result, error = message[0]
    if error is not None:
        raise error
    return result


def gather(ranks: Ranks, value: T) -> list[T]:
    """``value`` of every rank, in rank order, on every rank (waits for all of them)."""
    values: list[Any] = [None] * ranks.world_size
    with _together(ranks):
        torch.distributed.all_gather_object(values, value)
    return values


def host_name() -> str:
    """This machine's name, to say where a rank wrote files that rank 0 cannot see."""
    return platform.node()


def record_failure(error: BaseException) -> None:
    """Under torchrun, hand ``error`` to its agent: the file in ``TORCHELASTIC_ERROR_FILE`` gets our one paragraph (the
    command line's wording), in the format torchrun's error handler writes but without a Python traceback, so the
    summary torchrun prints when a rank fails shows that paragraph under "Root Cause" instead of our call stack."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    message = f"{type(error).__name__}: {getattr(error, 'cli_message', error)}"
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps({"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}))
