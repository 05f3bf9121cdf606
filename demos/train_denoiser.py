"""Train the embedded digits denoisers (one per σ) on the library's trainer, reproducibly and offline.

    python demos/train_denoiser.py                          # σ = 0.25 and 0.5 into ./vision-rs-train/
    python demos/train_denoiser.py --sigma 0.25 --epochs 1 --limit 64
    python demos/train_denoiser.py --install                # replace the package's shipped denoisers

A recipe on :func:`vision_rs.training.train_denoiser`: each denoiser sees the training digits (shifted by up to 2
pixels, colour channels in a random order) with fresh Gaussian noise N(0, σ²) on [0, 1] pixels at every step (no
clipping, as in certification) and learns to return the clean image: mean squared error, no classifier involved,
so any classifier can use it (the "off-the-shelf" setting of Salman et al. 2020). Same seed, same software →
same weights. Writes ``<out>/<name>/model.safetensors`` with its record; use it with ``--denoiser``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vision_rs.models.checkpoints import read_checkpoint_record
from vision_rs.models.embedded import DigitsDataset
from vision_rs.models.embedded.denoiser import DigitsDenoiser, denoiser_weights_path
from vision_rs.training import TrainConfig, train_denoiser
from vision_rs.training.recipes import denoising_psnr


def denoiser_name(sigma: float) -> str:
    return f"digits_denoiser.sigma_{sigma:.2f}"


class RecolouredDigits(Dataset):
    """Training digits shifted by up to 2 pixels with their colour channels in a random order (new colour pairs);
    torch's global generator draws both (the trainer seeds it every epoch)."""

    def __init__(self, limit: int | None = None) -> None:
        digits = DigitsDataset("train")
        self.images, self.labels = digits.images[:limit], digits.labels[:limit]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        shift = torch.randint(-2, 3, (2,)).tolist()
        order = torch.randperm(3)
        return torch.roll(self.images[index], shifts=shift, dims=(1, 2))[order], int(self.labels[index])


def train_model(sigma: float, epochs: int, seed: int, limit: int | None = None, out: Path | None = None,
                batch_size: int = 64, lr: float = 2e-3) -> tuple[DigitsDenoiser, dict]:
    """Train one DigitsDenoiser to remove N(0, σ²) noise (on the first ``limit`` training images, default all) into
    ``out`` (a temporary folder when None); return it and its record."""
    torch.manual_seed(seed)
    model = DigitsDenoiser()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=1e-4, warmup_epochs=epochs // 10,
                         seed=seed, progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        result = train_denoiser(model, RecolouredDigits(limit), out or scratch, sigma=sigma, config=config,
                                architecture={"name": "digits_denoiser"})
        return model.eval(), read_checkpoint_record(result.checkpoint)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5], help="noise std(s) in [0,1] pixel units")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT training images (default: all)")
    parser.add_argument("--out", type=Path, default=Path("vision-rs-train"), help="folder for the runs")
    parser.add_argument("--install", action="store_true", help="copy the weights into the package (embedded denoisers)")
    args = parser.parse_args(argv)
    for sigma in args.sigma:
        name = denoiser_name(sigma)
        started = time.perf_counter()
        folder = args.out / name.replace(".", "_", 1)
        model, _ = train_model(sigma, args.epochs, args.seed, args.limit, folder)
        noisy, denoised = denoising_psnr(model, DigitsDataset("test").images, sigma, seed=args.seed + 1)
        print(f"{name}: test PSNR {denoised:.2f} dB (noisy: {noisy:.2f} dB) in {time.perf_counter() - started:.1f} s "
              f"-> {folder / 'model.safetensors'}")
        if args.install:
            shutil.copyfile(folder / "model.safetensors", denoiser_weights_path(name))
            print(f"  installed as {denoiser_weights_path(name)}")


if __name__ == "__main__":
    main()
