"""Train the embedded digits CNNs with Gaussian noise augmentation, reproducibly and offline.

    python demos/train_digits.py                       # both σ, into the package's weights folder
    python demos/train_digits.py --sigma 0.25 --epochs 1 --out /tmp/w

Each model sees the training split with fresh N(0, σ²) noise on [0, 1] pixels at
every step (Cohen et al.'s recipe: train with the noise you certify with; no
clipping). Same seed, same software → same weights. Writes
``digits_cnn_sigma_<σ>.safetensors`` with the training settings in its metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vision_rs.embedded import DigitsCNN, digits_split, weights_path
from vision_rs.models import NormalizedClassifier, read_input_spec


def train(sigma: float, epochs: int, seed: int, batch_size: int = 64, lr: float = 2e-3) -> tuple[DigitsCNN, dict[str, str]]:
    """Train one DigitsCNN with noise std ``sigma``; return it and a metadata dict."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    images, labels = digits_split("train")
    pixels = images.float() / 255.0
    model = DigitsCNN()
    classifier = NormalizedClassifier(model, read_input_spec(model))  # noise on [0,1] pixels, normalisation inside
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(labels) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            chosen = order[start : start + batch_size]
            batch = pixels[chosen]
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=shift, dims=(2, 3))
            noisy = batch + sigma * torch.randn(batch.shape, generator=generator)
            loss = F.cross_entropy(classifier(noisy), labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()
    accuracy = noisy_test_accuracy(classifier, sigma, seed)
    metadata = {
        "sigma": str(sigma),
        "epochs": str(epochs),
        "seed": str(seed),
        "torch": torch.__version__,
        "noisy_test_accuracy": f"{accuracy:.4f}",
    }
    return model, metadata


@torch.inference_mode()
def noisy_test_accuracy(classifier: torch.nn.Module, sigma: float, seed: int) -> float:
    """Accuracy of the base classifier on the test split under one draw of N(0, σ²) noise."""
    images, labels = digits_split("test")
    generator = torch.Generator().manual_seed(seed + 1)
    pixels = images.float() / 255.0
    noisy = pixels + sigma * torch.randn(pixels.shape, generator=generator)
    return float((classifier(noisy).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5], help="noise std(s) in [0,1] pixel units")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the package's)")
    args = parser.parse_args(argv)
    for sigma in args.sigma:
        name = f"digits_cnn.sigma_{sigma:.2f}"
        started = time.perf_counter()
        model, metadata = train(sigma, args.epochs, args.seed)
        target = (args.out / f"digits_cnn_sigma_{sigma:.2f}.safetensors") if args.out else weights_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target), metadata=metadata)
        print(f"{name}: noisy test accuracy {metadata['noisy_test_accuracy']} "
              f"in {time.perf_counter() - started:.1f} s -> {target}")


if __name__ == "__main__":
    main()
