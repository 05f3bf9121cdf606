"""Training throughput with the certification noise against the same loop without it.

``vision_rs.training.train`` runs one epoch of ``--steps`` steps (batch ``--batch``, random inputs and labels at
the model's input size) twice per round: with Gaussian noise at σ = 0.25 (``noise=True``, what ``vision-rs train``
does) and on the clean inputs (``noise=False``: the same loop, data loader, optimiser and view, no noise). Both
start from the same weights. The rate is the epoch's own ``inputs_per_second`` from the training log (the loop
only: no checkpoint write, no model set-up). After one warm-up epoch of each, the two are interleaved for
``--repeats`` rounds; the table has the medians and noise/clean, measured in this run.

    python benchmarks/bench_train_speed.py                                   # digits CNN on the CPU, ~1 min
    python benchmarks/bench_train_speed.py --model resnet18 --steps 5 --batch 16
    python benchmarks/bench_train_speed.py --device cuda --model resnet50 --batch 128 --steps 30 --amp bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import TensorDataset

import vision_rs
from _measure import (
    AUTOCAST,
    Measurements,
    contention_note,
    environment,
    load_digits_model,
    log,
    positive_int,
    print_environment,
    resolve_device,
    time_interleaved,
)
from vision_rs.models.embedded import digits_split
from vision_rs.smoothing import building_to_train
from vision_rs.training import TrainConfig, train

SIGMA = 0.25
CLASSES = 10
METHODS = ("noise", "clean")


def base_network(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The network to train and its input shape (C, H, W): the embedded digits CNN or a timm model (random init)."""
    if name == "digits_cnn":
        network, _ = load_digits_model("digits_cnn.clean")
        return network, tuple(digits_split("test")[0][0].shape)  # type: ignore[return-value]
    network = timm.create_model(name, pretrained=False, num_classes=CLASSES)
    return network, tuple(network.pretrained_cfg["input_size"])  # type: ignore[return-value]


def epoch_seconds(network: torch.nn.Module, data: TensorDataset, noise: bool, args: argparse.Namespace,
                  device: torch.device) -> float:
    """Seconds of the training loop of one epoch on a fresh copy of ``network`` (from its training log)."""
    with building_to_train():
        smoothed = vision_rs.smooth(copy.deepcopy(network), SIGMA, num_classes=CLASSES, device=device,
                                    channels_last=args.channels_last, progress=False)
    config = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-3, amp=args.amp, progress=False,
                         log_every=args.steps)
    with tempfile.TemporaryDirectory() as out:
        result = train(smoothed, data, out, config=config, noise=noise)
    return float(result.history[-1]["seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits_cnn", help="digits_cnn or a timm name (default digits_cnn)")
    parser.add_argument("--batch", type=positive_int, default=64, help="inputs per step (default 64)")
    parser.add_argument("--steps", type=positive_int, default=20, help="steps per timed epoch (default 20)")
    parser.add_argument("--amp", choices=tuple(AUTOCAST), default=None, help="mixed precision (default fp32)")
    parser.add_argument("--channels-last", action="store_true", help="train in channels_last layout")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    network, shape = base_network(args.model)
    count = args.batch * args.steps
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8)
    data = TensorDataset(images, torch.randint(0, CLASSES, (count,)))
    env = environment(device)
    started = time.perf_counter()
    log(f"{args.model} {shape[1]}×{shape[2]}: {args.steps} steps of {args.batch}, warm-up then {args.repeats} rounds")
    runners = {method: (lambda noise=(method == "noise"): epoch_seconds(network, data, noise, args, device))
               for method in METHODS}
    for run in runners.values():
        run()
    result = Measurements(units=count)
    time_interleaved(result, runners, args.repeats, "inputs", label=f"[{args.model}] ")
    print_environment(env)
    median = result.median
    print(f"medians of {args.repeats} interleaved rounds, measured in {time.perf_counter() - started:.0f} s; "
          f"amp {args.amp or 'off (fp32)'}, channels_last {args.channels_last}\n")
    print("| model | input | batch | steps | with noise inputs/s | without noise inputs/s | noise / clean |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| {args.model} | {shape[1]}×{shape[2]} | {args.batch} | {args.steps} | {median['noise']:,.0f} | "
          f"{median['clean']:,.0f} | {median['noise'] / median['clean']:.2f} |\n")
    print(contention_note([result]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "model": args.model, "batch": args.batch,
                                         "steps": args.steps, "amp": args.amp, "channels_last": args.channels_last,
                                         "rates": result.rates, "median_inputs_per_s": median,
                                         "noise_over_clean": median["noise"] / median["clean"]}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
