"""The ``vision-rs`` command line: ``certify``, ``report``, ``demo``."""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import VisionRSError

UNITS = """\
Units: sigma (noise std) and every radius are in [0,1] pixel units, i.e. pixel
values divided by 255; a radius is the L2 norm over all pixels and channels of
the image at its own resolution (before any resize to the model's input).
Example: sigma=0.25 is noise of std 64 grey levels on each pixel and channel.
"""

COLUMNS = """\
Output (--out run.tsv, Cohen et al.'s format; run.jsonl beside it has the full
certificate of each row):
  idx      position of the image in the input list (folders sorted, recursive)
  label    true class: the integer name of the image's folder, else -1 (unknown)
  predict  certified class, or -1 when the smoothed classifier abstains
  radius   certified L2 radius (0 when abstaining)
  correct  1 if predict == label, 0 if not, -1 if the label is unknown
  time     seconds spent on the image
A killed run resumes where it stopped when the same command is run again.
"""


def _add_sampling_options(parser: argparse.ArgumentParser, n_default: int) -> None:
    parser.add_argument("--n0", type=int, default=100, help="selection samples that choose the class (default: 100)")
    parser.add_argument("--n", type=int, default=n_default, help=f"estimation samples for the bound (default: {n_default})")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate (default: 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed; image idx uses seed+idx (default: 0)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=256, help="noisy images per forward pass (default: 256)")


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def _add_speed_options(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group("speed (never changes the guarantee)")
    speed.add_argument("--channels-last", action="store_true", help="run the model on channels_last tensors")
    speed.add_argument("--autocast", choices=sorted(AUTOCAST_DTYPES),
                       help="run the model under torch.autocast with this dtype (default: fp32)")
    speed.add_argument("--streams", type=int, default=2,
                       help="CUDA streams that consecutive batches alternate between; 1 saves GPU memory (default: 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-rs",
        description="Certify image classifiers with randomized smoothing: predictions with a provable L2 radius.",
        epilog=UNITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    certify = commands.add_parser(
        "certify",
        help="certify images, folders of images, with a timm/torchvision model or a checkpoint",
        description="Certify each image with randomized smoothing: Gaussian (Cohen et al. 2019) by default, "
        "hierarchical (--hierarchical-p) or Smooth-Reduce over patches (--patch-size).",
        epilog=UNITS + "\n" + COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certify.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    certify.add_argument(
        "--model", required=True,
        help="timm name (resnet18), torchvision:NAME, embedded name (digits_cnn.sigma_0.25), or a checkpoint file with --arch",
    )
    certify.add_argument("--arch", help="architecture of a checkpoint given as --model (timm name or torchvision:NAME)")
    certify.add_argument("--checkpoint", help="weights to load into --model (safetensors or weights-only torch file)")
    certify.add_argument("--num-classes", type=int, help="classes of the model's head (for checkpoints)")
    certify.add_argument("--no-pretrained", action="store_true", help="do not load pretrained weights for a model name")
    certify.add_argument("--sigma", type=float, required=True, help="noise std in [0,1] pixel units, e.g. 0.25")
    certify.add_argument(
        "--hierarchical-p", type=float, metavar="P",
        help="hierarchical smoothing: noise each pixel only with probability P, certify against r changed pixels",
    )
    certify.add_argument("--indicator", action="store_true",
                         help="with --hierarchical-p: append the noise mask as an extra input channel (model needs C+1)")
    patches = certify.add_argument_group("Smooth-Reduce (overlapping patches; noise is added before cropping)")
    patches.add_argument("--patch-size", type=int, help="patch side in pixels of the input image")
    patches.add_argument("--patch-stride", type=int, help="grid of patches with this stride")
    patches.add_argument("--patch-count", type=int, help="this many patches at random positions (drawn from --seed)")
    patches.add_argument("--reduce", choices=["mean", "max"], default="mean", help="reduction across patches (default: mean)")
    patches.add_argument("--mode", choices=["vote", "smoothed", "probit-mean"], default="vote",
                         help="vote: reduce softmax per draw; smoothed: reduce smoothed probabilities; "
                              "probit-mean: mean of per-patch probits (default: vote)")
    certify.add_argument("--mean", type=float, nargs="+", help="override the model's input mean (per channel)")
    certify.add_argument("--std", type=float, nargs="+", help="override the model's input std (per channel)")
    certify.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="override the model's input size")
    _add_sampling_options(certify, n_default=100_000)
    _add_speed_options(certify)
    certify.add_argument("--out", type=Path, help="write results to this .tsv (and .jsonl beside it); resumes if it exists")
    certify.add_argument("--no-progress", action="store_true", help="hide progress bars")

    report = commands.add_parser(
        "report",
        help="certified-accuracy table and PNG curve of result TSVs",
        description="Summarise one or more result TSVs (ours or Cohen et al.'s) and plot certified accuracy against radius.",
        epilog=UNITS + "\n" + COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("tables", nargs="+", type=Path, help="result .tsv files")
    report.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="radii for the table")
    report.add_argument("--plot", type=Path, help="PNG path (default: beside the first TSV, .png)")

    demo = commands.add_parser(
        "demo",
        help="certify the embedded digits test split with both embedded models (offline)",
        description="Certify the 360 held-out embedded digits with the CNNs trained at sigma=0.25 and 0.5, "
        "print the table and write the plot. Runs offline.",
        epilog=UNITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out-dir", type=Path, default=Path("vision-rs-demo"), help="output folder (default: ./vision-rs-demo)")
    demo.add_argument("--n0", type=int, default=100, help="selection samples (default: 100)")
    demo.add_argument("--n", type=int, default=1000, help="estimation samples (default: 1000)")
    demo.add_argument("--alpha", type=float, default=0.001, help="failure probability (default: 0.001)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--limit", type=int, help="certify only the first LIMIT test images")
    demo.add_argument("--device", default="cpu")
    return parser


def _certify(args: argparse.Namespace) -> None:
    import torch

    from .errors import InvalidParameterError
    from .evaluation import DEFAULT_RADII, certify_dataset, collect_image_files, format_summaries
    from .images import to_unit_tensor
    from .methods import Hierarchical
    from .patches import Patches
    from .smoothing import smooth

    files = collect_image_files(args.inputs)
    if args.indicator and args.hierarchical_p is None:
        raise InvalidParameterError("--indicator needs --hierarchical-p")
    hierarchical = Hierarchical(args.hierarchical_p, args.indicator) if args.hierarchical_p is not None else None
    if args.patch_size is None and (args.patch_stride is not None or args.patch_count is not None):
        raise InvalidParameterError("--patch-stride and --patch-count need --patch-size")
    patches = (Patches(args.patch_size, stride=args.patch_stride, count=args.patch_count)
               if args.patch_size is not None else None)
    smoothed = smooth(
        args.model, args.sigma, hierarchical=hierarchical, patches=patches, reduce=args.reduce, mode=args.mode,
        pretrained=not args.no_pretrained, mean=args.mean, std=args.std,
        input_size=args.input_size, num_classes=args.num_classes, arch=args.arch, checkpoint=args.checkpoint,
        device=args.device, batch_size=args.batch_size, progress=not args.no_progress,
        channels_last=args.channels_last, streams=args.streams,
        autocast_dtype=getattr(torch, AUTOCAST_DTYPES[args.autocast]) if args.autocast else None,
    )
    if args.out is not None:
        summary = certify_dataset(
            smoothed, args.inputs, args.out, n0=args.n0, n=args.n, alpha=args.alpha,
            seed=args.seed, radii=DEFAULT_RADII, progress=not args.no_progress,
        )
        print(format_summaries({args.out.name: summary}))
        print(f"wrote {args.out} and {args.out.with_suffix('.jsonl')}")
        return
    for path, _ in files:  # decode all first: a bad file fails before any output
        to_unit_tensor(path, channels=smoothed.spec.channels)
    print("path\tpredict\tradius\tp_lower\ttime")
    for idx, (path, _) in enumerate(files):
        cert = smoothed.certify(path, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed + idx)
        predict = -1 if cert.label is None else cert.label
        print(f"{path}\t{predict}\t{cert.radius:.4f}\t{cert.p_lower:.4f}\t{cert.seconds:.2f}", flush=True)


def _report(args: argparse.Namespace) -> None:
    from .evaluation import (
        accuracy_over_pixels_and_budget,
        format_pixel_budget_table,
        format_summaries,
        plot_certified_accuracy,
        read_certificates,
        read_rows,
        summarize,
    )

    runs = {path.name: read_rows(path) for path in args.tables}
    print(format_summaries({name: summarize(rows, args.radii) for name, rows in runs.items()}))
    for path in args.tables:  # hierarchical runs: certified accuracy over changed pixels r and L2 budget ε
        jsonl = path.with_suffix(".jsonl")
        pairs = read_certificates(jsonl) if jsonl.is_file() else []
        if pairs and pairs[0][1].method == "hierarchical":
            pixels = sorted(pairs[0][1].radii) or [1]
            table = accuracy_over_pixels_and_budget(pairs, pixels, [r for r in args.radii if r > 0] or [0.0])
            print(f"\n{path.name}: certified accuracy against any change of at most r pixels with total L2 <= ε")
            print(format_pixel_budget_table(table))
    plot = plot_certified_accuracy(runs, args.plot or args.tables[0].with_suffix(".png"))
    print(f"wrote {plot}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    from .evaluation import format_pixel_budget_table, format_summaries

    started = time.perf_counter()
    result = run_demo(args.out_dir, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed, limit=args.limit, device=args.device)
    print(f"Embedded digits test split, n0={args.n0}, n={args.n}, alpha={args.alpha} (radii in [0,1] pixel units, L2):")
    print(format_summaries(result.summaries))
    if result.hierarchical:
        print("\nHierarchical model: certified accuracy against any change of at most r pixels with total L2 <= ε:")
        print(format_pixel_budget_table(result.hierarchical))
    print(f"wrote {', '.join(str(p) for p in result.tables.values())} and {result.plot} "
          f"in {time.perf_counter() - started:.1f} s")


def keep_freed_memory_in_process() -> bool:
    """On glibc, keep freed buffers in the process instead of returning them to the OS.

    Otherwise every forward pass on the CPU unmaps its large activation buffers
    and page-faults them back in on the next batch, which cost a third of the
    CPU time in our benchmarks (the same as ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=...``). Returns whether it applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError, ctypes.ArgumentError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vision-rs`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    keep_freed_memory_in_process()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"certify": _certify, "report": _report, "demo": _demo}
    try:
        handlers[args.command](args)
    except VisionRSError as exc:
        print(f"vision-rs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
