"""Train the embedded digits CNNs with the noise they are certified with, on the library's trainer, offline.

    python demos/train_digits.py                                      # σ = 0.25 and 0.5 into ./vision-rs-train/
    python demos/train_digits.py --sigma 0.25 --hierarchical-p 0.85   # the 4-channel hierarchical model
    python demos/train_digits.py --sigma 0                            # digits_cnn.clean: no noise (denoised smoothing)
    python demos/train_digits.py --sigma 0.5 --loss consistency       # Jeong & Shin's consistency regularisation
    python demos/train_digits.py --install                            # replace the package's shipped weights

A recipe on :mod:`vision_rs.training`: the model is smoothed as it will be certified (``vision_rs.smooth``, or
``hierarchical=`` with the indicator channel) and :func:`vision_rs.training.train` trains its network with that
noise (Cohen et al.'s recipe; no clipping) on the 1,437 training digits, each shifted by up to 2 pixels, with
AdamW and a cosine schedule from timm. Same seed, same software and thread count → same weights. Writes
``<out>/<name>/model.safetensors`` with its training record (``vision-rs certify --model`` reads it as it is).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

import vision_rs
from vision_rs.models.checkpoints import read_checkpoint_record
from vision_rs.models.embedded import DigitsCNN, DigitsDataset, weights_path
from vision_rs.training import Consistency, GaussianAugmentation, NoisyBaseClassifier, TrainConfig, train

CERTIFIED_WITH = 0.25
"""The σ the clean model is smoothed with behind a denoiser; it trains without noise."""


class ShiftedDigits(Dataset):
    """The training digits, each rolled by up to 2 pixels along each axis (drawn from torch's global generator,
    which the trainer seeds every epoch)."""

    def __init__(self) -> None:
        self.digits = DigitsDataset("train")
        self.labels = self.digits.labels

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.digits[index]
        shift = torch.randint(-2, 3, (2,)).tolist()
        return torch.roll(image, shifts=shift, dims=(1, 2)), label


def model_name(sigma: float, p: float | None) -> str:
    if p is not None:
        return f"digits_cnn_hier.p_{p:.2f}_sigma_{sigma:.2f}"
    return "digits_cnn.clean" if sigma == 0 else f"digits_cnn.sigma_{sigma:.2f}"


def schedule(epochs: int, seed: int, batch_size: int = 64, lr: float = 2e-3) -> TrainConfig:
    """AdamW, cosine decay after a warm-up of a tenth of the epochs."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=1e-4, warmup_epochs=epochs // 10,
                       seed=seed, progress=False)


def train_model(sigma: float, epochs: int, seed: int, p: float | None = None, loss: str = "gaussian",
                out: Path | None = None) -> tuple[DigitsCNN, dict]:
    """Train one DigitsCNN with the noise of ``sigma`` (and ``p``; σ = 0: no noise) into ``out`` (a temporary folder
    when None); return it and its training record."""
    torch.manual_seed(seed)
    model = DigitsCNN(in_chans=3 if p is None else 4)
    hierarchical = vision_rs.Hierarchical(p, indicator=True) if p is not None else None
    smoothed = vision_rs.smooth(model, sigma=sigma or CERTIFIED_WITH, hierarchical=hierarchical, device="cpu",
                                progress=False)
    objective = Consistency() if loss == "consistency" else GaussianAugmentation()
    with tempfile.TemporaryDirectory() as scratch:
        result = train(smoothed, ShiftedDigits(), out or scratch, loss=objective, config=schedule(epochs, seed),
                       noise=sigma > 0)
        return model.eval(), read_checkpoint_record(result.checkpoint)


@torch.no_grad()
def noisy_test_accuracy(model: DigitsCNN, sigma: float, p: float | None, seed: int) -> float:
    """Accuracy of the base classifier on the 360 test digits under one draw of its training noise."""
    images, labels = DigitsDataset("test").images, DigitsDataset("test").labels
    hierarchical = vision_rs.Hierarchical(p, indicator=True) if p is not None else None
    smoothed = vision_rs.smooth(model, sigma=sigma or CERTIFIED_WITH, hierarchical=hierarchical, device="cpu",
                                progress=False)
    noisy = NoisyBaseClassifier(smoothed, seed=seed + 1, noise_free=sigma == 0).eval()
    return float((noisy(images.float() / 255.0)[0].argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5],
                        help="noise std(s) in [0,1] pixel units; 0 trains without noise (digits_cnn.clean)")
    parser.add_argument("--hierarchical-p", type=float, default=None,
                        help="train the 4-channel hierarchical model with this selection probability")
    parser.add_argument("--loss", choices=["gaussian", "consistency"], default="gaussian")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("vision-rs-train"), help="folder for the runs")
    parser.add_argument("--install", action="store_true", help="copy the weights into the package (the embedded models)")
    args = parser.parse_args(argv)
    for sigma in args.sigma:
        name = model_name(sigma, args.hierarchical_p)
        started = time.perf_counter()
        folder = args.out / name.replace(".", "_", 1)
        model, _ = train_model(sigma, args.epochs, args.seed, args.hierarchical_p, args.loss, folder)
        accuracy = noisy_test_accuracy(model, sigma, args.hierarchical_p, args.seed)
        print(f"{name}: noisy test accuracy {accuracy:.4f} in {time.perf_counter() - started:.1f} s -> "
              f"{folder / 'model.safetensors'}")
        if args.install:
            shutil.copyfile(folder / "model.safetensors", weights_path(name))
            print(f"  installed as {weights_path(name)}")


if __name__ == "__main__":
    main()
