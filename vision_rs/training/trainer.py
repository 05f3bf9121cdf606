"""The training loop: noisy forward, loss, timm's optimiser and schedule, checkpoints every epoch, resume, torchrun.

One loop trains every kind of model the library certifies — classifiers of images and clips, segmentation
networks, denoisers — through an :class:`Objective`: the module run under the certification noise, the network
whose weights are saved, and the loss of one batch. The loop adds what every run needs:

* timm's optimiser and learning-rate schedule (``timm.optim.create_optimizer_v2``,
  ``timm.scheduler.create_scheduler_v2``, stepped per update);
* AMP (``amp="bf16"`` or ``"fp16"`` with a gradient scaler; bf16 also runs on the CPU);
* several processes under ``torchrun`` (DDP: gloo on CPUs, NCCL on GPUs), the data sharded over the ranks;
* after every epoch, atomically: ``model.safetensors`` (the network with its record: what :func:`vision_rs.smooth`
  reads to rebuild it) and ``train_state.pt`` (optimiser, schedule, scaler; loaded with ``weights_only=True``),
  and one line of ``train_log.jsonl``;
* resume: the same call continues after the last finished epoch; a record that differs in anything that changes
  the weights is refused. Every epoch's randomness (data order, augmentation, noise, dropout) is seeded from
  (seed, epoch, rank), so an interrupted and resumed run ends with the weights of an uninterrupted one;
* a NaN or infinite loss stops the run with :class:`~vision_rs.errors.TrainingError` naming the step, keeping
  the last good checkpoint; running out of memory says which batch size to try.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..errors import InvalidParameterError, OutputPathError, TrainingError
from ..models.checkpoints import save_checkpoint, write_atomically
from ..models.provenance import software_versions
from ..params import check_count, check_seed
from ..runs.distributed import Ranks, process_group, resolve_ranks
from ..runs.files import atomic_write, check_writable, describe_difference, record_differences
from ..wording import Wording
from .losses import LossTerms

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ENVIRONMENT_FIELDS = ("data.root", "data.masks", "held_out.root", "device", "versions", "training.workers",
                      "training.progress", "training.log_every", "epoch")
"""Record fields that may differ when a run resumes (where files lie, the device, software versions, how it
reports); every other field changes the weights, and a resume that differs in one is refused."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs and batch size, timm's optimiser (``optimizer``, ``lr``, ``weight_decay``,
    ``momentum``) and schedule (``schedule``, ``warmup_epochs``, ``min_lr``), ``seed``, ``amp`` ("bf16" | "fp16" |
    None), gradient clipping (max L2 norm, None = off), data-loading ``workers``, how often the progress bar reads
    the loss (``log_every`` steps: one host sync), and ``progress``."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    seed: int = 0
    amp: str | None = None
    grad_clip: float | None = None
    workers: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        check_count("epochs", self.epochs)
        check_count("batch_size", self.batch_size)
        check_count("log_every", self.log_every)
        check_seed(self.seed)
        for name in ("lr", "weight_decay", "min_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidParameterError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0:
            raise InvalidParameterError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise InvalidParameterError(f"warmup_epochs must be an integer from 0 to epochs - 1, got {self.warmup_epochs!r}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise InvalidParameterError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {self.amp!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InvalidParameterError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InvalidParameterError(f"workers must be an integer >= 0, got {self.workers!r}")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class Objective(Protocol):
    """What one kind of training optimises: ``module`` runs under the noise (DDP wraps it), ``network`` is what a
    checkpoint holds, ``loss_of`` computes one batch's loss through ``forward`` (``module`` or its DDP wrapper)."""

    module: nn.Module
    network: nn.Module
    device: torch.device

    def reseed(self, seed: int) -> None: ...

    def check_targets(self, targets: torch.Tensor) -> None: ...

    def loss_of(self, forward: Callable[..., torch.Tensor], pixels: torch.Tensor, targets: torch.Tensor) -> LossTerms: ...


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already finished) run left: its folder, checkpoint, epochs and the last epoch's losses."""

    out: Path
    checkpoint: Path
    epochs: int
    resumed_from: int
    """Epochs an earlier run had finished (0 for a fresh run)."""
    history: list[dict[str, Any]]
    """One entry per epoch (of this and earlier runs): mean loss and its parts, lr, seconds, inputs per second."""


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of everything random in one epoch of one rank: data order, augmentation, noise, dropout."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed torch's, Python's and NumPy's global generators (augmentations and dropout draw from them)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def check_output_folder(out: str | os.PathLike) -> Path:
    """Refuse an output path that is a file, or a folder files cannot be written in (a probe file is written and
    removed, as data-set runs check theirs: :func:`~vision_rs.runs.files.check_writable`); leave nothing behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out} is a file; training writes a folder (checkpoint, state, log): give a folder path")
    check_writable(out)
    return out


def output_folder(out: str | os.PathLike) -> Path:
    """The run's folder: checked (:func:`check_output_folder`), then created with its parents when missing."""
    out = check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the output folder {out}: {exc.strerror}") from exc
    return out


def as_pixels(batch: torch.Tensor) -> torch.Tensor:
    """A batch of inputs as float pixels in [0, 1] (uint8 is divided by 255)."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def _check_batches(count: int, world_size: int, batch_size: int) -> None:
    """Refuse data that gives a process no batch to train on: each process takes ⌈count / world_size⌉ inputs, and a
    last batch of one input is dropped (batch norm cannot train on it)."""
    share = -(-count // world_size)
    if count == 0 or (share == 1 and batch_size > 1):
        each = f" ({share} for each of {world_size} processes)" if world_size > 1 else ""
        raise InvalidParameterError(f"too few training inputs to make a batch: {count}{each}; a batch of one cannot "
                                    "train batch norm, so give at least 2 inputs to each process")


class Trainer:
    """Train ``objective`` on ``data`` into the folder ``out`` (see the module docstring).

    ``record``: what produced the run, JSON-ready (architecture, input spec, noise, loss, data, ...); the trainer
    adds the settings, the number of processes, the software versions and the finished epoch, and writes it into
    every checkpoint. ``distributed``: None = auto (torchrun's environment), False = one process, True = insist.
    """

    def __init__(self, objective: Objective, data: Dataset, out: str | os.PathLike, config: TrainConfig,
                 record: dict[str, Any], *, distributed: bool | None = None) -> None:
        self.ranks = resolve_ranks(distributed)
        _check_batches(len(data), self.ranks.world_size if self.ranks else 1, config.batch_size)  # type: ignore[arg-type]
        self.objective, self.data, self.config = objective, data, config
        self.out = output_folder(out)
        self.record = {**record, "training": config.describe(), "world_size": self.ranks.world_size if self.ranks else 1,
                       "device": str(objective.device), "versions": software_versions()}
        self.record = json.loads(json.dumps(self.record))  # as the files will hold it

    # ------------------------------------------------------------------ files

    @property
    def checkpoint(self) -> Path:
        return self.out / MODEL_FILE

    def _resume_state(self) -> dict[str, Any] | None:
        """The state an earlier run left in ``out``, checked against this run's record; None for a fresh run."""
        state_path = self.out / STATE_FILE
        if not state_path.is_file():
            if self.checkpoint.is_file():
                raise OutputPathError(f"{self.out} holds a checkpoint without its training state ({STATE_FILE}): it "
                                      "cannot be resumed; train into another folder")
            return None
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: RuntimeError, EOFError, UnpicklingError, ... by its bytes
            raise OutputPathError(f"cannot read the training state {state_path} ({exc!r}); train into another folder") from exc
        changed, _ = record_differences(state["record"], self.record, environment=ENVIRONMENT_FIELDS)
        if changed:
            details = "; ".join(describe_difference(field, state["record"], self.record) for field in changed[:5])
            raise OutputPathError(f"{self.out} holds a training run with other settings ({details}). Train into another "
                                  "folder, or use the same settings to resume.")
        return state

    def _save(self, epoch: int, steps: int, optimizer: torch.optim.Optimizer, scheduler: Any,
              scaler: torch.amp.GradScaler | None, history: list[dict[str, Any]]) -> None:
        """The state first, then the checkpoint, then the log line: each file atomically."""
        record = {**self.record, "epoch": epoch}
        network_state = self.objective.network.state_dict()
        state = {"epoch": epoch, "steps": steps, "record": record, "network": network_state,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None}
        write_atomically(self.out / STATE_FILE, lambda handle: torch.save(state, handle))
        save_checkpoint(self.checkpoint, network_state, record)
        atomic_write(self.out / LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in history))

    # ------------------------------------------------------------------ pieces

    def _loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        sampler = DistributedSampler(self.data, num_replicas=world_size, rank=rank, shuffle=True, seed=self.config.seed)
        sampler.set_epoch(epoch)
        drop_last = len(sampler) % self.config.batch_size == 1  # a batch of one breaks batch norm in train mode
        return DataLoader(self.data, batch_size=self.config.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.config.workers,
                          generator=torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch, rank)))

    def _optimizer_and_schedule(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        trainable = [p for p in self.objective.network.parameters() if p.requires_grad]
        if not trainable:
            raise InvalidParameterError("the network has no trainable parameters")
        config = self.config
        optimizer = create_optimizer_v2(self.objective.network, opt=config.optimizer, lr=config.lr,
                                        weight_decay=config.weight_decay, momentum=config.momentum)
        scheduler, _ = create_scheduler_v2(optimizer, sched=config.schedule, num_epochs=config.epochs,
                                           warmup_epochs=config.warmup_epochs, min_lr=config.min_lr,
                                           step_on_epochs=False, updates_per_epoch=steps_per_epoch)
        return optimizer, scheduler

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.objective.device.type, dtype=AMP_DTYPES[self.config.amp])

    @contextlib.contextmanager
    def _memory_guard(self, step: int) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            smaller = max(1, self.config.batch_size // 2)
            batch_size = self.config.batch_size
            raise TrainingError(
                f"out of memory at step {step} with {{now}} on {self.objective.device}: try {{smaller}} (the last "
                "finished epoch's checkpoint is kept)",
                now=Wording(f"batch size {batch_size}", f"--batch-size {batch_size}"),
                smaller=Wording(f"batch_size={smaller}", f"--batch-size {smaller}"),
            ) from exc

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        """Train the remaining epochs (all of them for a fresh run); see the module docstring."""
        device = self.objective.device
        with process_group(self.ranks, device):
            return self._fit(self.ranks)

    def _fit(self, ranks: Ranks | None) -> TrainResult:
        rank, world_size = (ranks.rank, ranks.world_size) if ranks else (0, 1)
        config, objective = self.config, self.objective
        state = self._resume_state()
        start = int(state["epoch"]) if state is not None else 0
        history: list[dict[str, Any]] = self._read_history(start)
        if state is not None:
            objective.network.load_state_dict(state["network"])
        steps_per_epoch = len(self._loader(0, rank, world_size))
        optimizer, scheduler = self._optimizer_and_schedule(steps_per_epoch)
        fp16 = config.amp == "fp16"
        scaler = torch.amp.GradScaler(objective.device.type) if fp16 else None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            log.info("resuming %s after epoch %d of %d", self.out, start, config.epochs)
        steps = int(state["steps"]) if state is not None else 0
        forward = objective.module
        if ranks is not None:
            device_ids = [objective.device.index] if objective.device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(objective.module, device_ids=device_ids)
        for epoch in range(start, config.epochs):
            seed = epoch_seed(config.seed, epoch, rank)
            seed_everything(seed)
            objective.reseed(seed)
            objective.module.train()
            entry, steps = self._epoch(epoch, forward, optimizer, scheduler, scaler, steps, rank, world_size)
            history.append(entry)
            if rank == 0:
                self._save(epoch + 1, steps, optimizer, scheduler, scaler, history)
            if ranks is not None:
                torch.distributed.barrier()
        objective.module.eval()
        return TrainResult(self.out, self.checkpoint, config.epochs, start, history)

    def _read_history(self, epochs: int) -> list[dict[str, Any]]:
        """The log lines of the ``epochs`` finished epochs (an earlier run's), none for a fresh run."""
        path = self.out / LOG_FILE
        if epochs == 0 or not path.is_file():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [entry for entry in lines if entry.get("epoch", 0) <= epochs]

    def _epoch(self, epoch: int, forward: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: torch.amp.GradScaler | None, steps: int, rank: int, world_size: int) -> tuple[dict[str, Any], int]:
        """One epoch; returns its log entry and the updates done so far. Raises TrainingError on a NaN loss."""
        config, objective, device = self.config, self.objective, self.objective.device
        loader = self._loader(epoch, rank, world_size)
        totals: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        seen, started = 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress or rank != 0,
                   leave=False, unit="batch")
        for index, (batch, targets) in enumerate(bar):
            objective.check_targets(targets)
            pixels = as_pixels(batch).to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with self._memory_guard(steps + 1):
                with self._autocast():
                    terms = objective.loss_of(forward, pixels, targets)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(terms.total).backward()
                    scaler.unscale_(optimizer)
                else:
                    terms.total.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(objective.network.parameters(), config.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            steps += 1
            scheduler.step_update(num_updates=steps)
            bad = ~torch.isfinite(terms.total.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, steps), first_bad)
            for name, value in {"loss": terms.total.detach(), **terms.parts}.items():
                totals[name] = totals.get(name, torch.zeros((), device=device)) + value.float() * len(batch)
            seen += len(batch)
            if (index + 1) % config.log_every == 0 or index + 1 == len(loader):
                self._check_finite(first_bad, epoch)  # the log point's one host sync
                bar.set_postfix(loss=f"{float(totals['loss']) / seen:.4g}",
                                per_s=f"{seen * world_size / (time.perf_counter() - started):.3g}")
        seconds = time.perf_counter() - started
        entry = {"epoch": epoch + 1, **{name: float(value) / max(seen, 1) for name, value in totals.items()},
                 "lr": float(optimizer.param_groups[0]["lr"]), "seconds": round(seconds, 3),
                 "inputs_per_second": seen * world_size / seconds if seconds > 0 else None}
        return entry, steps

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        """Raise TrainingError when any rank's loss was NaN or infinite since the epoch began (naming the first step)."""
        flag = first_bad.clone()
        if self.ranks is not None:
            flag = torch.where(flag < 0, torch.full_like(flag, 2**62), flag)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            flag = torch.where(flag == 2**62, torch.full_like(flag, -1), flag)
        step = int(flag)
        if step >= 0:
            kept = f"the checkpoint of epoch {epoch} in {self.out} is kept" if epoch else "no checkpoint was written yet"
            raise TrainingError(
                f"the loss became NaN or infinite at step {step} (epoch {epoch + 1}); {kept}. Lower {{lr}}, clip "
                "gradients ({grad_clip}) or check the data for NaN pixels",
                lr=Wording("the learning rate (lr=...)", "--lr"), grad_clip=Wording("grad_clip=...", "--grad-clip"))
