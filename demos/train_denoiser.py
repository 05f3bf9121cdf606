"""Train the embedded digits denoisers (one per σ), reproducibly and offline.

    python demos/train_denoiser.py                     # σ = 0.25 and 0.5, into the package's weights folder
    python demos/train_denoiser.py --sigma 0.25 --epochs 1 --out /tmp/w

Each denoiser sees the training split of the embedded digits with fresh Gaussian noise
N(0, σ²) on [0, 1] pixels at every step (no clipping, as in certification) and learns to
return the clean image: mean squared error, no classifier involved, so any classifier can
use it (the "off-the-shelf" setting of denoised smoothing, Salman et al. 2020). Same seed,
same software → same weights. Writes ``digits_denoiser_sigma_<σ>.safetensors`` (see
``vision_rs.models.embedded.EMBEDDED_DENOISERS``) with the training settings in its metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vision_rs.models.embedded import digits_split
from vision_rs.models.embedded.denoiser import DigitsDenoiser, denoiser_weights_path


def denoiser_name(sigma: float) -> str:
    return f"digits_denoiser.sigma_{sigma:.2f}"


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift of up to 2 pixels and a random order of the colour channels (new colour pairs)."""
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
    order = torch.randperm(batch.shape[1], generator=generator)
    return torch.roll(batch, shifts=shift, dims=(2, 3))[:, order]


def train(
    sigma: float, epochs: int, seed: int, limit: int | None = None, batch_size: int = 64, lr: float = 2e-3
) -> tuple[DigitsDenoiser, dict[str, str]]:
    """Train one DigitsDenoiser to remove N(0, σ²) noise (on the first ``limit`` training images, default all);
    return it and a metadata dict."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(sigma, epochs, seed, limit, batch_size, lr)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found


def _train(
    sigma: float, epochs: int, seed: int, limit: int | None, batch_size: int, lr: float
) -> tuple[DigitsDenoiser, dict[str, str]]:
    torch.manual_seed(seed)
    images, _ = digits_split("train")
    pixels = images[:limit].float() / 255.0
    model = DigitsDenoiser()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(pixels) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(pixels), batch_size):
            clean = augment(pixels[order[start : start + batch_size]], generator)
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            loss = F.mse_loss(model(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    metadata = {
        "sigma": str(sigma),
        "epochs": str(epochs),
        "seed": str(seed),
        "torch": torch.__version__,
        "test_psnr_db": f"{test_psnr(model, sigma, seed):.2f}",
    }
    return model, metadata


@torch.inference_mode()
def test_psnr(model: torch.nn.Module, sigma: float, seed: int) -> float:
    """PSNR (dB, peak 1) of the denoised test split under one draw of the training noise."""
    images, _ = digits_split("test")
    clean = images.float() / 255.0
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1))
    return float(-10 * torch.log10(F.mse_loss(model(noisy), clean)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5], help="noise std(s) in [0,1] pixel units")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT training images (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the package's)")
    args = parser.parse_args(argv)
    for sigma in args.sigma:
        name = denoiser_name(sigma)
        started = time.perf_counter()
        model, metadata = train(sigma, args.epochs, args.seed, args.limit)
        target = (args.out / f"{name.replace('.', '_', 1)}.safetensors") if args.out else denoiser_weights_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target), metadata=metadata)
        print(f"{name}: test PSNR {metadata['test_psnr_db']} dB (noisy: {-20 * torch.log10(torch.tensor(sigma)):.2f} dB) "
              f"in {time.perf_counter() - started:.1f} s -> {target}")


if __name__ == "__main__":
    main()
