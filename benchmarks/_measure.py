"""Measurement helpers shared by the benchmark scripts: devices, timings and what disturbed them."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vision_rs.errors import CheckpointError
from vision_rs.models.embedded import load_embedded_model
from vision_rs.training.trainer import AMP_DTYPES

CONTENTION_WARNING = 0.05
"""Warn when other processes used more than this share of the machine's CPU time during a measurement."""
KERNEL_WARNING = 0.10
"""Point at the allocator when more than this share of the process's CPU time was spent in the kernel."""
MALLOC_ENV = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000"
AUTOCAST = AMP_DTYPES
"""The ``--autocast`` choices of the benchmarks and their dtypes: the names ``vision-rs train --amp`` takes."""


@dataclass(frozen=True)
class Observation:
    """One timed run and what else was going on during it."""

    seconds: float
    other_cpu_share: float | None
    """CPU time used by other processes / (wall time × CPU count); None where it cannot be read."""
    kernel_share: float
    """System (kernel) CPU time of this process / its total CPU time."""


def resolve_device(name: str | None) -> torch.device:
    """The requested device, or CUDA when available, else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """A human-readable name of the accelerator or CPU the benchmark runs on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, object]:
    """Device name, library versions and allocator settings, printed and stored with the numbers."""
    import timm

    import vision_rs

    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "vision_rs": vision_rs.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "malloc_env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") or k == "LD_PRELOAD"),
    }


def print_environment(env: dict[str, object]) -> None:
    """The lines every benchmark report starts with."""
    print(f"device: {env['device_name']} ({env['device']}, {env['torch_threads']} torch threads)")
    print(f"torch {env['torch']}, timm {env['timm']}, vision_rs {env['vision_rs']}, python {env['python']}")
    if env["malloc_env"]:
        print(f"allocator settings: {env['malloc_env']}")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], object]) -> float:
    """Seconds for ``run()``, the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def time_raw_inference(model: torch.nn.Module, inputs: torch.Tensor, sizes: Sequence[int], device: torch.device) -> float:
    """Seconds for ``model`` to run ``inputs[:size]`` for each of ``sizes``, under ``torch.inference_mode``."""

    def run() -> None:
        with torch.inference_mode():
            for size in sizes:
                model(inputs[:size])

    return timed(device, run)


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent on this machine since boot (Linux ``/proc/stat``); None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def observe(run: Callable[[], float]) -> Observation:
    """Call ``run`` (which returns the seconds it timed) and note other processes' and the kernel's CPU use."""
    busy_before, times_before = machine_busy_seconds(), os.times()
    seconds = run()
    busy_after, times_after = machine_busy_seconds(), os.times()
    user = times_after.user - times_before.user
    system = times_after.system - times_before.system
    kernel = system / (user + system) if user + system > 0 else 0.0
    if busy_before is None or busy_after is None:
        return Observation(seconds, None, kernel)
    others = max(0.0, (busy_after - busy_before) - (user + system))
    return Observation(seconds, others / (seconds * (os.cpu_count() or 1)), kernel)


def log(message: str) -> None:
    """Progress lines go to stderr, keeping stdout for the results."""
    print(message, file=sys.stderr, flush=True)


def load_digits_model(name: str = "digits_cnn.sigma_0.25") -> tuple[torch.nn.Module, str]:
    """An embedded digits CNN, with random weights if its weight file is missing (speed is the same)."""
    try:
        return load_embedded_model(name), "pretrained"
    except CheckpointError:
        return load_embedded_model(name, pretrained=False), "random init (weights file missing)"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


@dataclass
class Measurements:
    """Rates (units/s) of every repeat per method, with what disturbed each measurement."""

    units: int
    """Work units per timed run (samples, model inputs): rate = units / seconds."""
    rates: dict[str, list[float]] = field(default_factory=dict)
    other_cpu_share: dict[str, list[float | None]] = field(default_factory=dict)
    kernel_share: dict[str, list[float]] = field(default_factory=dict)

    def add(self, method: str, seen: Observation) -> None:
        self.rates.setdefault(method, []).append(self.units / seen.seconds)
        self.other_cpu_share.setdefault(method, []).append(seen.other_cpu_share)
        self.kernel_share.setdefault(method, []).append(seen.kernel_share)

    @property
    def median(self) -> dict[str, float]:
        return {method: statistics.median(values) for method, values in self.rates.items()}

    @property
    def worst_contention(self) -> float | None:
        shares = [share for values in self.other_cpu_share.values() for share in values if share is not None]
        return max(shares) if shares else None

    @property
    def worst_kernel_share(self) -> float:
        return max(share for values in self.kernel_share.values() for share in values)


def time_interleaved(results: Measurements, runners: dict[str, Callable[[], float]], repeats: int, unit: str,
                     label: str = "") -> None:
    """Time every runner once per round, in turn, for ``repeats`` rounds, into ``results``; log each measurement.

    Interleaving makes machine load and thermal drift hit every method alike.
    """
    width = max(len(method) for method in runners)
    for round_index in range(repeats):
        for method, run in runners.items():
            seen = observe(run)
            results.add(method, seen)
            others = "" if seen.other_cpu_share is None else f", other processes {seen.other_cpu_share:.0%} of CPU"
            log(
                f"  {label}round {round_index + 1}/{repeats} {method:{width}s} {results.rates[method][-1]:10.1f} {unit}/s "
                f"({seen.seconds:.2f} s, kernel {seen.kernel_share:.0%}{others})"
            )


def contention_note(results: Sequence[Measurements]) -> str:
    """One line on how busy the machine was with other work while measuring."""
    known = [r.worst_contention for r in results if r.worst_contention is not None]
    if not known:
        return "CPU used by other processes: not measured on this platform"
    worst = max(known)
    note = f"worst CPU share used by other processes during a measurement: {worst:.0%}"
    if worst > CONTENTION_WARNING:
        note += " - WARNING: the machine was busy, these numbers are disturbed; rerun on a quiet machine"
    return note


def kernel_note(results: Sequence[Measurements], rerun_hint: str | None) -> str:
    """One line on the kernel's share of this process's CPU time (page faults, mostly, on CPU runs).

    ``rerun_hint`` says how to keep freed memory in the process; None when it already was.
    """
    worst = max(r.worst_kernel_share for r in results)
    note = f"worst kernel (system) share of this process's CPU time during a measurement: {worst:.0%}"
    if worst > KERNEL_WARNING and rerun_hint:
        note += f" - large: likely malloc returning freed buffers to the OS every batch; rerun with {rerun_hint}"
    return note
