"""Train a small DDPM (diffusers UNet2DModel) on the embedded digits, to try Carlini et al.'s diffusion denoiser offline.

    python demos/train_diffusion.py                                  # 2000 steps: about 20 minutes on one busy core
    python demos/train_diffusion.py --steps 200 --out /tmp/ddpm      # a quick look
    vision-rs certify ./digits/ --model digits_cnn.clean --sigma 0.25 --denoiser vision-rs-ddpm-digits --out ddpm.tsv

An ordinary, unconditional DDPM: images scaled to [−1, 1], a timestep t drawn uniformly from the
scheduler's 1000 (β linear 1e-4 … 0.02), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) η, and the UNet learns to predict η
(mean squared error). It knows nothing of smoothing or of σ: vision-rs's ``DiffusionDenoiser`` picks the
timestep whose noise level matches 2σ when it is used, which is the off-the-shelf setting of Carlini et
al. (ICLR 2023). The training images are the embedded training split (1,437 digits, 32×32 RGB) with
random shifts and channel orders. Writes a diffusers pipeline folder (``unet/`` and ``scheduler/``, as
``DDPMPipeline.save_pretrained`` does) that ``--denoiser FOLDER`` and ``vision_rs.smooth(...,
denoiser=FOLDER)`` read; then reports the one-shot denoising PSNR on the test split at σ = 0.25 and 0.5
next to the embedded MSE-trained denoisers'. Same seed, same software → same weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vision_rs.models.denoising import load_denoiser
from vision_rs.models.diffusion import DiffusionDenoiser, require_diffusers
from vision_rs.models.embedded import digits_split

PSNR_SIGMAS = (0.25, 0.5)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift of up to 2 pixels and a random order of the colour channels (new colour pairs)."""
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
    order = torch.randperm(batch.shape[1], generator=generator)
    return torch.roll(batch, shifts=shift, dims=(2, 3))[:, order]


def tiny_unet(channels: tuple[int, ...] = (16, 32, 32)) -> torch.nn.Module:
    """A UNet2DModel for 32×32 RGB images: one ResNet block per level, no attention, GroupNorm of 8 groups."""
    diffusers = require_diffusers()
    return diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=channels,
        down_block_types=("DownBlock2D",) * len(channels), up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
    )


def train(steps: int, seed: int = 0, batch_size: int = 32, lr: float = 1e-3,
          channels: tuple[int, ...] = (16, 32, 32)) -> tuple[torch.nn.Module, object, float]:
    """Train the UNet for ``steps`` steps of ``batch_size``; return it (eval mode), its scheduler and the last
    100 steps' mean loss."""
    diffusers = require_diffusers()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, _ = digits_split("train")
    pixels = images.float() / 255.0
    unet, scheduler = tiny_unet(channels), diffusers.DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=min(0.3, max(0.05, 3 / steps)))
    losses: list[float] = []
    unet.train()
    for _ in range(steps):
        picked = torch.randint(0, len(pixels), (batch_size,), generator=generator)
        clean = augment(pixels[picked], generator) * 2 - 1
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(clean, noise, timesteps), timesteps, return_dict=False)[0], noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    unet.eval()
    tail = losses[-100:]
    return unet, scheduler, sum(tail) / len(tail)


@torch.inference_mode()
def denoising_psnr(denoiser: torch.nn.Module, sigma: float, seed: int = 1) -> float:
    """PSNR (dB, peak 1) of ``denoiser`` on the test split under one seeded draw of N(0, σ²) noise."""
    images, _ = digits_split("test")
    clean = images.float() / 255.0
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return float(-10 * torch.log10(F.mse_loss(denoiser(noisy).clamp(0, 1), clean)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32], help="UNet widths per level")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("vision-rs-ddpm-digits"), help="pipeline folder to write")
    args = parser.parse_args(argv)
    diffusers = require_diffusers()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    try:
        unet, scheduler, loss = train(args.steps, args.seed, args.batch_size, channels=tuple(args.channels))
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found
    seconds = time.perf_counter() - started
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(args.out))
    parameters = sum(p.numel() for p in unet.parameters())
    print(f"trained {parameters / 1e6:.2f} M parameters for {args.steps} steps of {args.batch_size} in {seconds:.0f} s "
          f"(last 100 steps' loss {loss:.4f}) -> {args.out}/unet, {args.out}/scheduler")
    print("one-shot denoising of the 360 test digits, PSNR in dB (noisy input: 12.04 at σ=0.25, 6.02 at σ=0.5):")
    for sigma in PSNR_SIGMAS:
        diffusion = DiffusionDenoiser(unet, scheduler, sigma)
        embedded = load_denoiser(f"digits_denoiser.sigma_{sigma:.2f}", sigma).module.eval()
        print(f"  σ={sigma:.2f}: diffusion (t={diffusion.timestep}) {denoising_psnr(diffusion, sigma):.2f}, "
              f"embedded MSE denoiser {denoising_psnr(embedded, sigma):.2f}")


if __name__ == "__main__":
    main()
