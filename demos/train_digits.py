"""Train the embedded digits CNNs with Gaussian noise augmentation, reproducibly and offline.

    python demos/train_digits.py                       # both σ, into the package's weights folder
    python demos/train_digits.py --sigma 0.25 --hierarchical-p 0.85   # the 4-channel hierarchical model
    python demos/train_digits.py --sigma 0                 # digits_cnn.clean: no noise (for denoised smoothing)
    python demos/train_digits.py --sigma 0.25 --epochs 1 --out /tmp/w

Each model sees the training split with fresh noise on [0, 1] pixels at every step
(Cohen et al.'s recipe: train with the noise you certify with; no clipping):
N(0, σ²) on every pixel, or, with ``--hierarchical-p``, on each pixel selected with
probability p, with the selection mask appended as a fourth input channel. Same seed,
same software → same weights. Writes ``<name>.safetensors`` (see
``vision_rs.models.embedded.EMBEDDED_MODELS``) with the training settings in its metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vision_rs.models.adapters import NormalizedClassifier, read_input_spec
from vision_rs.models.embedded import DigitsCNN, digits_split, weights_path


def noisy(batch: torch.Tensor, sigma: float, p: float | None, generator: torch.Generator) -> torch.Tensor:
    """The smoothing noise of certification on a batch [B, 3, H, W]: Gaussian, or hierarchical + indicator."""
    noise = sigma * torch.randn(batch.shape, generator=generator)
    if p is None:
        return batch + noise
    selected = (torch.rand((batch.shape[0], 1, *batch.shape[2:]), generator=generator) < p).float()
    return torch.cat([batch + noise * selected, selected], dim=1)


def model_name(sigma: float, p: float | None) -> str:
    if p is not None:
        return f"digits_cnn_hier.p_{p:.2f}_sigma_{sigma:.2f}"
    return "digits_cnn.clean" if sigma == 0 else f"digits_cnn.sigma_{sigma:.2f}"


def train(
    sigma: float, epochs: int, seed: int, p: float | None = None, batch_size: int = 64, lr: float = 2e-3
) -> tuple[DigitsCNN, dict[str, str]]:
    """Train one DigitsCNN with the noise of ``sigma`` (and ``p``); return it and a metadata dict."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(sigma, epochs, seed, p, batch_size, lr)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found


def _train(sigma: float, epochs: int, seed: int, p: float | None, batch_size: int, lr: float) -> tuple[DigitsCNN, dict[str, str]]:
    torch.manual_seed(seed)
    images, labels = digits_split("train")
    pixels = images.float() / 255.0
    model = DigitsCNN(in_chans=3 if p is None else 4)
    # noise on [0,1] pixels, normalisation inside; the hierarchical indicator passes through unnormalised
    classifier = NormalizedClassifier(model, read_input_spec(model), extra_channels=0 if p is None else 1)
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
            loss = F.cross_entropy(classifier(noisy(batch, sigma, p, generator)), labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()
    accuracy = noisy_test_accuracy(classifier, sigma, p, seed)
    metadata = {
        "sigma": str(sigma),
        "hierarchical_p": str(p),
        "epochs": str(epochs),
        "seed": str(seed),
        "torch": torch.__version__,
        "noisy_test_accuracy": f"{accuracy:.4f}",
    }
    return model, metadata


@torch.inference_mode()
def noisy_test_accuracy(classifier: torch.nn.Module, sigma: float, p: float | None, seed: int) -> float:
    """Accuracy of the base classifier on the test split under one draw of the training noise."""
    images, labels = digits_split("test")
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = noisy(images.float() / 255.0, sigma, p, generator)
    return float((classifier(inputs).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5],
                        help="noise std(s) in [0,1] pixel units; 0 trains without noise (digits_cnn.clean)")
    parser.add_argument("--hierarchical-p", type=float, default=None,
                        help="train the 4-channel hierarchical model with this selection probability")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the package's)")
    args = parser.parse_args(argv)
    for sigma in args.sigma:
        name = model_name(sigma, args.hierarchical_p)
        started = time.perf_counter()
        model, metadata = train(sigma, args.epochs, args.seed, args.hierarchical_p)
        target = (args.out / f"{name.replace('.', '_', 1)}.safetensors") if args.out else weights_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target), metadata=metadata)
        print(f"{name}: noisy test accuracy {metadata['noisy_test_accuracy']} "
              f"in {time.perf_counter() - started:.1f} s -> {target}")


if __name__ == "__main__":
    main()
