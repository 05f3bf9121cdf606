"""Train the embedded digit-scene segmentation networks with the noise they are certified with, reproducibly.

    python demos/train_segmentation.py                          # both models, into the package's weights folder
    python demos/train_segmentation.py --model localized --loss cell --epochs 1 --out /tmp/w

Two models (``vision_rs.models.embedded.segnet.EMBEDDED_SEG_MODELS``), each on the 2,000 train scenes with
fresh noise on [0, 1] pixels at every step (no clipping; the normalisation is inside the model):

* isotropic: N(0, σ²) on every pixel, σ = 0.25;
* localized: for each training scene a random output cell k of the 3×3 grid, and noise with the
  σ map of k (σ_min on cell k growing to σ_max on the farthest cells), the distribution the
  certificate samples for cell k. ``--loss mask`` scores every pixel, ``--loss cell`` only the
  pixels of cell k (the only ones certification keeps from that distribution).

Same seed, same software and thread count → same weights. Writes ``<name>.safetensors`` with the
training settings and the noisy test metrics in its metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vision_rs.models.adapters import NormalizedClassifier, read_input_spec
from vision_rs.models.embedded.scenes import BACKGROUND, NUM_SEG_CLASSES, scenes_split
from vision_rs.models.embedded.segnet import EMBEDDED_SEG_MODELS, DigitsSegNet, segmentation_weights_path
from vision_rs.segmentation.localized import Localized, cell_map, sigma_map

MODELS = {"isotropic": "digits_segnet.sigma_0.25", "localized": "digits_segnet_localized.grid_3x3_sigma_0.25_1.00"}


def noise_maps(noise: dict, size: int) -> torch.Tensor:
    """Per-pixel noise std for each distribution to draw from: [1, H, W] (isotropic) or [cells, H, W] (localized)."""
    if "sigma" in noise:
        return torch.full((1, size, size), float(noise["sigma"]))
    localized = Localized(**noise["localized"])
    return torch.stack([torch.from_numpy(sigma_map(localized, size, size, cell)).float() for cell in range(localized.cells)])


def region_masks(noise: dict, size: int) -> torch.Tensor:
    """Pixels each distribution certifies: all of them (isotropic), or output cell k for the k-th σ map. bool [D, H, W]."""
    if "sigma" in noise:
        return torch.ones((1, size, size), dtype=torch.bool)
    localized = Localized(**noise["localized"])
    cells = torch.from_numpy(cell_map(localized, size, size))
    return cells[None] == torch.arange(localized.cells)[:, None, None]


def train(
    noise: dict, epochs: int, seed: int, loss_region: str = "mask", train_scenes: int | None = None,
    batch_size: int = 16, lr: float = 1e-2,
) -> tuple[DigitsSegNet, dict[str, str]]:
    """Train one DigitsSegNet with ``noise`` ({"sigma": σ} or {"localized": {...}}); return it and its metadata."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(noise, epochs, seed, loss_region, train_scenes, batch_size, lr)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found


def _train(
    noise: dict, epochs: int, seed: int, loss_region: str, train_scenes: int | None, batch_size: int, lr: float
) -> tuple[DigitsSegNet, dict[str, str]]:
    if loss_region not in ("mask", "cell"):
        raise ValueError(f"loss_region must be 'mask' or 'cell', got {loss_region!r}")
    torch.manual_seed(seed)
    images, label_maps = scenes_split("train")
    images, label_maps = images[:train_scenes], label_maps[:train_scenes]
    pixels = images.float() / 255.0
    size = pixels.shape[-1]
    maps, regions = noise_maps(noise, size), region_masks(noise, size)
    model = DigitsSegNet()
    segmenter = NormalizedClassifier(model, read_input_spec(model))  # noise on [0,1] pixels, normalisation inside
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(pixels) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    segmenter.train()
    for _ in range(epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(pixels), batch_size):
            chosen = order[start : start + batch_size]
            which = torch.randint(0, maps.shape[0], (len(chosen),), generator=generator)
            batch = pixels[chosen] + torch.randn(pixels[chosen].shape, generator=generator) * maps[which][:, None]
            losses = F.cross_entropy(segmenter(batch), label_maps[chosen], reduction="none")
            keep = regions[which] if loss_region == "cell" else torch.ones_like(losses, dtype=torch.bool)
            loss = losses[keep].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    segmenter.eval()
    metadata = {
        "noise": json.dumps(noise),
        "loss_region": loss_region,
        "epochs": str(epochs),
        "seed": str(seed),
        "train_scenes": str(len(pixels)),
        "batch_size": str(batch_size),
        "lr": str(lr),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }
    return model, metadata


@torch.inference_mode()
def noisy_test_metrics(model: DigitsSegNet, noise: dict, seed: int, test_scenes: int | None = None) -> dict[str, float]:
    """Pixel accuracy and mIoU (over the 11 classes, pooled over the test scenes) under one draw of the noise.

    Localized: every output cell is predicted from its own draw (its σ map), as certification does.
    Also the accuracy on digit pixels only and the clean (noise-free) pixel accuracy.
    """
    segmenter = NormalizedClassifier(model.eval(), read_input_spec(model))
    images, label_maps = scenes_split("test")
    images, label_maps = images[:test_scenes], label_maps[:test_scenes]
    pixels = images.float() / 255.0
    maps, regions = noise_maps(noise, pixels.shape[-1]), region_masks(noise, pixels.shape[-1])
    generator = torch.Generator().manual_seed(seed + 1)
    predicted = torch.zeros_like(label_maps)
    for sigmas, region in zip(maps, regions):
        noisy = pixels + torch.randn(pixels.shape, generator=generator) * sigmas
        predicted[:, region] = segmenter(noisy).argmax(1)[:, region]
    clean = segmenter(pixels).argmax(1)
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
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the package's)")
    args = parser.parse_args(argv)
    for kind in ("isotropic", "localized") if args.model == "both" else (args.model,):
        name = MODELS[kind]
        settings = EMBEDDED_SEG_MODELS[name]
        noise = {"sigma": settings["sigma"]} if "sigma" in settings else {"localized": settings["localized"]}
        started = time.perf_counter()
        model, metadata = train(noise, args.epochs, args.seed, args.loss, args.train_scenes)
        metrics = noisy_test_metrics(model, noise, args.seed, args.test_scenes)
        metadata.update({key: f"{value:.4f}" for key, value in metrics.items()}, test_scenes=str(args.test_scenes or "all"))
        target = args.out / str(settings["file"]) if args.out else segmentation_weights_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target), metadata=metadata)
        scores = ", ".join(f"{k} {v}" for k, v in metadata.items() if k.startswith(("noisy", "clean")))
        print(f"{name} (loss on {args.loss}): {scores} in {time.perf_counter() - started:.0f} s -> {target}")


if __name__ == "__main__":
    main()
