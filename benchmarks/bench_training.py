"""Training with the certification noise on the embedded digits: Gaussian augmentation against consistency
regularisation, and fine-tuning a model trained without noise.

Part (a), for each σ of ``--sigmas`` (default 0.5 and 1.0, where the digits are not saturated): train the
digits CNN from scratch twice with the recipe of ``demos/train_digits.py`` (the 1,437 training digits shifted by
up to 2 pixels, AdamW, cosine schedule, ``--epochs`` epochs, seed ``--seed``) — once with Gaussian augmentation
(Cohen et al. 2019), once with consistency regularisation (Jeong & Shin 2020: m = 2, λ = 10, η = 0.5) —
then certify the 360 held-out digits with each at n0 = 100, n = ``--n`` (default 10 000), α = 0.001. The table
has clean accuracy, certified accuracy at R > 0.25, 0.5, 0.75, 1.0, 1.5, the ACR, and the training time;
below it, consistency's ACR over Gaussian augmentation's, measured in this run.

Part (b): ``digits_cnn.clean`` (trained without noise) fine-tuned with noise at σ = 0.5 for ``--finetune-epochs``
epochs (default 2; batch 16, lr 3e-3: 180 steps — at batch 64 and lr 1e-3, 46 steps, it reached 0.896 of the
reference instead of 0.953), against the embedded noise-trained ``digits_cnn.sigma_0.50``, both certified at
n = ``--finetune-n`` (default 1000): the share of the noise-trained model's certified accuracy at R > 0.5 that
fine-tuning reaches, and its time.

Part (c): the embedded digits models retrained with ``demos/train_digits.py`` (σ = 0.25, σ = 0.5 and the
hierarchical model, p = 0.85, σ = 0.25; the σ = 0.5 run is part (a)'s Gaussian one) and the shipped weights,
all certified as ``vision-rs demo`` does (n0 = 100, n = 1000, α = 0.001, seed 0): how close the recipe on the
library's trainer comes to the committed table.

Every training and certification run is resumable: run the same command again and it continues (``--out-dir``).

    python benchmarks/bench_training.py                       # about an hour on a quiet 2-core CPU
    python benchmarks/bench_training.py --n 1000 --epochs 10  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import vision_rs
from _measure import log, positive_int
from vision_rs.models.embedded import DigitsDataset
from vision_rs.runs.summaries import Summary, format_summaries
from vision_rs.training import TrainConfig, smooth_checkpoint, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
from train_digits import ShiftedDigits, train_model  # noqa: E402

RADII = (0.25, 0.5, 0.75, 1.0, 1.5)


def certify(smoothed: vision_rs.SmoothedClassifier, out: Path, n: int, seed: int) -> Summary:
    items = DigitsDataset("test")
    return vision_rs.certify_dataset(smoothed, items, out, n0=100, n=n, alpha=0.001, seed=seed, radii=RADII,
                                     progress=False)


def timed_training(folder: Path, **settings: object) -> float:
    """Train (or resume) into ``folder``; the seconds of this call's training (0 when it was finished before)."""
    started = time.perf_counter()
    train_model(out=folder, **settings)  # type: ignore[arg-type]
    return time.perf_counter() - started


def part_a(args: argparse.Namespace) -> list[str]:
    lines = []
    for sigma in args.sigmas:
        summaries, seconds = {}, {}
        for loss in ("gaussian", "consistency"):
            folder = args.out_dir / f"sigma_{sigma:.2f}_{loss}"
            log(f"σ={sigma:g}, {loss}: training {args.epochs} epochs into {folder}")
            seconds[loss] = timed_training(folder, sigma=sigma, epochs=args.epochs, seed=args.seed, loss=loss)
            smoothed = smooth_checkpoint(folder / "model.safetensors", device=args.device, batch_size=250,
                                         channels_last=True, progress=False)
            log(f"σ={sigma:g}, {loss}: certifying 360 digits at n={args.n}")
            summaries[f"σ={sigma:g} {loss}"] = certify(smoothed, folder / "certify.tsv", args.n, args.seed)
        lines.append(format_summaries(summaries))
        gaussian, consistency = (summaries[f"σ={sigma:g} {loss}"].acr for loss in ("gaussian", "consistency"))
        ratio = consistency / gaussian if gaussian else float("nan")
        lines.append(f"σ={sigma:g}: ACR consistency / Gaussian augmentation = {consistency:.3f} / {gaussian:.3f} = "
                     f"{ratio:.3f}; training time {seconds['consistency']:.0f} s / "
                     f"{seconds['gaussian']:.0f} s (0 s: trained by an earlier run)")
        lines.append("")
    return lines


def part_b(args: argparse.Namespace) -> list[str]:
    folder = args.out_dir / f"finetune_clean_sigma_0.50_b{args.finetune_batch}_lr{args.finetune_lr:g}"
    smoothed = vision_rs.smooth("digits_cnn.clean", 0.5, device=args.device, progress=False)
    started = time.perf_counter()
    config = TrainConfig(epochs=args.finetune_epochs, batch_size=args.finetune_batch, lr=args.finetune_lr,
                         weight_decay=1e-4, seed=args.seed, progress=False)
    result = train(smoothed, ShiftedDigits(), folder, config=config)
    seconds = time.perf_counter() - started
    tuned = certify(smooth_checkpoint(result.checkpoint, device=args.device, batch_size=250, progress=False),
                    folder / "certify.tsv", args.finetune_n, args.seed)
    reference = certify(vision_rs.smooth("digits_cnn.sigma_0.50", 0.5, device=args.device, batch_size=250,
                                         progress=False), args.out_dir / "noise_trained_sigma_0.50.tsv",
                        args.finetune_n, args.seed)
    share = tuned.certified_accuracy[0.5] / reference.certified_accuracy[0.5] if reference.certified_accuracy[0.5] else float("nan")
    tuned_label = (f"digits_cnn.clean fine-tuned {args.finetune_epochs} epochs at σ=0.5 (batch {args.finetune_batch}, "
                   f"lr {args.finetune_lr:g})")
    return [format_summaries({tuned_label: tuned,
                              "digits_cnn.sigma_0.50 (trained with noise, 60 epochs)": reference}),
            f"fine-tuned / noise-trained certified accuracy at R > 0.5: {tuned.certified_accuracy[0.5]:.3f} / "
            f"{reference.certified_accuracy[0.5]:.3f} = {share:.3f}; fine-tuning took {seconds:.0f} s "
            f"({result.epochs - result.resumed_from} epoch(s) in this call)"]


def part_c(args: argparse.Namespace) -> list[str]:
    summaries = {}
    for name, sigma, p in (("digits_cnn.sigma_0.25", 0.25, None), ("digits_cnn.sigma_0.50", 0.5, None),
                           ("digits_cnn_hier.p_0.85_sigma_0.25", 0.25, 0.85)):
        folder = args.out_dir / (f"sigma_{sigma:.2f}_gaussian" if p is None else f"hier_p_{p:.2f}_sigma_{sigma:.2f}")
        log(f"{name}: training {args.epochs} epochs into {folder}")
        timed_training(folder, sigma=sigma, epochs=args.epochs, seed=args.seed, p=p)
        hierarchical = vision_rs.Hierarchical(p, indicator=True) if p is not None else None
        for label, model in (("shipped", name), ("retrained", str(folder / "model.safetensors"))):
            smoothed = vision_rs.smooth(model, sigma, hierarchical=hierarchical, device=args.device, batch_size=250,
                                        channels_last=True, progress=False)
            summaries[f"{name} {label}"] = certify(smoothed, folder / f"demo_{label}.tsv", 1000, args.seed)
    return ["As `vision-rs demo` certifies them (n0=100, n=1000, α=0.001; hierarchical: r=1):",
            format_summaries(summaries), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--epochs", type=positive_int, default=60)
    parser.add_argument("--n", type=positive_int, default=10_000)
    parser.add_argument("--finetune-epochs", type=positive_int, default=2)
    parser.add_argument("--finetune-n", type=positive_int, default=1000)
    parser.add_argument("--finetune-batch", type=positive_int, default=16)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. a, bc (default abc)")
    parser.add_argument("--out-dir", type=Path, default=Path("training-bench"))
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    lines = [f"Embedded digits, {args.epochs} epochs, seed {args.seed}; 360 held-out digits, n0=100, n={args.n}, "
             "α=0.001 (radii L2 in [0,1] pixel units)", ""]
    if "a" in args.parts:
        lines += part_a(args)
    if "b" in args.parts:
        lines += part_b(args)
    if "c" in args.parts:
        lines += part_c(args)
    report = "\n".join(lines)
    print(report)
    (args.out_dir / "summary.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
