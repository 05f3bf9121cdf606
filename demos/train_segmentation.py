"""Train the embedded digit-scene segmentation networks with the noise they are certified with, on the library's trainer.

    python demos/train_segmentation.py                          # both models into ./vision-rs-train/
    python demos/train_segmentation.py --model localized --loss cell --epochs 1 --train-scenes 64
    python demos/train_segmentation.py --install                # replace the package's shipped weights

A recipe on :mod:`vision_rs.training`: each model (``vision_rs.models.embedded.segnet.EMBEDDED_SEG_MODELS``) is
smoothed as it will be certified (``vision_rs.segmentation.smooth``) and :func:`vision_rs.training.train` trains
its network on the 2,000 train scenes with that noise on [0, 1] pixels at every step (no clipping; the
normalisation is inside the base model):

* isotropic: N(0, σ²) on every pixel, σ = 0.25;
* localized: for each training scene a random output cell k of the 3×3 grid, and noise with the σ map of k
  (σ_min on cell k growing to σ_max on the farthest cells), the distribution the certificate samples for cell k.
  ``--loss mask`` scores every pixel, ``--loss cell`` only the pixels of cell k (the only ones certification
  keeps from that distribution).

Same seed, same software and thread count → same weights. Prints the noisy test metrics.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from vision_rs.models.checkpoints import read_checkpoint_record
from vision_rs.models.embedded.scenes import BACKGROUND, NUM_SEG_CLASSES, scenes_split
from vision_rs.models.embedded.segnet import EMBEDDED_SEG_MODELS, DigitsSegNet, segmentation_weights_path
from vision_rs.segmentation import Localized
from vision_rs.segmentation import smooth as smooth_segmentation
from vision_rs.training import NoisyBaseClassifier, TrainConfig, train

MODELS = {"isotropic": "digits_segnet.sigma_0.25", "localized": "digits_segnet_localized.grid_3x3_sigma_0.25_1.00"}


def smoothed_segnet(model: DigitsSegNet, noise: dict) -> object:
    """``model`` smoothed with ``noise`` ({"sigma": σ} or {"localized": {grid, sigma_min, sigma_max}})."""
    if "sigma" in noise:
        return smooth_segmentation(model, float(noise["sigma"]), device="cpu", progress=False)
    return smooth_segmentation(model, localized=Localized(**noise["localized"]), device="cpu", progress=False)


def train_model(noise: dict, epochs: int, seed: int, loss_region: str = "mask", train_scenes: int | None = None,
                batch_size: int = 16, lr: float = 1e-2, out: Path | None = None) -> tuple[DigitsSegNet, dict]:
    """Train one DigitsSegNet with ``noise`` into ``out`` (a temporary folder when None); return it and its record."""
    torch.manual_seed(seed)
    model = DigitsSegNet()
    images, label_maps = scenes_split("train")
    data = TensorDataset(images[:train_scenes], label_maps[:train_scenes])
    # a quarter of the epochs warming up: at these learning rates a cold start cost the localized segnet 0.26 mIoU
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=1e-4, warmup_epochs=epochs // 4,
                         seed=seed, progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        result = train(smoothed_segnet(model, noise), data, out or scratch, config=config,  # type: ignore[arg-type]
                       region="cell" if loss_region == "cell" else "mask")
        return model.eval(), read_checkpoint_record(result.checkpoint)


@torch.no_grad()
def noisy_test_metrics(model: DigitsSegNet, noise: dict, seed: int, test_scenes: int | None = None) -> dict[str, float]:
    """Pixel accuracy and mIoU (over the 11 classes, pooled over the test scenes) under one draw of the noise.

    Localized: every output cell is predicted from its own draw (its σ map), as certification does.
    Also the accuracy on digit pixels only and the clean (noise-free) pixel accuracy.
    """
    smoothed = smoothed_segnet(model.eval(), noise)
    noisy = NoisyBaseClassifier(smoothed, seed=seed + 1).eval()  # type: ignore[arg-type]
    images, label_maps = scenes_split("test")
    pixels, label_maps = images[:test_scenes].float() / 255.0, label_maps[:test_scenes]
    predicted = torch.zeros_like(label_maps)
    for cell in range(noisy.cells):
        cells = torch.full((len(pixels),), cell) if noisy.localized else None
        scores = noisy(pixels, cells=cells)[0]
        inside = noisy.cell_targets(torch.zeros_like(label_maps), cells) == 0
        predicted[inside] = scores.argmax(1)[inside]
    clean = smoothed.base(pixels).argmax(1)  # type: ignore[attr-defined]
    confusion = torch.bincount(label_maps.flatten() * NUM_SEG_CLASSES + predicted.flatten(),
                               minlength=NUM_SEG_CLASSES**2).reshape(NUM_SEG_CLASSES, NUM_SEG_CLASSES).double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return {
        "noisy_pixel_accuracy": float((predicted == label_maps).double().mean()),
        "noisy_miou": float((confusion.diag()[union > 0] / union[union > 0]).mean()),
        "noisy_digit_pixel_accuracy": float((predicted == label_maps)[label_maps != BACKGROUND].double().mean()),
        "clean_pixel_accuracy": float((clean == label_maps).double().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["isotropic", "localized", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--loss", choices=["mask", "cell"], default="mask", help="pixels the loss scores (localized)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=None, help="use only the first N train scenes")
    parser.add_argument("--test-scenes", type=int, default=None, help="score only the first N test scenes")
    parser.add_argument("--out", type=Path, default=Path("vision-rs-train"), help="folder for the runs")
    parser.add_argument("--install", action="store_true", help="copy the weights into the package (the embedded models)")
    args = parser.parse_args(argv)
    for kind in ("isotropic", "localized") if args.model == "both" else (args.model,):
        name = MODELS[kind]
        settings = EMBEDDED_SEG_MODELS[name]
        noise = {"sigma": settings["sigma"]} if "sigma" in settings else {"localized": settings["localized"]}
        folder = args.out / name.replace(".", "_", 1)
        started = time.perf_counter()
        model, _ = train_model(noise, args.epochs, args.seed, args.loss, args.train_scenes, out=folder)
        metrics = noisy_test_metrics(model, noise, args.seed, args.test_scenes)
        scores = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
        print(f"{name} (loss on {args.loss}): {scores} in {time.perf_counter() - started:.0f} s -> "
              f"{folder / 'model.safetensors'}")
        if args.install:
            shutil.copyfile(folder / "model.safetensors", segmentation_weights_path(name))
            print(f"  installed as {segmentation_weights_path(name)}")


if __name__ == "__main__":
    main()
