"""Train the embedded 3D CNN (DigitsC3D) on the moving-digit clips with Gaussian noise, reproducibly and offline.

    python demos/train_video.py                          # σ = 0.25, into the package's weights folder
    python demos/train_video.py --epochs 1 --limit 128 --out /tmp/w

The model sees the training digits moving along fresh paths every epoch (the
clip generator of ``vision_rs.models.embedded.clips`` with seeds (seed, epoch, digit)),
played backwards half the time, with fresh N(0, σ²) noise on every [0, 1]
pixel of the whole clip at every step (Cohen et al.'s recipe: train with the
noise you certify with; no clipping), normalised inside the classifier after
the noise. It trains on the uint8 clips themselves, not on clips decoded from
mp4: the mp4v round trip moves a pixel by about 0.013 on average, far below
σ, and training on the tensors keeps the weights independent of the FFmpeg
build. Same seed, same software → same weights. Writes
``digits_c3d_sigma_<σ>.safetensors`` (see
``vision_rs.models.embedded.videonet.EMBEDDED_VIDEO_MODELS``) with the settings in its
metadata, then reports accuracy on the test clips: DigitsC3D clean and under
one noise draw, on the uint8 clips and on the same clips written to mp4 and
read back with ``read_clip``, and the embedded digits CNN run frame by frame
(logits averaged over frames) on the same noisy clips.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vision_rs.models.embedded import digits_split, load_embedded_model
from vision_rs.models.embedded.clips import CLIP_FRAMES, bounce_path, digit_clips, moving_clip, write_clips
from vision_rs.models.embedded.videonet import DigitsC3D, video_weights_path


class NormalizedClipClassifier(nn.Module):
    """``model((x - mean) / std)`` for clips ``[B, C, T, H, W]`` of [0, 1] pixels, mean/std from ``pretrained_cfg``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1, 1), persistent=False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model((clips - self.mean) / self.std)


class FramewiseClassifier(nn.Module):
    """An image classifier ``[N, C, H, W] → [N, K]`` on every frame of clips ``[B, C, T, H, W]``, logits averaged over T."""

    def __init__(self, image_model: nn.Module) -> None:
        super().__init__()
        self.image_model = image_model
        cfg = image_model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, -1, 1, 1), persistent=False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = clips.shape
        images = clips.transpose(1, 2).reshape(batch * frames, channels, height, width)
        logits = self.image_model((images - self.mean) / self.std)
        return logits.view(batch, frames, -1).mean(dim=1)


def as_model_input(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips [B, T, C, H, W] → float [B, C, T, H, W] in [0, 1] (the layout of torchvision's video models)."""
    return clips.permute(0, 2, 1, 3, 4).to(torch.float32).div_(255.0)


def train(
    sigma: float, epochs: int, seed: int, limit: int | None = None, batch_size: int = 32, lr: float = 3e-3
) -> tuple[DigitsC3D, dict[str, str]]:
    """Train one DigitsC3D with N(0, σ²) noise on its first ``limit`` training clips (all when None)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(sigma, epochs, seed, limit, batch_size, lr)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found


def moving_batch(images: torch.Tensor, chosen: torch.Tensor, seed: Sequence[int]) -> torch.Tensor:
    """uint8 clips [B, T, C, H, W] of the chosen training digits along fresh paths fixed by ``seed``."""
    return torch.from_numpy(np.stack([
        moving_clip(images[i].numpy(), bounce_path(CLIP_FRAMES, (*seed, int(i)))) for i in chosen
    ]))


def _train(sigma: float, epochs: int, seed: int, limit: int | None, batch_size: int, lr: float) -> tuple[DigitsC3D, dict[str, str]]:
    torch.manual_seed(seed)
    images, labels = digits_split("train")
    images, labels = images[:limit], labels[:limit]
    model = DigitsC3D()
    classifier = NormalizedClipClassifier(model)  # noise on [0,1] pixels, normalisation inside
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(labels) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            chosen = order[start : start + batch_size]
            batch = as_model_input(moving_batch(images, chosen, (seed, epoch)))
            if bool(torch.rand((), generator=generator) < 0.5):
                batch = batch.flip(2)  # the digit played backwards is the same digit
            noisy = batch + sigma * torch.randn(batch.shape, generator=generator)
            loss = F.cross_entropy(classifier(noisy), labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()
    metadata = {
        "sigma": str(sigma),
        "epochs": str(epochs),
        "seed": str(seed),
        "train_clips": str(len(labels)),
        "batch_size": str(batch_size),
        "lr": str(lr),
        "noise": "gaussian on [0,1] pixels of the whole clip, no clipping, normalisation after the noise",
        "input": "[B, 3, 16, 32, 32] moving-digit clips, fresh paths each epoch (uint8 tensors, not decoded mp4)",
        "torch": torch.__version__,
    }
    return model, metadata


@torch.inference_mode()
def accuracy(classifier: nn.Module, clips: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None) -> float:
    """Accuracy on float clips [B, C, T, H, W], plus ``noise`` of the same shape when given, in batches of 60."""
    correct = 0
    for start in range(0, len(labels), 60):
        batch = clips[start : start + 60]
        if noise is not None:
            batch = batch + noise[start : start + 60]
        correct += int((classifier(batch).argmax(1) == labels[start : start + 60]).sum())
    return correct / len(labels)


def decoded_test_clips(folder: Path) -> torch.Tensor:
    """The test clips written to mp4 with OpenCV and read back with ``read_clip``: float [N, C, T, H, W]."""
    from vision_rs.video.io import read_clip

    paths = write_clips(folder, "test")
    return torch.stack([read_clip(path) for path in paths]).transpose(1, 2).contiguous()


def report(model: DigitsC3D, sigma: float, seed: int, decoded: torch.Tensor | None) -> dict[str, float]:
    """Test-clip accuracies of DigitsC3D and of the frame-wise digits CNN, clean and under one shared noise draw."""
    clips, labels = digit_clips("test")
    pixels = as_model_input(clips)
    noise = sigma * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(seed + 1))
    c3d = NormalizedClipClassifier(model).eval()
    framewise = FramewiseClassifier(load_embedded_model(f"digits_cnn.sigma_{sigma:.2f}")).eval()
    results = {
        "c3d_clean": accuracy(c3d, pixels, labels, None),
        "c3d_noisy": accuracy(c3d, pixels, labels, noise),
        "framewise_cnn_clean": accuracy(framewise, pixels, labels, None),
        "framewise_cnn_noisy": accuracy(framewise, pixels, labels, noise),
    }
    if decoded is not None:
        results["c3d_noisy_decoded"] = accuracy(c3d, decoded, labels, noise)
        results["framewise_cnn_noisy_decoded"] = accuracy(framewise, decoded, labels, noise)
        results["decode_mean_abs_error"] = float((decoded - pixels).abs().mean())
        results["decode_max_abs_error"] = float((decoded - pixels).abs().max())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.25, help="noise std in [0,1] pixel units")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT training clips only")
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the package's)")
    parser.add_argument("--no-decode", action="store_true", help="skip the accuracy on clips decoded from mp4")
    args = parser.parse_args(argv)
    name = f"digits_c3d.sigma_{args.sigma:.2f}"
    started = time.perf_counter()
    model, metadata = train(args.sigma, args.epochs, args.seed, args.limit)
    seconds = time.perf_counter() - started
    decoded = None
    if not args.no_decode:
        with tempfile.TemporaryDirectory() as folder:
            decoded = decoded_test_clips(Path(folder))
    results = report(model, args.sigma, args.seed, decoded)
    metadata.update({key: f"{value:.4f}" for key, value in results.items()})
    target = (args.out / f"{name.replace('.', '_', 1)}.safetensors") if args.out else video_weights_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target), metadata=metadata)
    print(f"{name}: trained in {seconds:.1f} s on {torch.get_num_threads()} threads -> {target}")
    for key, value in results.items():
        print(f"  {key:28s} {value:.4f}")


if __name__ == "__main__":
    main()
