"""Data-set certification over several processes: wall time with W = 1 and W = 2 ranks under torchrun.

    python benchmarks/bench_distributed.py [--processes 1 2] [--repeats 2] [--limit 360] [--json out.json]

The embedded digits test split (360 images written as PNGs in class folders) is certified with
``torchrun --nproc-per-node W -m vision_rs certify ... --n0 100 --num-samples 1000`` (the embedded σ = 0.25
CNN, α = 0.001), each rank one thread (``OMP_NUM_THREADS=1``) on the CPU (gloo), plus one plain
``python -m vision_rs`` process for the launcher's cost. Per run, two timings:

- *end to end*: the whole command (interpreters starting, torch imported, the model built, ranks meeting,
  every image certified, the parts merged);
- *fixed*: the same command again on the finished output, which resumes with nothing left to certify:
  everything but the certification. *certify* = end to end − fixed.

Speed-up = T(W = 1 under torchrun) / T(W); efficiency = speed-up / W. W values are interleaved round by round,
medians reported, all from this one run. The merged rows of every run are checked to be those of the
first (all columns but ``time``). On a GPU machine, ``--device cuda`` gives one process per GPU (W ≤ GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from _measure import environment, log, machine_busy_seconds, positive_int, print_environment, resolve_device
from vision_rs.models.embedded import DigitsDataset
from vision_rs.runs.files import read_rows

MODEL, SIGMA, N0, N = "digits_cnn.sigma_0.25", 0.25, 100, 1000


def write_digits(folder: Path, limit: int) -> int:
    """The first ``limit`` test digits as PNGs in integer-named class folders; returns how many."""
    dataset = DigitsDataset("test")
    count = min(limit, len(dataset))
    for idx in range(count):
        image, label = dataset[idx]
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / str(label) / f"{idx:03d}.png")
    return count


def command(processes: int | None, images: Path, out: Path, device: str) -> list[str]:
    """torchrun with ``processes`` ranks, or one plain process when None."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
                if processes is not None else [sys.executable])
    return [*launcher, "-m", "vision_rs", "certify", str(images), "--model", MODEL, "--sigma", str(SIGMA),
            "--n0", str(N0), "--num-samples", str(N), "--device", device, "--out", str(out), "--no-progress"]


def timed_run(words: list[str]) -> tuple[float, float | None]:
    """(wall seconds, CPU share other processes used meanwhile) of one command, which must succeed."""
    from torch.distributed.elastic.utils.distributed import get_free_port

    environment_ = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PET_MASTER_PORT": str(get_free_port())}
    busy, children = machine_busy_seconds(), os.times()
    start = time.perf_counter()
    done = subprocess.run(words, capture_output=True, text=True, env=environment_)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(words)}\n{done.stderr[-3000:]}")
    after, children_after = machine_busy_seconds(), os.times()
    if busy is None or after is None:
        return seconds, None
    ours = (children_after.children_user - children.children_user) + (children_after.children_system - children.children_system)
    return seconds, max(0.0, (after - busy) - ours) / (seconds * (os.cpu_count() or 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=positive_int, nargs="+", default=[1, 2], help="ranks per run (default: 1 2)")
    parser.add_argument("--repeats", type=positive_int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--limit", type=positive_int, default=360, help="test digits to certify (default: all 360)")
    parser.add_argument("--device", default="cpu", help="cpu (default), or cuda: one process per GPU")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    env = environment(device)
    env["torch_threads"] = 1  # each rank: OMP_NUM_THREADS=1
    print_environment(env)

    runs: dict[str, list[tuple[float, float, float | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        folder = Path(tmp)
        count = write_digits(folder / "images", args.limit)
        setups = {"1 process, no torchrun": None, **{f"torchrun W={w}": w for w in args.processes}}
        reference = None
        for round_index in range(args.repeats):
            for name, processes in setups.items():
                out = folder / f"run_{processes or 0}_{round_index}.tsv"
                words = command(processes, folder / "images", out, str(device))
                whole, others = timed_run(words)
                fixed, _ = timed_run(words)  # the same command again: nothing left to certify
                rows = [(r.idx, r.label, r.predict, r.radius, r.correct) for r in read_rows(out)]
                reference = reference or rows
                if rows != reference or len(rows) != count:
                    raise SystemExit(f"{name}: its rows differ from the first run's")
                runs.setdefault(name, []).append((whole, fixed, others))
                share = "" if others is None else f", other processes {others:.0%} of CPU"
                log(f"  round {round_index + 1}/{args.repeats} {name:24s} end to end {whole:6.1f} s, fixed {fixed:5.1f} s"
                    f"{share}")

    medians = {name: tuple(statistics.median(run[i] for run in values) for i in range(2)) for name, values in runs.items()}
    base = medians.get("torchrun W=1")
    print(f"\nEmbedded digits test split: {count} images, n0={N0}, n={N}, alpha=0.001, sigma={SIGMA}, one torch thread "
          f"per process, {os.cpu_count()} CPUs; medians of {args.repeats} interleaved rounds; rows identical in every run")
    print("| run | processes | end to end s | fixed s | certify s | speed-up (end to end) | speed-up (certify) | "
          "efficiency (certify) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (whole, fixed) in medians.items():
        processes = setups[name] or 1
        certify = whole - fixed
        if base is not None:
            speedup_whole, speedup_certify = base[0] / whole, (base[0] - base[1]) / certify
            ratios = f"{speedup_whole:.2f} | {speedup_certify:.2f} | {speedup_certify / processes:.0%}"
        else:
            ratios = "- | - | -"
        print(f"| {name} | {processes} | {whole:.1f} | {fixed:.1f} | {certify:.1f} | {ratios} |")
    worst = [others for values in runs.values() for _, _, others in values if others is not None]
    if worst:
        print(f"worst CPU share used by other processes during a run: {max(worst):.0%}"
              + (" - the machine was busy: these numbers are disturbed" if max(worst) > 0.05 else ""))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "images": count, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
