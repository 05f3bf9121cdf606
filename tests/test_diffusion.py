"""The one-shot diffusion denoiser (Carlini et al. 2023): timestep choice, scaling, one-step x̂_0, loading.

The formulas are checked with stand-in UNets whose outputs are known (zero, or the exact noise), so each
expected value is computed by hand; a tiny randomly initialised diffusers UNet2DModel checks shapes and
the path through ``smooth``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vision_rs
from vision_rs import DiffusionDenoiser
from vision_rs.errors import CheckpointError, InvalidParameterError, MissingDependencyError
from vision_rs.models.diffusion import diffusion_timestep, load_diffusion_denoiser, noise_to_signal

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class Schedule:
    """A stand-in scheduler: the values a DDPM scheduler exposes."""

    def __init__(self, alphas_cumprod, prediction_type: str = "epsilon") -> None:
        self.alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float32)
        self.config = {"prediction_type": prediction_type}


TOY = [0.99, 0.9, 0.8, 0.5]
"""Noise levels √((1−ᾱ)/ᾱ): 0.1005, 0.3333, 0.5, 1.0."""


# 2σ → distances to the levels (0.1005, 0.3333, 0.5, 1.0) → nearest t:
# 0.5 → level 0.5 exactly (t=2); 0.34 → 0.0067 from 1/3 (t=1); 1.0 → t=3; 0.1 → t=0;
# 0.4 → 0.067 from 1/3, 0.1 from 0.5 (t=1); 0.42 → 0.087 from 1/3, 0.08 from 0.5 (t=2); 1.4 → beyond: the last (t=3)
@pytest.mark.parametrize("sigma, expected", [(0.25, 2), (0.17, 1), (0.5, 3), (0.05, 0), (0.2, 1), (0.21, 2), (0.7, 3)])
def test_timestep_has_the_noise_level_nearest_two_sigma(sigma: float, expected: int) -> None:
    assert noise_to_signal(TOY) == pytest.approx([math.sqrt(0.01 / 0.99), 1 / 3, 0.5, 1.0])
    assert diffusion_timestep(TOY, sigma) == expected


def test_timestep_of_the_ddpm_linear_schedule_matches_two_sigma() -> None:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)  # β linear 1e-4 .. 0.02
    levels = noise_to_signal(scheduler.alphas_cumprod.numpy())
    for sigma in (0.12, 0.25, 0.5, 1.0):
        t = diffusion_timestep(scheduler.alphas_cumprod, sigma)
        assert levels[t - 1] <= 2 * sigma <= levels[t + 1]  # bracketed by its neighbours: the levels increase in t
        # ᾱ_t ≈ 1/(1 + 4σ²): the relative error of the level is below one step's change
        assert abs(levels[t] - 2 * sigma) <= max(levels[t + 1] - levels[t], levels[t] - levels[t - 1])
        assert float(scheduler.alphas_cumprod[t]) == pytest.approx(1 / (1 + 4 * sigma**2), rel=0.01)


class Oracle(nn.Module):
    """A UNet stand-in returning ``answer(x_t)`` and recording what it was given."""

    def __init__(self, answer) -> None:
        super().__init__()
        self.answer = answer
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t: torch.Tensor, steps: torch.Tensor, return_dict: bool = True):
        self.calls.append((x_t.clone(), steps.clone()))
        return (self.answer(x_t),)


def test_scaling_and_timestep_given_to_the_unet() -> None:
    unet = Oracle(torch.zeros_like)
    denoiser = DiffusionDenoiser(unet, Schedule(TOY), sigma=0.25, clip=False)
    z = torch.rand(5, 3, 4, 4) * 1.4 - 0.2  # noisy images leave [0, 1]
    out = denoiser(z)
    x_t, steps = unet.calls[0]
    assert steps.tolist() == [2] * 5 and steps.dtype == torch.long
    assert torch.allclose(x_t, math.sqrt(0.8) * (2 * z - 1), atol=1e-6)
    assert torch.allclose(out, z, atol=1e-6)  # ε̂ = 0: x̂_0 = x_t / √ᾱ = 2z − 1, mapped back to z
    clipped = DiffusionDenoiser(unet, Schedule(TOY), sigma=0.25)(z)
    assert torch.allclose(clipped, z.clamp(0, 1), atol=1e-6)
    assert denoiser.details == {"kind": "diffusion", "sigma": 0.25, "timestep": 2, "prediction_type": "epsilon",
                                "alpha_bar": pytest.approx(0.8), "clip": False}


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_one_step_prediction_recovers_the_image_from_the_true_noise(prediction_type: str) -> None:
    """If the model knew the noise η of x_t = √ᾱ(2x − 1) + √(1−ᾱ) η exactly, x̂_0 would be 2x − 1 exactly."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 4, 4, generator=generator)
    eta = torch.randn(4, 3, 4, 4, generator=generator)
    alpha_bar = 0.8  # the toy schedule's ᾱ at σ = 0.25
    # z = x + δ with √ᾱ·2δ = √(1−ᾱ)·η: then √ᾱ(2z − 1) = √ᾱ(2x − 1) + √(1−ᾱ)·η, the training form of x_t
    z = x + eta * math.sqrt((1 - alpha_bar) / alpha_bar) / 2
    x0 = 2 * x - 1
    answers = {"epsilon": lambda x_t: eta, "sample": lambda x_t: x0,
               "v_prediction": lambda x_t: math.sqrt(alpha_bar) * eta - math.sqrt(1 - alpha_bar) * x0}
    denoiser = DiffusionDenoiser(Oracle(answers[prediction_type]), Schedule(TOY, prediction_type), sigma=0.25, clip=False)
    assert torch.allclose(denoiser(z), x, atol=1e-5)


def test_learned_variance_outputs_use_the_first_channels() -> None:
    unet = Oracle(lambda x_t: torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, 7.0)], dim=1))
    z = torch.rand(2, 3, 4, 4)
    assert torch.allclose(DiffusionDenoiser(unet, Schedule(TOY), sigma=0.25, clip=False)(z), z, atol=1e-6)


def test_refuses_what_it_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidParameterError, match="no σ"):
        DiffusionDenoiser(Oracle(torch.zeros_like), Schedule(TOY))(torch.rand(1, 3, 4, 4))
    with pytest.raises(InvalidParameterError, match="prediction_type"):
        DiffusionDenoiser(Oracle(torch.zeros_like), Schedule(TOY, "flow"))
    with pytest.raises(InvalidParameterError, match="alphas_cumprod"):
        DiffusionDenoiser(Oracle(torch.zeros_like), object())
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"vision-rs\[diffusion\]"):
        DiffusionDenoiser(Oracle(torch.zeros_like), Schedule(TOY))


def tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )


def test_tiny_unet_denoises_through_smooth_and_is_recorded(tmp_path) -> None:
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=1000)
    denoiser = DiffusionDenoiser(unet, scheduler)
    z = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = denoiser.at_sigma(0.25)(z)
    assert out.shape == z.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    smoothed = vision_rs.smooth("digits_cnn.clean", 0.5, denoiser=denoiser, device="cpu", batch_size=16, progress=False)
    cert = smoothed.certify(vision_rs.embedded.digits_split("test")[0][0], n0=8, n=16, seed=0)
    assert sum(cert.counts.values()) == 16
    record = smoothed.describe()["denoiser"]
    expected_t = int(np.argmin(np.abs(noise_to_signal(scheduler.alphas_cumprod.numpy()) - 1.0)))
    assert record["details"]["timestep"] == expected_t and record["details"]["sigma"] == 0.5
    assert denoiser.sigma is None  # the user's object is not changed; smooth uses a copy set for its σ


def test_pipeline_folder_loads_offline(tmp_path) -> None:
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    unet.save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    loaded = load_diffusion_denoiser(tmp_path)
    assert loaded.prediction_type == "v_prediction"
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(), unet.state_dict().values()))
    smoothed = vision_rs.smooth("digits_cnn.clean", 0.25, denoiser=tmp_path, device="cpu", progress=False)
    assert smoothed.describe()["denoiser"]["name"] == f"diffusers:{tmp_path.name}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="unet/"):
        load_diffusion_denoiser(tmp_path / "empty")


def test_training_script_writes_a_pipeline_that_smooth_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    demos = Path(__file__).resolve().parents[1] / "demos"
    monkeypatch.syspath_prepend(str(demos))
    import train_diffusion

    out = tmp_path / "ddpm"
    train_diffusion.main(["--steps", "3", "--batch-size", "4", "--channels", "8", "16", "--out", str(out)])
    assert "σ=0.25: diffusion (t=" in capsys.readouterr().out
    assert (out / "unet" / "config.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    smoothed = vision_rs.smooth("digits_cnn.clean", 0.25, denoiser=str(out), progress=False)
    cert = smoothed.certify(vision_rs.embedded.digits_split("test")[0][0], n0=4, n=8, alpha=0.01, seed=0)
    assert cert.n == 8 and smoothed.describe()["denoiser"]["details"]["timestep"] == train_diffusion.DiffusionDenoiser(
        train_diffusion.tiny_unet((8, 16)), diffusers.DDPMScheduler(num_train_timesteps=1000), 0.25).timestep
