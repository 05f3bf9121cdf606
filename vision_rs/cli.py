"""The ``vision-rs`` command line: ``certify``, ``certify-video``, ``certify-seg``, ``report``, ``demo``, ``app``,
``examples``, ``models``.

Importing this module does not import torch: ``vision-rs --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import InvalidParameterError, MissingDependencyError, VisionRSError
from .params import check_alpha, check_sigma
from .wording import duration, fixed, plural, significant

if TYPE_CHECKING:
    import torch

EMBEDDED_NAMES = {
    "image-classification": "digits_cnn.sigma_0.25, digits_cnn.sigma_0.50, digits_cnn_hier.p_0.85_sigma_0.25, digits_cnn.clean",
    "video-classification": "digits_c3d.sigma_0.25",
    "segmentation": "digits_segnet.sigma_0.25, digits_segnet_localized.grid_3x3_sigma_0.25_1.00",
}
"""The embedded models of each task, as each command's help lists them (written out: --help does not import torch;
a test checks them against the registry)."""
VIDEO_MODELS = f"{EMBEDDED_NAMES['video-classification']}, or an image model with --framewise"
TRAINABLE_EMBEDDED = ", ".join(EMBEDDED_NAMES.values())
"""vision-rs train takes the embedded models of every task (--task says which)."""
EMBEDDED_DENOISER_NAMES = "digits_denoiser.sigma_0.25, digits_denoiser.sigma_0.50"
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose output pipe was closed."""

UNITS = """\
Units: sigma (noise std) and every radius are in [0,1] pixel units, i.e. pixel
values divided by 255; a radius is the L2 norm over all pixels and channels of
the image at its own resolution (before any resize to the model's input; a
grey image is measured in grey units).
Example: sigma=0.25 is noise of std 64 grey levels on each pixel and channel.
"""

COLUMNS = """\
Output (--out run.tsv, Cohen et al.'s format; run.jsonl beside it starts with the
run record -- model, weights fingerprint, settings, versions -- then the full
certificate of each row):
  idx      position of the image in the input list (folders sorted, recursive)
  label    true class: from the image's class folder (ImageFolder: sorted names,
           or the integer a folder is named by; --classes overrides), else -1
  predict  certified class, or -1 when the smoothed classifier abstains
  radius   certified L2 radius: every perturbation of norm < radius keeps the
           prediction (0 when abstaining)
  correct  1 if predict == label, 0 if not, -1 if the label is unknown
  time     seconds spent on the image
A killed or interrupted run resumes where it stopped when the same command is
run again; it refuses to mix runs whose settings differ.
"""

def models_help(embedded: str) -> str:
    """The --model and --denoiser forms, with the embedded models a command takes."""
    return MODELS_HELP.format(embedded=embedded)


MODELS_HELP = f"""\
Models (--model):
  embedded    {{embedded}} (offline, shipped)
  timm        any timm name, e.g. resnet50 or resnet50.a1_in1k (weights from the
              local Hugging Face / torch hub cache; --no-pretrained for random)
  torchvision torchvision:NAME, e.g. torchvision:resnet18
  checkpoint  a .safetensors / .pt file, with --arch NAME (and --num-classes); one written by
              `vision-rs train` carries its architecture and preprocessing: nothing else

Denoisers (--denoiser; denoised smoothing, in front of a model trained without noise):
  embedded    {EMBEDDED_DENOISER_NAMES} (offline, shipped)
  checkpoint  a .safetensors / .pt file of the embedded denoiser architecture
              (vision_rs.embedded.DigitsDenoiser with its default sizes), e.g. from `vision-rs train-denoiser`
  diffusion   a local folder with a diffusers UNet2DModel and its DDPM scheduler
              (unet/ and scheduler/, as DDPMPipeline.save_pretrained writes;
              needs pip install 'vision-rs[diffusion]')
"""


# ---------------------------------------------------------------------------- argument types


def _checked(check: Callable[[float], float], kind: type = float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return check(kind(text))
        except (ValueError, InvalidParameterError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5G', '1000000' → bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"must be a size such as 2GiB or 512MiB, got {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()[:1]
    value = int(number * _UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text!r}")
    return value


POSITIVE = _at_least(1)
NON_NEGATIVE = _at_least(0)
SIGMA = _checked(check_sigma)
ALPHA = _checked(check_alpha)


# ---------------------------------------------------------------------------- parser


def _add_sampling_options(parser: argparse.ArgumentParser, n_default: int) -> None:
    parser.add_argument("--n0", type=POSITIVE, default=100, help="selection samples that choose the class (default: 100)")
    parser.add_argument("--n", "--num-samples", dest="n", type=POSITIVE, default=n_default,
                        help=f"estimation samples for the bound (default: {n_default}); --num-samples under torchrun")
    parser.add_argument("--alpha", type=ALPHA, default=0.001, help="failure probability of each certificate (default: 0.001)")
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0, help="noise seed; input idx uses seed+idx (default: 0)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument("--batch-size", type=POSITIVE, default=256, help="noisy inputs per forward pass (default: 256)")


def _add_sequential_options(parser: argparse.ArgumentParser) -> None:
    sequential = parser.add_argument_group(
        "sequential certification (at most --n draws, stopping as soon as the answer is known; same guarantee)")
    sequential.add_argument("--radius", type=float, metavar="R",
                            help="decide whether radius R is certified: stop once it is, or once it cannot be within --n")
    sequential.add_argument("--sequential", action="store_true",
                            help="certify the radius, stopping once it is within --tolerance of the best the rest of "
                                 "the budget could still reach")
    sequential.add_argument("--tolerance", type=float, metavar="T",
                            help="with --sequential: relative radius tolerance (default: 0.02)")


def _sequential_settings(args: argparse.Namespace) -> dict[str, object]:
    """``radius`` / ``sequential`` / ``tolerance`` for ``certify``, checked (our error names the options)."""
    from .sampling.sequential import sequential_goal

    sequential_goal(args.radius, args.sequential, args.tolerance)
    return {"radius": args.radius, "sequential": args.sequential, "tolerance": args.tolerance}


def _check_stopping_rule(smoothed: object, stopping: dict[str, object]) -> None:
    """A sequential run (``--radius`` / ``--sequential``) of a method that does not count one vote per draw is
    refused before the table's header is printed."""
    from .sampling.sequential import check_sequential_method

    if stopping["radius"] is not None or stopping["sequential"]:
        check_sequential_method(smoothed.smoothing.votes_once_per_draw, smoothed.details)  # type: ignore[attr-defined]


def _n_used_column(args: argparse.Namespace, value: object) -> str:
    """A tab and ``value`` for the ``n_used`` column of the printed table in sequential runs ('' otherwise)."""
    return f"\t{value}" if args.radius is not None or args.sequential else ""


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def _add_speed_options(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group("speed and memory (never change the guarantee)")
    speed.add_argument("--channels-last", action="store_true", help="run the model on channels_last tensors")
    speed.add_argument("--autocast", choices=sorted(AUTOCAST_DTYPES),
                       help="run the model under torch.autocast with bf16 (bfloat16) or fp16 (float16) (default: fp32)")
    speed.add_argument("--streams", type=POSITIVE, default=2,
                       help="CUDA streams that consecutive batches alternate between; 1 saves GPU memory (default: 2)")
    speed.add_argument("--cuda-graphs", action="store_true",
                       help="replay each full batch as one CUDA graph (one stream): for small models whose speed is "
                            "bound by launching kernels; ignored on the CPU")
    speed.add_argument("--memory-budget", type=parse_bytes, default=None, metavar="SIZE",
                       help="memory the noisy draws of a batch and their model inputs may take, e.g. 4GiB (default: 2GiB); "
                            "an input that cannot fit one draw is refused before anything is written")


def _add_model_options(parser: argparse.ArgumentParser, embedded: str) -> None:
    parser.add_argument("--model", required=True, help=f"timm name, torchvision:NAME, embedded name ({embedded}), or a "
                        "checkpoint file with --arch; see `vision-rs models`")
    parser.add_argument("--arch", help="architecture of a checkpoint given as --model (timm name or torchvision:NAME)")
    parser.add_argument("--checkpoint", help="weights to load into --model (safetensors or weights-only torch file)")
    parser.add_argument("--num-classes", type=POSITIVE, help="classes of the model's head (for checkpoints)")
    parser.add_argument("--no-pretrained", action="store_true", help="random weights instead of pretrained ones (a warning says so)")
    preprocessing = parser.add_argument_group(
        "preprocessing (the model's own evaluation transform, applied after the noise; these override it)")
    preprocessing.add_argument("--mean", type=float, nargs="+", help="input mean per channel")
    preprocessing.add_argument("--std", type=float, nargs="+", help="input std per channel")
    preprocessing.add_argument("--input-size", type=POSITIVE, nargs=2, metavar=("H", "W"), help="model input size")
    preprocessing.add_argument("--crop-pct", type=float, help="resize to size/crop_pct, then crop the centre (timm)")
    preprocessing.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"],
                               help="resize interpolation: bilinear, bicubic or nearest")
    preprocessing.add_argument("--test-size", action="store_true", help="use timm's test_input_size and test_crop_pct")


def _grid(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×,]\s*(\d+)\s*", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"must be rows x columns of cells, e.g. 3x5, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _eps_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not value >= 0 or value == float("inf") for value in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated budgets >= 0, e.g. 0.25,0.5,1, got {text!r}")
    return values


PILLOW_PIXEL_LIMIT = 2 * 89_478_485
"""The most pixels Pillow decodes by default (twice ``PIL.Image.MAX_IMAGE_PIXELS``; it warns above half of it)."""


def _add_image_limit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-image-pixels", type=POSITIVE, default=PILLOW_PIXEL_LIMIT, metavar="N",
                        help="decode image files of at most N pixels, a guard against decompression bombs "
                             f"(default: {PILLOW_PIXEL_LIMIT:,}, Pillow's own limit)")


@contextlib.contextmanager
def _image_pixel_limit(args: argparse.Namespace) -> Iterator[None]:
    """While a command runs, Pillow decodes images of at most ``--max-image-pixels`` (exactly: its warning above the
    limit becomes a refusal, which :func:`vision_rs.images.open_image_file` words); restored afterwards."""
    limit = getattr(args, "max_image_pixels", None)
    if limit is None:
        yield
        return
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _add_denoiser_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--denoiser", metavar="PATH_OR_NAME",
                        help="denoised smoothing: a denoiser run on every noisy draw before the model (video: on every "
                             f"frame): an embedded name ({EMBEDDED_DENOISER_NAMES}), a checkpoint of that architecture, "
                             "or a diffusers folder (unet/ + scheduler/); see Denoisers below")


def _add_clip_reading_options(parser: argparse.ArgumentParser) -> None:
    reading = parser.add_argument_group("reading videos (decord, or PyAV when decord cannot)")
    reading.add_argument("--frames", type=POSITIVE, help="frames per clip (default: all)")
    reading.add_argument("--stride", type=POSITIVE, default=1, help="take every STRIDE-th frame (default: 1)")
    reading.add_argument("--start", "--start-frame", dest="start", type=NON_NEGATIVE, default=0,
                         help="first frame (default: 0); --start-frame under torchrun")
    reading.add_argument("--uniform", action="store_true", help="spread --frames evenly over the video instead")
    reading.add_argument("--pad", choices=["loop", "repeat"], help="extend a video too short for the request: loop wraps "
                         "around to the first frame, repeat repeats the last one (default: refuse it)")
    reading.add_argument("--size", type=POSITIVE, nargs=2, metavar=("H", "W"), help="resize frames when reading")
    reading.add_argument("--backend", choices=["auto", "decord", "pyav"], default="auto",
                         help="decoder: decord, pyav (PyAV), or auto (decord, else PyAV; default)")


def _clip_reading(args: argparse.Namespace) -> object:
    from .video import ClipReading

    return ClipReading(args.frames, args.stride, args.start, args.uniform, tuple(args.size) if args.size else None,
                       args.pad, args.backend)


def _held_out_amount(text: str) -> float | int:
    """A count (``200``) or a share of the data (``0.1``) to hold out."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value >= 1 and value == int(value):
        return int(value)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a count of items (e.g. 200) or a share in [0, 1) (e.g. 0.1), got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _add_optimisation_options(parser: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """Epochs, batch, timm's optimiser and schedule, AMP, seed, device, the output folder (train, train-denoiser)."""
    group = parser.add_argument_group("optimisation (timm's create_optimizer_v2 and create_scheduler_v2)")
    group.add_argument("--epochs", type=POSITIVE, default=epochs, help=f"passes over the training data (default: {epochs})")
    group.add_argument("--batch-size", type=POSITIVE, default=64, help="inputs per step (default: 64)")
    group.add_argument("--lr", type=_positive_float, default=lr, help=f"peak learning rate (default: {lr:g})")
    group.add_argument("--opt", default="adamw", help="timm optimizer name, e.g. adamw, sgd, lamb (default: adamw)")
    group.add_argument("--weight-decay", type=_non_negative_float, default=1e-4, help="weight decay (default: 1e-4)")
    group.add_argument("--momentum", type=_non_negative_float, default=0.9, help="momentum of sgd-like optimizers (default: 0.9)")
    group.add_argument("--sched", default="cosine", help="timm schedule name: cosine, step, multistep, poly, ... (default: cosine)")
    group.add_argument("--warmup-epochs", type=NON_NEGATIVE, default=0, help="linear warm-up epochs (default: 0)")
    group.add_argument("--min-lr", type=_non_negative_float, default=0.0, help="learning rate at the end of the schedule (default: 0)")
    group.add_argument("--grad-clip", type=_positive_float, help="clip the gradients' L2 norm to this (default: off)")
    group.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision: bf16 (bfloat16 autocast, CPU or GPU) or fp16 (float16 "
                       "autocast with a gradient scaler, meant for GPUs) (default: float32)")
    group.add_argument("--workers", type=NON_NEGATIVE, default=0, help="data-loading processes (default: 0)")
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the data order, augmentation and noise (default: 0)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for model.safetensors, train_state.pt, train_log.jsonl and the held-out run; "
                             "resumes the run it holds")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_held_out_options(parser: argparse.ArgumentParser) -> None:
    held = parser.add_argument_group("held-out data, certified at the end")
    held.add_argument("--val", type=Path, metavar="DIR", help="held-out data in the training data's layout "
                      "(default: hold out part of the training data, see --held-out)")
    held.add_argument("--held-out", type=_held_out_amount, default=0.1, metavar="N_OR_SHARE",
                      help="without --val: hold out this many items, or this share (default: 0.1), chosen by --seed")
    held.add_argument("--certify", type=NON_NEGATIVE, default=100, metavar="COUNT",
                      help="certify the first COUNT held-out items at the end (default: 100; 0 skips)")
    held.add_argument("--certify-n0", type=POSITIVE, default=100, help="selection samples (default: 100)")
    held.add_argument("--certify-n", type=POSITIVE, default=1000, help="estimation samples (default: 1000)")
    held.add_argument("--alpha", type=ALPHA, default=0.001, help="failure probability of each certificate (default: 0.001)")


def _add_augmentation_options(parser: argparse.ArgumentParser) -> None:
    aug = parser.add_argument_group("augmentation of images (timm's create_transform(is_training=True), on pixels)")
    aug.add_argument("--train-size", type=POSITIVE, nargs=2, metavar=("H", "W"),
                     help="random-resized-crop size (default: the model's input size)")
    aug.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("LOW", "HIGH"),
                     help="area share of the random crop (default: 0.08 1.0)")
    aug.add_argument("--ratio", type=float, nargs=2, default=[0.75, 4 / 3], metavar=("LOW", "HIGH"),
                     help="aspect ratio range of the random crop (default: 0.75 1.333)")
    aug.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability (default: 0.5)")
    aug.add_argument("--color-jitter", type=float, default=0.4, help="colour jitter strength, 0 for none (default: 0.4)")
    aug.add_argument("--auto-augment", help="timm auto-augment policy, e.g. rand-m9-mstd0.5 (default: none)")
    aug.add_argument("--no-aug", action="store_true", help="no augmentation: resize and centre-crop only")
    aug.add_argument("--train-crop", type=POSITIVE, metavar="SIZE",
                     help="train on random SIZE x SIZE crops (after the augmentation above): a Smooth-Reduce patch "
                          "model, certified with --patch-size SIZE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-rs",
        description="Certify image classifiers with randomized smoothing: predictions with a provable L2 radius.",
        epilog=UNITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"vision-rs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    certify = commands.add_parser(
        "certify",
        help="certify images, folders of images, with a timm/torchvision model or a checkpoint",
        description="Certify each image with randomized smoothing: Gaussian (Cohen et al. 2019) by default, "
        "hierarchical (--hierarchical-p) or Smooth-Reduce over patches (--patch-size). The smoothed classifier "
        "abstains when its vote is not clear enough to certify.",
        epilog=UNITS + "\n" + COLUMNS + "\n" + models_help(EMBEDDED_NAMES["image-classification"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    certify.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    _add_model_options(certify, EMBEDDED_NAMES["image-classification"])
    _add_denoiser_option(certify)
    certify.add_argument("--sigma", type=SIGMA, required=True, help="noise std in [0,1] pixel units, e.g. 0.25")
    certify.add_argument(
        "--hierarchical-p", type=float, metavar="P",
        help="hierarchical smoothing: noise each pixel only with probability P, certify against r changed pixels",
    )
    certify.add_argument("--indicator", action="store_true",
                         help="with --hierarchical-p: append the noise mask as an extra input channel (model needs C+1)")
    patches = certify.add_argument_group("Smooth-Reduce (overlapping patches; noise is added before cropping)")
    patches.add_argument("--patch-size", type=POSITIVE, help="patch side in pixels of the input image")
    patches.add_argument("--patch-stride", type=POSITIVE, help="grid of patches with this stride")
    patches.add_argument("--patch-count", type=POSITIVE, help="this many patches at random positions (drawn from --seed)")
    patches.add_argument("--reduce", choices=["mean", "max"], default="mean",
                         help="reduction across patches: mean or max of the per-patch probabilities (default: mean)")
    patches.add_argument("--mode", choices=["vote", "smoothed", "probit-mean"], default="vote",
                         help="vote: reduce softmax per draw; smoothed: reduce smoothed probabilities; "
                              "probit-mean: mean of per-patch probits (default: vote)")
    _add_sampling_options(certify, n_default=100_000)
    _add_sequential_options(certify)
    _add_speed_options(certify)
    certify.add_argument("--out", type=Path, help="write results to this .tsv (and .jsonl beside it); resumes if it exists")
    certify.add_argument("--classes", type=Path, metavar="FILE",
                         help="class names → labels: one name per line (line i is label i) or a JSON mapping")
    certify.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_image_limit_option(certify)

    video = commands.add_parser(
        "certify-video",
        help="certify video files or folders of them with a video model (or an image model frame by frame)",
        description="Certify each clip with Gaussian noise on the whole clip (every frame, pixel and channel), "
        "optionally reduced over sub-clips along time (temporal Smooth-Reduce, --subclip).",
        epilog=UNITS.replace("image at its own resolution", "clip (all frames) at its own resolution") + "\n" + COLUMNS
        + "\n" + models_help(VIDEO_MODELS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    video.add_argument("inputs", nargs="+", help="video files and/or folders (searched recursively)")
    _add_model_options(video, VIDEO_MODELS)
    _add_denoiser_option(video)
    video.add_argument("--sigma", type=SIGMA, required=True, help="noise std in [0,1] pixel units, e.g. 0.25")
    video.add_argument("--framewise", action="store_true", help="--model is an image classifier: run it on every frame, "
                       "logits averaged over frames")
    video.add_argument("--chunk", type=POSITIVE, help="the model's clip length: split each (sub-)clip into chunks of "
                       "that many frames and average their logits")
    _add_clip_reading_options(video)
    temporal = video.add_argument_group("temporal Smooth-Reduce (sub-clips cut after the noise)")
    temporal.add_argument("--subclip", type=POSITIVE, metavar="LENGTH", help="sub-clips of LENGTH frames")
    temporal.add_argument("--subclip-stride", type=POSITIVE, help="a sub-clip every STRIDE frames (default: LENGTH)")
    temporal.add_argument("--reduce", choices=["mean", "max"], default="mean",
                          help="reduction across sub-clips: mean or max (default: mean)")
    temporal.add_argument("--mode", choices=["vote", "smoothed", "probit-mean"], default="vote",
                          help="vote, smoothed or probit-mean, as for patches in `vision-rs certify` (default: vote)")
    _add_sampling_options(video, n_default=100_000)
    _add_sequential_options(video)
    _add_speed_options(video)
    video.add_argument("--out", type=Path, help="write results to this .tsv (and .jsonl beside it); resumes if it exists")
    video.add_argument("--classes", type=Path, metavar="FILE", help="class names → labels (as for certify)")
    video.add_argument("--no-progress", action="store_true", help="hide progress bars")

    seg = commands.add_parser(
        "certify-seg",
        help="certify every pixel of segmentation masks: per-pixel (isotropic) or localized smoothing with collective counts",
        description="Certify each image's mask. Isotropic smoothing (--sigma) certifies every pixel on its own; localized "
        "smoothing (--grid, --sigma-min, --sigma-max) also counts the pixels that keep their class under ONE shared "
        "perturbation of norm <= eps (the collective certificate, solved with scipy's HiGHS).",
        epilog=UNITS + "\nOutput (--out run.tsv): one row per image, idx labelled correct abstained miou time, then the "
        "pixels certified correct at each eps (pixel@eps; naive@eps and collective@eps for localized smoothing); "
        "run.jsonl holds the run record and each image's summary. Resumable; read by `vision-rs report`.\n\n"
        + models_help(EMBEDDED_NAMES["segmentation"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    seg.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    _add_model_options(seg, EMBEDDED_NAMES["segmentation"])
    _add_denoiser_option(seg)
    noise = seg.add_argument_group("smoothing: --sigma (isotropic) or --grid with --sigma-min/--sigma-max (localized)")
    noise.add_argument("--sigma", type=SIGMA, help="isotropic noise std in [0,1] pixel units")
    noise.add_argument("--grid", type=_grid, metavar="IxJ", help="localized smoothing on an I×J grid of cells, e.g. 3x5")
    noise.add_argument("--sigma-min", type=SIGMA, help="localized: std on the certified cell")
    noise.add_argument("--sigma-max", type=SIGMA, help="localized: std on the farthest cells")
    certs = seg.add_argument_group("certificates")
    certs.add_argument("--eps", type=_eps_list, default=[0.1, 0.25, 0.5, 1.0], metavar="E1,E2,...",
                       help="L2 budgets to count certified pixels at (default: 0.1,0.25,0.5,1)")
    certs.add_argument("--correction", choices=["bonferroni", "holm", "bonferroni-threshold"], default="bonferroni",
                       help="bonferroni: per-pixel bounds and radii; holm: Fischer et al.'s test of p > tau with Holm's "
                            "step-down, one radius for the certified pixels (isotropic only); bonferroni-threshold: the "
                            "same test with Bonferroni (default: bonferroni)")
    certs.add_argument("--tau", type=float, default=0.75, help="threshold of the holm test (default: 0.75)")
    certs.add_argument("--exact", action="store_true", help="solve the collective program exactly (MILP; slower than the LP)")
    certs.add_argument("--bins", type=POSITIVE, help="merge each cell's bounds into this many bins (conservative, faster)")
    seg.add_argument("--masks", type=Path, metavar="DIR", help="label maps: DIR/<image stem>.png of class indices (255 = ignore)")
    _add_sampling_options(seg, n_default=1000)
    seg.set_defaults(alpha=0.01)
    _add_speed_options(seg)
    seg.add_argument("--out", type=Path, required=True,
                     help="write results to this .tsv (and .jsonl beside it); resumes if it exists")
    seg.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_image_limit_option(seg)

    train = commands.add_parser(
        "train",
        help="train or fine-tune a model with the noise it will be certified with (timm / torchvision / embedded)",
        description="Train a base classifier with the certification noise, added where certification adds it (on "
        "[0,1] pixels, before the model's normalisation): Gaussian augmentation (Cohen et al. 2019) or consistency "
        "regularisation (Jeong & Shin 2020), hierarchical noise with its indicator, localized sigma maps for "
        "segmentation. Writes DIR/model.safetensors after every epoch with a record of what produced it, so that "
        "`vision-rs certify --model DIR/model.safetensors` needs nothing else; resumes after Ctrl-C or a crash; "
        "runs under torchrun (DDP). At the end it certifies held-out data and prints the table.",
        epilog=UNITS + "\nData: DATA/<class>/<image> (as torchvision's ImageFolder); --task video: DATA/<class>/<video>; "
        "--task segmentation: images under DATA with label maps --masks DIR/<image stem>.png (255 = not scored).\n\n"
        + models_help(TRAINABLE_EMBEDDED)
        + "Embedded architectures (the networks without weights): digits_cnn, digits_c3d, digits_segnet\n"
        "  (vision-rs train DATA --model NAME --no-pretrained)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    train.add_argument("data", type=Path, help="training data folder (see Data below)")
    train.add_argument("--task", choices=["image", "video", "segmentation"], default="image",
                       help="what the model does: image (classification of images, default), video (classification "
                            "of clips) or segmentation (a class for each pixel)")
    _add_model_options(train, TRAINABLE_EMBEDDED)
    noise = train.add_argument_group("noise (the smoothing the model will be certified with)")
    noise.add_argument("--sigma", type=SIGMA, help="noise std in [0,1] pixel units, e.g. 0.25")
    noise.add_argument("--hierarchical-p", type=float, metavar="P",
                       help="hierarchical smoothing: noise each pixel with probability P (images)")
    noise.add_argument("--indicator", action="store_true",
                       help="with --hierarchical-p: the noise mask as one more input channel (a timm model gets in_chans=C+1)")
    noise.add_argument("--grid", type=_grid, metavar="IxJ", help="segmentation: localized smoothing on an IxJ grid")
    noise.add_argument("--sigma-min", type=SIGMA, help="localized: std on the certified cell")
    noise.add_argument("--sigma-max", type=SIGMA, help="localized: std on the farthest cells")
    noise.add_argument("--region", choices=["mask", "cell"], default="mask",
                       help="localized: score every pixel (mask) or only the drawn cell's (cell) (default: mask)")
    loss = train.add_argument_group("loss")
    loss.add_argument("--loss", choices=["gaussian", "consistency"], default="gaussian",
                      help="gaussian: cross-entropy on noisy inputs; consistency: + lam * KL to the mean prediction + "
                           "eta * its entropy (default: gaussian)")
    loss.add_argument("--copies", type=POSITIVE, help="noisy copies of each input per step (default: 1; consistency: 2)")
    loss.add_argument("--lam", type=_non_negative_float, default=10.0, help="consistency: weight of the KL term (default: 10)")
    loss.add_argument("--eta", type=_non_negative_float, default=0.5, help="consistency: weight of the entropy term (default: 0.5)")
    _add_optimisation_options(train, epochs=10, lr=1e-3)
    _add_augmentation_options(train)
    _add_clip_reading_options(train)
    train.add_argument("--masks", type=Path, metavar="DIR", help="--task segmentation: label maps DIR/<image stem>.png")
    _add_held_out_options(train)

    train_denoiser = commands.add_parser(
        "train-denoiser",
        help="train a denoiser for denoised smoothing (mean squared error, or stability through a frozen classifier)",
        description="Train the embedded denoiser architecture (vision_rs.models.embedded.DigitsDenoiser) to remove "
        "N(0, sigma^2) noise from [0,1] pixels: mean squared error (no classifier), or Salman et al.'s stability "
        "objective through --classifier, kept frozen. Writes DIR/model.safetensors after every epoch (use it with "
        "--denoiser), resumes, runs under torchrun. At the end it reports the held-out PSNR and, with --classifier, "
        "certifies held-out data through the new denoiser.",
        epilog=UNITS + "\nData: DATA/<class>/<image> (labels are not used by the denoiser).\n\n"
        + models_help(EMBEDDED_NAMES["image-classification"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    train_denoiser.add_argument("data", type=Path, help="folder of training images (class sub-folders)")
    train_denoiser.add_argument("--sigma", type=SIGMA, required=True, help="noise std in [0,1] pixel units, e.g. 0.25")
    train_denoiser.add_argument("--loss", choices=["mse", "stability"], default="mse",
                                help="mse: squared error to the clean image; stability: cross-entropy of --classifier "
                                     "on the denoised image against its class on the clean one (default: mse)")
    train_denoiser.add_argument("--classifier", metavar="MODEL",
                                help="the frozen classifier of --loss stability (and of the held-out certification)")
    train_denoiser.add_argument("--init", metavar="NAME_OR_PATH",
                                help=f"start from these denoiser weights ({EMBEDDED_DENOISER_NAMES} or a checkpoint)")
    _add_optimisation_options(train_denoiser, epochs=20, lr=2e-3)
    _add_augmentation_options(train_denoiser)
    _add_held_out_options(train_denoiser)

    report = commands.add_parser(
        "report",
        help="certified-accuracy table and PNG curve of result TSVs",
        description="Summarise one or more result TSVs (ours or Cohen et al.'s) and plot certified accuracy against radius. "
        "An input counts as certified at radius r when it is correct and its certified radius R > r.",
        epilog=UNITS + "\n" + COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    report.add_argument("tables", nargs="+", type=Path, help="result .tsv files")
    report.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0], help="radii for the table")
    report.add_argument("--plot", type=Path, help="PNG path (default: beside the first TSV, named after the runs)")
    report.add_argument("--no-plot", action="store_true", help="print the tables only")

    demo = commands.add_parser(
        "demo",
        help="certify the embedded digits test split with the three embedded models (offline)",
        description="Certify the 360 held-out embedded digits with the embedded models "
        f"({EMBEDDED_NAMES['image-classification']}), print the tables and write the plot. Runs offline.",
        epilog=UNITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    demo.add_argument("--out-dir", type=Path, default=Path("vision-rs-demo"), help="output folder (default: ./vision-rs-demo)")
    demo.add_argument("--video", action="store_true",
                      help="the video demo instead: 30 held-out moving-digit clips (mp4), a 3D CNN on the whole clip and "
                           "on sub-clips, and the image CNN frame by frame, at equal compute")
    demo.add_argument("--segmentation", action="store_true",
                      help="the segmentation demo instead: 12 held-out digit scenes, isotropic against localized smoothing "
                           "(per-pixel and collective certificates) at equal compute")
    demo.add_argument("--denoised", action="store_true",
                      help="the denoised-smoothing demo instead: the model trained without noise (digits_cnn.clean) "
                           "smoothed without and with the embedded denoiser, and the noise-trained model as the "
                           "reference, at σ = 0.25 and 0.5 and equal n")
    demo.add_argument("--n0", type=POSITIVE, help="selection samples (default: 100; video: 60; segmentation: 10 per cell)")
    demo.add_argument("--n", type=POSITIVE, help="estimation samples (default: 1000; video: 600; segmentation: 100 per cell)")
    demo.add_argument("--alpha", type=ALPHA, default=0.001, help="failure probability (default: 0.001)")
    demo.add_argument("--alpha-seg", type=ALPHA, default=0.01,
                      help="failure probability of a whole mask in the segmentation demo (default: 0.01)")
    demo.add_argument("--seed", type=NON_NEGATIVE, default=0, help="noise seed; test image idx uses seed+idx (default: 0)")
    demo.add_argument("--limit", type=POSITIVE, help="certify only the first LIMIT test inputs (video default: 30)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")

    app = commands.add_parser(
        "app",
        help="serve the Gradio app: certify images, clips and segmentation masks in the browser (needs vision-rs[demo])",
        description="Serve the vision-rs app on this machine: an image, a video and a segmentation tab, offline on the "
        "embedded models and examples, with any timm / torchvision model whose weights are in the local caches, and "
        "with the checkpoints of --models DIR. It prints the URL to open.",
        epilog=UNITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    app.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 serves the network)")
    app.add_argument("--port", type=_at_least(1), help="port (default: 7860, or the next free one)")
    app.add_argument("--models", type=Path, metavar="DIR",
                     help="offer the checkpoint files in DIR (the page never takes a path)")
    app.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    app.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    app.add_argument("--max-file-size", type=parse_bytes, default=20 << 20, metavar="SIZE",
                     help="largest upload, e.g. 20MiB (default: 20MiB)")
    app.add_argument("--queue-size", type=POSITIVE, default=16, help="requests that may wait in the queue (default: 16)")
    app.add_argument("--concurrency", type=POSITIVE, default=1, help="certifications that run at once (default: 1)")

    examples = commands.add_parser(
        "examples",
        help="write the embedded digits, scenes (with label maps) and clips as files, to try the commands on",
        description="Write the held-out embedded data as files, in the layouts the certify commands read: "
        "OUT/digits/<label>/<index>.png (class folders), OUT/scenes/images/<index>.png with label maps in "
        "OUT/scenes/masks/<index>.png (one class index per pixel: 0-9 digits, 10 background), and "
        "OUT/clips/<label>/clip_<index>.mp4 (needs OpenCV, the [video] extra). It then prints commands to run on them.",
        allow_abbrev=False,
    )
    examples.add_argument("out", type=Path, metavar="OUT", help="folder to write into (created if missing)")
    examples.add_argument("--limit", type=POSITIVE, help="write only the first LIMIT of each kind (default: all: 360 "
                          "digits, 100 scenes, 360 clips)")

    commands.add_parser(
        "models", help="list the embedded models and how to name any timm / torchvision model or checkpoint",
        description="List the embedded models (offline) and how other models are named.", allow_abbrev=False,
    )
    return parser


# ---------------------------------------------------------------------------- commands


def rank_device_option(args: argparse.Namespace) -> str | torch.device | None:
    """``--device``; under torchrun, on a GPU (the default when there is one), the GPU of the process's ``LOCAL_RANK``.

    Under torchrun with several processes ``--out`` is needed: each one certifies its share into files beside it.
    """
    import torch

    from .models.devices import check_device
    from .runs.distributed import rank_device, ranks_from_environment

    check_device(args.device)
    ranks = ranks_from_environment()
    if ranks is None:
        return args.device
    if ranks.world_size > 1 and args.out is None:
        raise InvalidParameterError("under torchrun give --out run.tsv: every process certifies its share of the inputs "
                                    "into files beside it, which rank 0 merges")
    return rank_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), ranks)


def model_options(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~vision_rs.smoothing.ModelOptions` the model, preprocessing and speed options give (the device is
    checked here, before anything is loaded)."""
    import torch

    options = model_loading_options(args) | dict(
        batch_size=args.batch_size, progress=not args.no_progress, channels_last=args.channels_last,
        streams=args.streams, cuda_graphs=args.cuda_graphs, autocast_dtype=getattr(torch, AUTOCAST_DTYPES[args.autocast]) if args.autocast else None,
        denoiser=getattr(args, "denoiser", None),
    )
    if args.memory_budget is not None:
        options["memory_budget"] = args.memory_budget
    return options


def model_loading_options(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~vision_rs.smoothing.ModelOptions` the model and preprocessing options give, and the device."""
    return dict(
        pretrained=not args.no_pretrained, mean=args.mean, std=args.std, input_size=args.input_size,
        crop_pct=args.crop_pct, interpolation=args.interpolation, use_test_size=args.test_size,
        num_classes=args.num_classes, arch=args.arch, checkpoint=args.checkpoint, device=rank_device_option(args),
    )


def _check_output(args: argparse.Namespace) -> None:
    """A certify command's ``--out``: a .tsv in a folder files can be written in, checked before anything is loaded."""
    from .runs.files import check_output_file

    if args.out is not None:
        check_output_file(args.out)


def _print_run(out: Path, summary: object) -> None:
    from .runs.summaries import format_summaries

    if not _speaks_for_the_run():
        return
    print(format_summaries({out.name: summary}))  # type: ignore[dict-item]
    print(f"wrote {out} and {out.with_suffix('.jsonl')}")


def _certify_video(args: argparse.Namespace) -> None:
    from .runs.datasets import about_file
    from .runs.inputs import collect_files, read_class_file
    from .video import VIDEO_SUFFIXES, ClipReading, SubClips, certify_video_dataset, smooth, to_unit_clip

    if args.subclip is None and args.subclip_stride is not None:
        raise InvalidParameterError("--subclip-stride needs --subclip")
    _check_output(args)
    stopping = _sequential_settings(args)
    reading = ClipReading(args.frames, args.stride, args.start, args.uniform, tuple(args.size) if args.size else None,
                          args.pad, args.backend)
    classes = read_class_file(args.classes) if args.classes is not None else None
    files = collect_files(args.inputs, VIDEO_SUFFIXES, classes, kind="video")
    subclips = SubClips(args.subclip, args.subclip_stride) if args.subclip is not None else None
    smoothed = smooth(args.model, args.sigma, subclips=subclips, reduce=args.reduce, mode=args.mode,
                      framewise=args.framewise, chunk=args.chunk, **model_options(args))
    if args.out is not None:
        summary = certify_video_dataset(smoothed, args.inputs, args.out, reading=reading, n0=args.n0, n=args.n,
                                        alpha=args.alpha, seed=args.seed, class_to_idx=classes, progress=not args.no_progress,
                                        **stopping)
        _print_run(args.out, summary)
        return
    _check_stopping_rule(smoothed, stopping)
    clips = []
    for path, _ in files.files:  # read all first: a bad or too large file fails before any output
        with about_file(path):
            clip, notes = reading.read(path)
            smoothed.check_fits(to_unit_clip(clip, smoothed.spec.channels).shape)
        clips.append((path, clip, notes["clip"]["backend"]))
    print("path\tpredict\tradius\tp_lower\ttime\tbackend" + _n_used_column(args, "n_used"))
    for idx, (path, clip, backend) in enumerate(clips):
        with about_file(path):
            cert = smoothed.certify(clip, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed + idx, **stopping)
        predict = -1 if cert.label is None else cert.label
        print(f"{path}\t{predict}\t{fixed(cert.radius, 4)}\t{fixed(cert.p_lower, 4)}\t{significant(cert.seconds)}\t{backend}"
              + _n_used_column(args, cert.n_used), flush=True)


def _certify_seg(args: argparse.Namespace) -> None:
    from .runs.datasets import collect_image_files
    from .segmentation import Localized, smooth
    from .segmentation.datasets import (
        certify_segmentation_dataset,
        format_segmentation_summaries,
        summarize_segmentation,
    )
    from .segmentation.smoothing import check_correction

    localized_args = (args.grid, args.sigma_min, args.sigma_max)
    if (args.sigma is None) == all(value is None for value in localized_args):
        raise InvalidParameterError("give --sigma (isotropic) or --grid IxJ --sigma-min S --sigma-max S (localized)")
    if args.sigma is None and any(value is None for value in localized_args):
        raise InvalidParameterError("localized smoothing needs all of --grid, --sigma-min and --sigma-max")
    localized = Localized(args.grid, args.sigma_min, args.sigma_max) if args.sigma is None else None
    check_correction(args.correction, localized, args.tau)
    _check_output(args)
    if args.masks is not None and not args.masks.is_dir():
        raise InvalidParameterError(f"--masks {args.masks}: no such folder")
    collect_image_files(args.inputs)
    out = args.out
    smoothed = smooth(args.model, args.sigma, localized=localized, **model_options(args))
    certify_segmentation_dataset(
        smoothed, args.inputs, out, masks=args.masks, eps=args.eps, n0=args.n0, n=args.n, alpha=args.alpha,
        seed=args.seed, correction=args.correction, tau=args.tau, exact=args.exact, bins=args.bins,
        progress=not args.no_progress,
    )
    if _speaks_for_the_run():
        print(format_segmentation_summaries({out.name: summarize_segmentation(out)}))
        print(f"wrote {out} and {out.with_suffix('.jsonl')}")


def _certify(args: argparse.Namespace) -> None:
    from .images import to_unit_tensor
    from .runs.datasets import about_file, certify_dataset, collect_image_files
    from .runs.inputs import read_class_file
    from .runs.summaries import DEFAULT_RADII
    from .sampling.methods import Hierarchical
    from .sampling.patches import Patches
    from .smoothing import smooth

    if args.indicator and args.hierarchical_p is None:
        raise InvalidParameterError("--indicator needs --hierarchical-p")
    if args.patch_size is None and (args.patch_stride is not None or args.patch_count is not None):
        raise InvalidParameterError("--patch-stride and --patch-count need --patch-size")
    _check_output(args)
    stopping = _sequential_settings(args)
    classes = read_class_file(args.classes) if args.classes is not None else None
    files = collect_image_files(args.inputs, classes)
    hierarchical = Hierarchical(args.hierarchical_p, args.indicator) if args.hierarchical_p is not None else None
    patches = (Patches(args.patch_size, stride=args.patch_stride, count=args.patch_count)
               if args.patch_size is not None else None)
    smoothed = smooth(args.model, args.sigma, hierarchical=hierarchical, patches=patches, reduce=args.reduce,
                      mode=args.mode, **model_options(args))
    if args.out is not None:
        summary = certify_dataset(
            smoothed, args.inputs, args.out, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
            radii=DEFAULT_RADII, class_to_idx=classes, progress=not args.no_progress, **stopping,
        )
        _print_run(args.out, summary)
        return
    _check_stopping_rule(smoothed, stopping)
    for path, _ in files.files:  # decode all first: a bad or too large file fails before any output
        with about_file(path):
            smoothed.check_fits(to_unit_tensor(path, channels=smoothed.spec.channels).shape)
    print("path\tpredict\tradius\tp_lower\ttime" + _n_used_column(args, "n_used"))
    for idx, (path, _) in enumerate(files.files):
        with about_file(path):
            cert = smoothed.certify(path, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed + idx, **stopping)
        predict = -1 if cert.label is None else cert.label
        print(f"{path}\t{predict}\t{fixed(cert.radius, 4)}\t{fixed(cert.p_lower, 4)}\t{significant(cert.seconds)}"
              + _n_used_column(args, cert.n_used),
              flush=True)


def _check_train_arguments(args: argparse.Namespace) -> None:
    """Every combination ``vision-rs train`` refuses, checked before anything is read or loaded."""
    localized = (args.grid, args.sigma_min, args.sigma_max)
    segmentation = args.task == "segmentation"
    if any(value is not None for value in localized) and not segmentation:
        raise InvalidParameterError("--grid, --sigma-min and --sigma-max are localized smoothing of segmentation: "
                                    "add --task segmentation")
    if segmentation and any(value is not None for value in localized):
        if args.sigma is not None or any(value is None for value in localized):
            raise InvalidParameterError("localized smoothing needs all of --grid, --sigma-min and --sigma-max, "
                                        "and no --sigma")
    elif args.sigma is None:
        raise InvalidParameterError("give --sigma, the noise std the model will be certified with (e.g. 0.25)")
    if args.region == "cell" and args.grid is None:
        raise InvalidParameterError("--region cell scores one output cell of localized smoothing: add --grid")
    if args.hierarchical_p is not None and args.task != "image":
        raise InvalidParameterError("--hierarchical-p trains image classifiers: leave it out, or use --task image")
    if args.indicator and args.hierarchical_p is None:
        raise InvalidParameterError("--indicator needs --hierarchical-p")
    if segmentation != (args.masks is not None):
        raise InvalidParameterError("--task segmentation reads label maps from --masks DIR" if segmentation
                                    else "--masks is for --task segmentation")
    if args.train_crop is not None and args.task != "image":
        raise InvalidParameterError("--train-crop trains an image patch model: use it with --task image")
    if args.loss == "consistency" and args.copies == 1:
        raise InvalidParameterError("--loss consistency compares noisy copies of each input: --copies must be >= 2")
    _check_train_folders(args)


def _check_train_folders(args: argparse.Namespace) -> None:
    from .training.trainer import check_output_folder

    for what, folder in (("training data", args.data), ("--val", args.val), ("--masks", getattr(args, "masks", None))):
        if folder is not None and not folder.is_dir():
            raise InvalidParameterError(f"{what} {folder}: no such folder" if not folder.exists()
                                        else f"{what} {folder} is a file: give a folder")
    check_output_folder(args.out)


def _augmentation(args: argparse.Namespace, size: tuple[int, ...] | None) -> object:
    from .training import Augmentation

    train_size = tuple(args.train_size) if args.train_size else size
    if train_size is None:
        raise InvalidParameterError("the model takes any input size: say which size to train at with --train-size H W")
    return Augmentation(size=train_size, scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip,  # type: ignore[arg-type]
                        color_jitter=args.color_jitter, auto_augment=args.auto_augment, enabled=not args.no_aug,
                        train_crop=args.train_crop)


def _train_config(args: argparse.Namespace) -> object:
    from .training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.opt,
                       weight_decay=args.weight_decay, momentum=args.momentum, schedule=args.sched,
                       warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, seed=args.seed, amp=args.amp,
                       grad_clip=args.grad_clip, workers=args.workers, progress=not args.no_progress)


def _smoothed_for_training(args: argparse.Namespace, num_classes: int | None) -> object:
    """The smoothed model whose network ``vision-rs train`` trains: the method and noise it will be certified with."""
    from .models.embedded import embedded_model_info
    from .models.hub import is_checkpoint_path
    from .smoothing import building_to_train

    options = model_loading_options(args) | {"progress": False}
    named = embedded_model_info(args.model) is None and not is_checkpoint_path(args.model)
    if num_classes is not None and named:
        options["num_classes"] = num_classes
    with building_to_train():
        if args.task == "segmentation":
            from .segmentation import Localized
            from .segmentation import smooth as smooth_segmentation

            localized = Localized(args.grid, args.sigma_min, args.sigma_max) if args.grid is not None else None
            return smooth_segmentation(args.model, args.sigma, localized=localized, **options)
        if args.task == "video":
            from .video import smooth as smooth_video

            return smooth_video(args.model, args.sigma, **options)
        from .sampling.methods import Hierarchical
        from .smoothing import smooth

        hierarchical = Hierarchical(args.hierarchical_p, args.indicator) if args.hierarchical_p is not None else None
        if args.indicator and named and args.checkpoint is None:
            options["model_kwargs"] = {"in_chans": 4}  # the colours and the noise indicator
        return smooth(args.model, args.sigma, hierarchical=hierarchical, **options)


def _train_data(args: argparse.Namespace, smoothed: object) -> tuple[Callable[[Path], object], object | None]:
    """How to read a data folder of the task (``root`` → data set) and the image augmentation (None for others)."""
    from .training import ClipFolderData, ImageFolderData, SegmentationFolderData

    spec = smoothed.spec  # type: ignore[attr-defined]
    if args.task == "segmentation":
        return lambda root: SegmentationFolderData(root, args.masks, spec.channels), None
    if args.task == "video":
        reading = _clip_reading(args)
        return lambda root: ClipFolderData(root, reading), None
    augmentation = _augmentation(args, tuple(spec.input_size[1:]) if spec.input_size else None)
    augment = augmentation.transform(spec.channels)  # type: ignore[attr-defined]
    return lambda root: ImageFolderData(root, augment), augmentation


def _held_out_items(data: object, args: argparse.Namespace) -> list[tuple[object, object]]:
    """Held-out items as ``certify`` reads them: (image path, class), (clip read as for training, class), or
    (image path, label map)."""
    from .training import SegmentationFolderData

    if isinstance(data, SegmentationFolderData):
        return [(path, data.label_map(index)) for index, path in enumerate(data.files)]
    if args.task == "video":
        reading = _clip_reading(args)
        return [(reading.read(path)[0], label) for path, label in data.items]  # type: ignore[attr-defined]
    return list(data.items)  # type: ignore[attr-defined]


def _train_and_held_out(args: argparse.Namespace, data: object, make_data: Callable[[Path], object]) -> tuple[object, object]:
    """(training data, held-out data): ``--val`` as it is, or ``--held-out`` items split off the training data."""
    from .training import held_out_split

    if args.val is not None:
        return data, make_data(args.val)
    train_indices, held_indices = held_out_split(len(data), args.held_out, args.seed)  # type: ignore[arg-type]
    return data.subset(train_indices), data.subset(held_indices)  # type: ignore[attr-defined]


def _print_held_out(summary: object, count: int, args: argparse.Namespace, checkpoint: Path, sigma: float) -> None:
    from .runs.summaries import format_summaries

    print(f"Held-out data ({count} items), n0={args.certify_n0}, n={args.certify_n}, alpha={args.alpha}:")
    if getattr(args, "task", "image") == "segmentation":
        from .segmentation.datasets import format_segmentation_summaries

        print(format_segmentation_summaries({"held out": summary}))  # type: ignore[dict-item]
    else:
        print(format_summaries({"held out": summary}))  # type: ignore[dict-item]
    print(f"wrote {args.out / 'held_out.tsv'}; certify with: vision-rs certify --model {checkpoint} --sigma {sigma:g} IMAGES")


def _print_trained(result: object) -> None:
    last = result.history[-1] if result.history else {}  # type: ignore[attr-defined]
    rate = last.get("inputs_per_second")
    epochs, before = result.epochs, result.resumed_from  # type: ignore[attr-defined]
    print(f"trained {epochs} epoch{'s' if epochs != 1 else ''} ({before} of them before this run); last epoch: loss "
          f"{last.get('loss', float('nan')):.4g}" + (f", {rate:.3g} inputs/s" if rate else "")
          + f"; wrote {result.checkpoint}")  # type: ignore[attr-defined]


def _train(args: argparse.Namespace) -> None:
    from .images import IMAGE_SUFFIXES
    from .training import certify_held_out, make_loss, smooth_checkpoint, train
    from .training.data import labelled_folder
    from .video import VIDEO_SUFFIXES

    _check_train_arguments(args)
    num_classes = args.num_classes
    if args.task != "segmentation":  # the classes come from the data's class folders (checked before any model loads)
        folders = labelled_folder(args.data, VIDEO_SUFFIXES if args.task == "video" else IMAGE_SUFFIXES, args.task)
        num_classes = num_classes or max(folders.class_to_idx.values()) + 1  # type: ignore[union-attr]
    copies = args.copies or (2 if args.loss == "consistency" else 1)
    loss = make_loss(args.loss, copies=copies, **({"lam": args.lam, "eta": args.eta} if args.loss == "consistency" else {}))
    smoothed = _smoothed_for_training(args, num_classes)
    make_data, augmentation = _train_data(args, smoothed)
    train_data, held_data = _train_and_held_out(args, make_data(args.data), make_data)
    record = {"augmentation": augmentation.describe() if augmentation is not None else None,  # type: ignore[attr-defined]
              "held_out": {"root": str(args.val) if args.val else None, "items": len(held_data)}}  # type: ignore[arg-type]
    with _one_process_group(smoothed.device):  # type: ignore[attr-defined]
        result = train(smoothed, train_data, args.out, loss=loss, config=_train_config(args),  # type: ignore[arg-type]
                       region=args.region, record=record)
        if _speaks_for_the_run():
            _print_trained(result)
        if args.certify == 0 or len(held_data) == 0:  # type: ignore[arg-type]
            return
        held_data = held_data.subset(range(min(args.certify, len(held_data))))  # type: ignore[attr-defined, arg-type]
        certified = smooth_checkpoint(result.checkpoint, device=smoothed.device, progress=False)  # type: ignore[attr-defined]
        summary = certify_held_out(certified, _held_out_items(held_data, args), args.out / "held_out.tsv",
                                   n0=args.certify_n0, n=args.certify_n, alpha=args.alpha, seed=args.seed,
                                   progress=not args.no_progress)
    if _speaks_for_the_run():
        _print_held_out(summary, len(held_data), args, result.checkpoint, certified.sigma)  # type: ignore[arg-type]


def _one_process_group(device: object) -> object:
    """Under torchrun, one process group for the whole command (training, then the held-out run): joined once."""
    from .runs.distributed import process_group, resolve_ranks

    return process_group(resolve_ranks(None), device)  # type: ignore[arg-type]


def _train_denoiser(args: argparse.Namespace) -> None:
    import torch

    from .images import read_image_file, to_unit_tensor
    from .models.denoising import load_denoiser
    from .models.embedded import DigitsDenoiser
    from .training import DenoiserMSE, ImageFolderData, Stability, certify_held_out, train_denoiser
    from .training.recipes import denoising_psnr

    _check_train_folders(args)
    if args.loss == "stability" and args.classifier is None:
        raise InvalidParameterError("--loss stability trains the denoiser through a frozen classifier: give --classifier MODEL")
    listed = ImageFolderData(args.data, transform=lambda image: image)  # refuses a folder without classes
    size = tuple(args.train_size) if args.train_size else tuple(read_image_file(listed.items[0][0]).shape[-2:])
    augmentation = _augmentation(args, size)
    augment = augmentation.transform(3)  # type: ignore[attr-defined]
    train_data, held_data = _train_and_held_out(args, ImageFolderData(args.data, augment),
                                                lambda root: ImageFolderData(root, augment))
    device = torch.device(rank_device_option(args) or ("cuda" if torch.cuda.is_available() else "cpu"))
    denoiser = load_denoiser(args.init, args.sigma).module if args.init is not None else DigitsDenoiser()
    record = {"augmentation": augmentation.describe(),  # type: ignore[attr-defined]
              "held_out": {"root": str(args.val) if args.val else None, "items": len(held_data)}}  # type: ignore[arg-type]
    with _one_process_group(device):
        result = train_denoiser(denoiser, train_data, args.out, sigma=args.sigma,  # type: ignore[arg-type]
                                loss=Stability() if args.loss == "stability" else DenoiserMSE(),
                                classifier=args.classifier, config=_train_config(args), device=device,
                                architecture={"name": "digits_denoiser"}, record=record)
        count = min(args.certify, len(held_data))  # type: ignore[arg-type]
        held_data = held_data.subset(range(count))  # type: ignore[attr-defined]
        if _speaks_for_the_run():
            _print_trained(result)
            if count:
                images = torch.stack([to_unit_tensor(path, 3) for path, _ in held_data.items])  # type: ignore[attr-defined]
                noisy, denoised = denoising_psnr(denoiser, images, args.sigma, seed=args.seed)
                print(f"Held-out PSNR over {count} images at sigma={args.sigma:g}: noisy {noisy:.2f} dB, denoised "
                      f"{denoised:.2f} dB")
        if args.classifier is None or count == 0:
            return
        from .smoothing import smooth

        smoothed = smooth(args.classifier, args.sigma, denoiser=result.checkpoint, device=device, progress=False)
        summary = certify_held_out(smoothed, held_data.items, args.out / "held_out.tsv", n0=args.certify_n0,  # type: ignore[attr-defined]
                                   n=args.certify_n, alpha=args.alpha, seed=args.seed, progress=not args.no_progress)
    if _speaks_for_the_run():
        _print_held_out(summary, count, args, result.checkpoint, args.sigma)


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """The shortest path suffix (in whole components) that tells each path from the others."""
    parts = [path.parts for path in paths]
    labels = []
    for own in parts:
        for depth in range(1, len(own) + 1):
            suffix = own[-depth:]
            if sum(other[-depth:] == suffix for other in parts) == 1 or depth == len(own):
                labels.append(str(Path(*suffix)))
                break
    return labels


def run_name(path: Path) -> str:
    """A results file's name without a trailing ``.tsv`` (the whole name otherwise: ``sigma_0.25`` stays whole)."""
    return path.name[:-4] if path.name.lower().endswith(".tsv") else path.name


def default_plot_path(tables: Sequence[Path]) -> Path:
    """Beside the first table, named after the runs' whole names."""
    names = [run_name(path) for path in tables]
    stem = names[0] if len(names) == 1 else "+".join(names) if len(names) <= 3 else f"{names[0]}+{len(names) - 1}_more"
    return tables[0].with_name(stem + ".png")


def _plot_title(tables: Sequence[Path]) -> str:
    """σ, n, α and the model of the runs, from their run records (what is shared; each run's own otherwise)."""
    from .errors import OutputPathError
    from .runs.files import jsonl_path, read_jsonl

    settings = []
    for path in tables:
        try:
            record, _ = read_jsonl(jsonl_path(path))
        except (OutputPathError, ValueError):
            record = None
        if record is None:
            continue
        classifier = record.get("classifier", {})
        model = classifier.get("model", {}).get("name", "?") if isinstance(classifier.get("model"), dict) else "?"
        settings.append(f"σ={classifier.get('sigma')}, n={record.get('n')}, α={record.get('alpha')}, model={model}")
    return "; ".join(dict.fromkeys(settings))


def _write_plot(target: Path, draw: Callable[[Path], Path]) -> None:
    """Draw a plot to ``target``, saying whether it replaced one; without matplotlib say the plot is skipped."""
    existed = target.exists()
    try:
        plot = draw(target)
    except MissingDependencyError as exc:
        print(f"plots skipped: {exc}")
        return
    print(f"{'replaced' if existed else 'wrote'} {plot}")


def _report_classification(runs_by_label: dict[str, Path], args: argparse.Namespace, plot_target: Path | None) -> None:
    from .runs.files import jsonl_path, read_certificates, read_rows
    from .runs.plots import plot_certified_accuracy
    from .runs.summaries import (
        accuracy_over_pixels_and_budget,
        format_pixel_budget_table,
        format_sample_use,
        format_summaries,
        sample_use,
        summarize,
    )

    runs = {label: read_rows(path) for label, path in runs_by_label.items()}
    print(format_summaries({label: summarize(rows, args.radii) for label, rows in runs.items()}))
    certificates = {label: read_certificates(jsonl_path(path)) if jsonl_path(path).is_file() else []
                    for label, path in runs_by_label.items()}
    uses = {label: use for label, pairs in certificates.items() if (use := sample_use([cert for _, cert in pairs]))}
    if any(use.sequential for use in uses.values()):  # a fixed-n run alone has nothing to say: it drew n
        print("\nSamples spent:\n" + "\n".join(format_sample_use(label, use) for label, use in uses.items()))
    for label, pairs in certificates.items():  # hierarchical runs: certified accuracy over changed pixels r and ε
        if pairs and pairs[0][1].method == "hierarchical" and any(lab >= 0 for lab, _ in pairs):
            pixels = sorted(pairs[0][1].radii) or [1]
            table = accuracy_over_pixels_and_budget(pairs, pixels, [r for r in args.radii if r > 0] or [0.0])
            print(f"\n{label}: certified accuracy against any change of at most r pixels with total L2 < ε")
            print(format_pixel_budget_table(table))
    if plot_target is None:
        return
    if not any(row.label >= 0 for rows in runs.values() for row in rows):
        print("no plot: no run has labelled rows, and certified accuracy needs true labels")
        return
    title = _plot_title(list(runs_by_label.values()))
    _write_plot(plot_target, lambda target: plot_certified_accuracy(runs, target, title=title))


def _report_segmentation(runs_by_label: dict[str, Path], plot_target: Path | None) -> None:
    from .runs.plots import plot_curves
    from .segmentation.datasets import format_segmentation_summaries, segmentation_curves, summarize_segmentation

    summaries = {label: summarize_segmentation(path) for label, path in runs_by_label.items()}
    if any(summary.labelled for summary in summaries.values()):
        print("Segmentation: certified pixel accuracy (certified correct pixels / labelled pixels) against the L2 budget ε")
    print(format_segmentation_summaries(summaries))
    if plot_target is None:
        return
    if not any(summary.labelled for summary in summaries.values()):
        print("no plot: no run has label maps (--masks), and certified pixel accuracy needs them")
        return
    curves = segmentation_curves(summaries)
    _write_plot(plot_target, lambda target: plot_curves(
        curves, target, xlabel="L2 budget ε ([0,1] pixel units)", ylabel="certified pixel accuracy", markers=True))


def _report(args: argparse.Namespace) -> None:
    from .errors import OutputPathError
    from .segmentation.datasets import is_segmentation_run

    labels = unique_labels(args.tables)
    for path in args.tables:
        if not path.is_file():
            raise OutputPathError(f"no such results file: {path}")
    segmentation = {label: path for label, path in zip(labels, args.tables) if is_segmentation_run(path)}
    classification = {label: path for label, path in zip(labels, args.tables) if label not in segmentation}
    both = bool(segmentation) and bool(classification)
    if classification:
        target = None if args.no_plot else args.plot or default_plot_path(list(classification.values()))
        _report_classification(classification, args, target)
    if segmentation:
        target = None if args.no_plot else args.plot or default_plot_path(list(segmentation.values()))
        if both and args.plot is not None:
            target = args.plot.with_name(args.plot.stem + "_segmentation" + args.plot.suffix)
        if classification:
            print()
        _report_segmentation(segmentation, target)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo, run_denoised_demo, run_video_demo
    from .models.devices import check_device
    from .runs.summaries import format_pixel_budget_table, format_summaries

    started = time.perf_counter()
    if args.video + args.segmentation + args.denoised > 1:
        raise InvalidParameterError("choose one of --video, --segmentation and --denoised")
    check_device(args.device)
    if args.segmentation:
        _segmentation_demo(args)
        print(f"done in {duration(time.perf_counter() - started)}")
        return
    if args.denoised:
        n0, n = args.n0 or 100, args.n or 1000
        result = run_denoised_demo(args.out_dir, n0=n0, n=n, alpha=args.alpha, seed=args.seed, limit=args.limit,
                                   device=args.device)
        print(f"Denoised smoothing on the embedded digits test split, n0={n0}, n={n}, alpha={args.alpha} "
              "(radii in [0,1] pixel units, L2):")
    elif args.video:
        n0, n, limit = args.n0 or 60, args.n or 600, args.limit or 30
        result = run_video_demo(args.out_dir, n0=n0, n=n, alpha=args.alpha, seed=args.seed, limit=limit, device=args.device)
        print(f"Embedded moving-digit clips (first {limit} test clips, mp4), {n0}+{n} base-classifier evaluations per "
              f"clip, alpha={args.alpha} (radii: L2 over all 16 frames, [0,1] pixel units):")
    else:
        n0, n = args.n0 or 100, args.n or 1000
        result = run_demo(args.out_dir, n0=n0, n=n, alpha=args.alpha, seed=args.seed, limit=args.limit, device=args.device)
        print(f"Embedded digits test split, n0={n0}, n={n}, alpha={args.alpha} (radii in [0,1] pixel units, L2):")
    print(format_summaries(result.summaries))
    if result.hierarchical:
        print("\nHierarchical model: certified accuracy against any change of at most r pixels with total L2 < ε:")
        print(format_pixel_budget_table(result.hierarchical))
    written = ", ".join(str(p) for p in result.tables.values())
    print(f"wrote {written}" + (f" and {result.plot}" if result.plot else ""))
    if result.plot_skipped:
        print(f"plots skipped: {result.plot_skipped}")
    print(f"done in {duration(time.perf_counter() - started)}")


def _segmentation_demo(args: argparse.Namespace) -> None:
    from .demo import run_segmentation_demo
    from .segmentation.datasets import format_segmentation_summaries

    n0, n, limit, alpha = args.n0 or 10, args.n or 100, args.limit or 12, args.alpha_seg
    result = run_segmentation_demo(args.out_dir, n0=n0, n=n, alpha=alpha, seed=args.seed, limit=limit, device=args.device)
    print(f"Embedded digit scenes (first {limit} test scenes, 64×64), {n0}+{n} draws per output cell of the 3×3 grid "
          f"(isotropic: 9× as many for the whole image), alpha={alpha}; certified pixel accuracy against the L2 budget ε:")
    print(format_segmentation_summaries(result.summaries))  # type: ignore[arg-type]
    for eps, winner in result.winners.items():
        print(f"ε={eps:g}: most certified pixels with {winner}")
    print(f"wrote {', '.join(str(p) for p in result.tables.values())}" + (f" and {result.plot}" if result.plot else ""))
    if result.plot_skipped:
        print(f"plots skipped: {result.plot_skipped}")


def _app(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .app.certify import AppLimits
    from .app.ui import AppConfig, launch_app
    from .models.devices import check_device

    if args.models is not None and not args.models.is_dir():
        raise InvalidParameterError(f"--models {args.models}: no such folder")
    check_device(args.device)
    config = AppConfig(host=args.host, port=args.port, models_dir=str(args.models) if args.models else None,
                       share=args.share, device=args.device, queue_size=args.queue_size, concurrency=args.concurrency,
                       limits=replace(AppLimits(), max_file_size=args.max_file_size))
    launch_app(config)


def _examples(args: argparse.Namespace) -> None:
    from .models.embedded.examples import write_examples
    from .runs.files import check_writable

    check_writable(args.out)
    written = write_examples(args.out, args.limit)
    counts = written.counts
    print(f"wrote {plural(counts['digits'], 'digit')} to {written.digits} (class folders 0-9), "
          f"{plural(counts['scenes'], 'scene')} to {written.scenes / 'images'} with their label maps in "
          f"{written.scenes / 'masks'}" + (f", {plural(counts['clips'], 'clip')} to {written.clips}" if counts["clips"] else ""))
    if written.clips_skipped:
        print(f"no clips: {written.clips_skipped}")
    runs = args.out / "runs"
    print("Try (outputs in their own folder, outside the inputs):")
    print(f"  vision-rs certify {written.digits} --model digits_cnn.sigma_0.25 --sigma 0.25 --n 1000 --out {runs / 'digits.tsv'}")
    print(f"  vision-rs certify-seg {written.scenes / 'images'} --masks {written.scenes / 'masks'} --model "
          f"digits_segnet.sigma_0.25 --sigma 0.25 --out {runs / 'scenes.tsv'}")
    if counts["clips"]:
        print(f"  vision-rs certify-video {written.clips} --model digits_c3d.sigma_0.25 --sigma 0.25 --n 1000 "
              f"--out {runs / 'clips.tsv'}")
    print(f"  vision-rs report {runs / 'digits.tsv'}")
    print(f"  vision-rs train {written.digits} --model digits_cnn --no-pretrained --sigma 0.25 --epochs 5 "
          f"--out {runs / 'trained'}")


def _models(args: argparse.Namespace) -> None:
    from .models.embedded import EMBEDDED_DENOISERS, describe_embedded_models

    print("Embedded models (shipped with vision-rs, offline):")
    print("| name | task | input | trained with σ | smooth with |")
    print("|---|---|---|---|---|")
    for row in describe_embedded_models():
        print(f"| {row['name']} | {row['task']} | {row['input']} | {row['sigma']} | {row['smoothing']} |")
    print()
    print("Embedded denoisers (denoiser=NAME, CLI --denoiser NAME; for models trained without noise):")
    print("| name | removes noise σ |")
    print("|---|---|")
    for name, info in EMBEDDED_DENOISERS.items():
        print(f"| {name} | {info['sigma']} |")
    print()
    print(models_help("the names in the tables above"))


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


def _rank() -> int | None:
    """This process's rank under torchrun (from its environment, without importing torch), else None."""
    rank, world_size = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    return int(rank) if rank.isdigit() and world_size.isdigit() and int(world_size) > 1 else None


def _speaks_for_the_run() -> bool:
    """Whether this process prints a run's results: always, but under torchrun only rank 0."""
    return _rank() in (None, 0)


def _name() -> str:
    """``vision-rs``, and under torchrun ``vision-rs[rank 1/4]``: which process of the run speaks."""
    rank = _rank()
    return "vision-rs" if rank is None else f"vision-rs[rank {rank}/{os.environ['WORLD_SIZE']}]"


def _configure_logging(verbose: bool) -> None:
    """vision-rs messages (resume points, warnings, time estimates) on stderr as ``vision-rs: ...``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{_name()}: %(message)s"))
    logger = logging.getLogger("vision_rs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _saved_rows(args: argparse.Namespace) -> str:
    """What an interrupt kept: the finished rows of the output file(s), which the same command resumes from."""
    from .runs.files import part_path, part_ranks

    tables = [args.out] if getattr(args, "out", None) else sorted(Path(args.out_dir).glob("*.tsv")) if args.command == "demo" else []
    files = [path for table in tables for path in [table, *(part_path(table, *part) for part in part_ranks(table))]
             if path.is_file()]  # under torchrun, the rows are in each rank's part files until rank 0 merges them
    if not files:
        return "no rows were saved"
    rows = sum(max(0, sum(1 for line in path.read_text().splitlines() if line.strip()) - 1) for path in files)
    where = tables[0] if len(tables) == 1 else f"{len(tables)} files in {tables[0].parent}"
    return f"{plural(rows, 'finished row')} {'is' if rows == 1 else 'are'} saved ({where}); run the same command again to resume"


def _hand_to_torchrun(error: BaseException) -> None:
    """Under torchrun, the error goes in the summary its agent prints (see :func:`vision_rs.runs.distributed.record_failure`)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from .runs.distributed import record_failure

        record_failure(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vision-rs`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (or the help)
        return int(exc.code) if isinstance(exc.code, int) else 2
    keep_freed_memory_in_process()
    _configure_logging(args.verbose)
    handlers = {"certify": _certify, "certify-video": _certify_video, "certify-seg": _certify_seg, "report": _report,
                "demo": _demo, "app": _app, "examples": _examples, "models": _models, "train": _train,
                "train-denoiser": _train_denoiser}
    try:
        with _image_pixel_limit(args):
            handlers[args.command](args)
    except VisionRSError as exc:
        print(f"{_name()}: error: {exc.cli_message}", file=sys.stderr)
        _hand_to_torchrun(exc)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_name()}: interrupted: {_saved_rows(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`vision-rs models | head -1`): stop quietly, as a killed pipe does
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush into the closed pipe raises nothing."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
