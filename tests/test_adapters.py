"""Model adapters: normalisation and input size read from timm / torchvision, wrappers, modes, seeds and image inputs."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torchvision
from PIL import Image
from timm.data import resolve_model_data_config
from torch import nn
from torchvision.models import ResNet18_Weights

import vision_rs
from vision_rs import InvalidParameterError, NormalizedClassifier, to_unit_tensor
from vision_rs.sampling.noise import GaussianNoise
from vision_rs.sampling.views import WholeImage

SIGMA = 0.25


def tiny_model(seed: int = 0, size: int = 8, classes: int = 5) -> nn.Module:
    """A linear classifier of 3×size×size images; seeded so that tests are reproducible."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes))


def tiny_image(seed: int = 0, size: int = 8) -> np.ndarray:
    """A uint8 HWC picture."""
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def outcome(cert: vision_rs.Certificate) -> tuple:
    """Everything a certificate says, except its wall-clock time."""
    return (cert.label, cert.radius, cert.p_lower, cert.counts, cert.candidate, cert.abstained, cert.seed)


def certify(smoothed: vision_rs.SmoothedClassifier, image, seed: int = 7, n: int = 100) -> vision_rs.Certificate:
    return smoothed.certify(image, n0=10, n=n, alpha=0.01, seed=seed, progress=False)


def certify_seeded(smoothed: vision_rs.SmoothedClassifier, image, n: int, alpha: float, seed: int) -> vision_rs.Certificate:
    return smoothed.certify(image, n0=20, n=n, alpha=alpha, seed=seed, progress=False)


# ------------------------------------------------------------------ normalisation and input size


def test_timm_model_spec_comes_from_its_pretrained_cfg() -> None:
    model = timm.create_model("resnet18", pretrained=False)
    config = resolve_model_data_config(model)
    smoothed = vision_rs.smooth(model, sigma=SIGMA, progress=False)
    assert smoothed.spec.mean == pytest.approx(tuple(config["mean"]))
    assert smoothed.spec.std == pytest.approx(tuple(config["std"]))
    assert smoothed.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert smoothed.spec.input_size == (3, 224, 224)
    assert smoothed.base.model is model
    torch.testing.assert_close(smoothed.base.mean.flatten(), torch.tensor(config["mean"], dtype=torch.float32))
    assert WholeImage(smoothed.spec.transform)(torch.rand(1, 3, 100, 80)).shape == (1, 3, 224, 224)


def test_timm_model_with_other_normalisation_is_read() -> None:
    model = timm.create_model("test_resnet", pretrained=False)  # a tiny timm model whose cfg uses mean = std = 0.5
    assert timm.models.get_pretrained_cfg("test_resnet").mean == (0.5, 0.5, 0.5)
    smoothed = vision_rs.smooth(model, sigma=SIGMA, progress=False)
    assert smoothed.spec.mean == pytest.approx((0.5, 0.5, 0.5))
    assert smoothed.spec.std == pytest.approx((0.5, 0.5, 0.5))
    assert smoothed.spec.input_size == (3, 160, 160)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(smoothed.base.eval()(x), model.eval()((x - 0.5) / 0.5))


def test_torchvision_model_spec_from_weights_enum() -> None:
    weights = ResNet18_Weights.DEFAULT
    preset = weights.transforms()
    smoothed = vision_rs.smooth(torchvision.models.resnet18(weights=None), sigma=SIGMA, weights=weights, progress=False)
    assert smoothed.spec.mean == pytest.approx(tuple(preset.mean))
    assert smoothed.spec.std == pytest.approx(tuple(preset.std))
    assert smoothed.spec.input_size == (3, 224, 224)


def test_torchvision_name_gets_the_same_spec() -> None:
    preset = ResNet18_Weights.DEFAULT.transforms()
    smoothed = vision_rs.smooth("torchvision:resnet18", sigma=SIGMA, pretrained=False, progress=False)
    assert isinstance(smoothed.base.model, torchvision.models.ResNet)
    assert smoothed.spec.mean == pytest.approx(tuple(preset.mean))
    assert smoothed.spec.std == pytest.approx(tuple(preset.std))
    assert smoothed.spec.input_size == (3, 224, 224)


def test_torchvision_model_without_weights_or_mean_std_is_refused() -> None:
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(InvalidParameterError, match="weights="):
        vision_rs.smooth(model, sigma=SIGMA, progress=False)
    # mean/std make it unambiguous
    smoothed = vision_rs.smooth(model, sigma=SIGMA, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), progress=False)
    assert smoothed.spec.mean == pytest.approx((0.1, 0.2, 0.3))
    assert smoothed.spec.input_size is None


def test_explicit_mean_std_input_size_override_timm_values() -> None:
    model = timm.create_model("test_resnet", pretrained=False).eval()
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    smoothed = vision_rs.smooth(model, sigma=SIGMA, mean=mean, std=std, input_size=(3, 64, 64), progress=False)
    assert smoothed.spec.mean == pytest.approx(mean)
    assert smoothed.spec.std == pytest.approx(std)
    assert smoothed.spec.input_size == (3, 64, 64)
    x = torch.rand(2, 3, 64, 64)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(smoothed.base(x), model((x - m) / s))
    # a 2-entry input_size is (H, W)
    assert vision_rs.smooth(model, sigma=SIGMA, input_size=(48, 40), progress=False).spec.input_size == (3, 48, 40)
    # only one of them overridden: the rest still comes from the pretrained_cfg
    only_size = vision_rs.smooth(model, sigma=SIGMA, input_size=(3, 96, 96), progress=False).spec
    assert only_size.mean == pytest.approx((0.5, 0.5, 0.5)) and only_size.input_size == (3, 96, 96)


def test_normalisation_buffers_live_on_the_model_device() -> None:
    """A model already moved to a device (here 'meta', standing in for a GPU) gets its normalisation there too."""
    model = tiny_model().to("meta")
    smoothed = vision_rs.smooth(model, sigma=SIGMA, mean=(0.5,) * 3, std=(0.25,) * 3, progress=False)
    assert smoothed.device.type == "meta"
    assert smoothed.base.mean.device.type == "meta" and smoothed.base.std.device.type == "meta"
    assert smoothed.base(torch.empty(2, 3, 8, 8, device="meta")).shape == (2, 5)


# ------------------------------------------------------------------ never normalise twice


@pytest.mark.parametrize("wrap", [lambda m: m, nn.DataParallel], ids=["bare", "DataParallel"])
def test_never_normalise_twice(wrap) -> None:
    model = tiny_model()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    first = vision_rs.smooth(model, SIGMA, mean=mean, std=std, progress=False)
    assert isinstance(first.base, NormalizedClassifier)
    second = vision_rs.smooth(wrap(first.base), SIGMA, progress=False)
    assert second.spec == first.spec
    assert second.base.model is model
    x = torch.rand(4, 3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        once, twice, got = model((x - m) / s), model(((x - m) / s - m) / s), second.base(x)
    torch.testing.assert_close(got, once, rtol=0, atol=0)
    assert not torch.allclose(got, twice)


# ------------------------------------------------------------------ parallel wrappers


def test_dataparallel_model_certifies_like_the_bare_model() -> None:
    model = tiny_model()
    image = tiny_image()
    bare = certify(vision_rs.smooth(model, SIGMA, progress=False), image)
    parallel = vision_rs.smooth(nn.DataParallel(model), SIGMA, progress=False)
    assert isinstance(parallel.base.model, nn.DataParallel)
    assert outcome(certify(parallel, image)) == outcome(bare)


def test_ddp_model_certifies_like_the_bare_model(tmp_path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if sys.platform == "win32":
        pytest.skip("file:// rendezvous with gloo is not supported here")
    model = tiny_model()
    image = tiny_image()
    bare = certify(vision_rs.smooth(model, SIGMA, progress=False), image)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        smoothed = vision_rs.smooth(ddp, SIGMA, progress=False)
        assert smoothed.base.model is model  # DDP's forward (collectives) is not used for inference
        assert outcome(certify(smoothed, image)) == outcome(bare)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ train / eval mode


class NoisyTrainModel(nn.Module):
    """BatchNorm and a heavy Dropout: in train mode its outputs change from call to call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.drop = nn.Dropout(p=0.9)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


def test_certify_runs_in_eval_mode_and_restores_training_flags() -> None:
    model = NoisyTrainModel()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model.body[2].running_mean.uniform_(-0.5, 0.5)
        model.body[2].running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(model).eval()
    model.train()
    model.head.eval()  # a mixed state must come back exactly as it was
    flags = {name: module.training for name, module in model.named_modules()}
    running_mean = model.body[2].running_mean.clone()
    tracked = int(model.body[2].num_batches_tracked)
    image = tiny_image()

    smoothed = vision_rs.smooth(model, SIGMA, progress=False)
    cert = certify(smoothed, image, n=200)
    prediction = smoothed.predict(image, n=50, seed=1, progress=False)

    assert {name: module.training for name, module in model.named_modules()} == flags
    torch.testing.assert_close(model.body[2].running_mean, running_mean, rtol=0, atol=0)
    assert int(model.body[2].num_batches_tracked) == tracked
    expected = certify(vision_rs.smooth(reference, SIGMA, progress=False), image, n=200)
    assert outcome(cert) == outcome(expected)
    expected_prediction = vision_rs.smooth(reference, SIGMA, progress=False).predict(image, n=50, seed=1, progress=False)
    assert prediction.counts == expected_prediction.counts


# ------------------------------------------------------------------ seeds


def test_same_seed_same_certificate_and_different_seeds_differ() -> None:
    smoothed = vision_rs.smooth(tiny_model(), sigma=1.0, progress=False)  # large σ: votes spread over classes
    image = tiny_image()
    first, again = certify(smoothed, image, seed=11, n=200), certify(smoothed, image, seed=11, n=200)
    assert outcome(first) == outcome(again)
    assert first.seed == 11 and sum(first.counts.values()) == 200
    assert len(first.counts) > 1, "the test needs votes spread over several classes"
    others = [certify(smoothed, image, seed=seed, n=200).counts for seed in (12, 13, 14)]
    assert len({tuple(sorted(c.items())) for c in [first.counts, *others]}) >= 3
    p1 = smoothed.predict(image, n=100, seed=5, progress=False)
    p2 = smoothed.predict(image, n=100, seed=5, progress=False)
    assert (p1.counts, p1.label, p1.p_value) == (p2.counts, p2.label, p2.p_value)


def test_no_seed_records_the_seed_it_drew() -> None:
    smoothed = vision_rs.smooth(tiny_model(), sigma=1.0, progress=False)
    image = tiny_image()
    cert = smoothed.certify(image, n0=10, n=100, alpha=0.01, progress=False)
    assert isinstance(cert.seed, int)
    assert outcome(certify(smoothed, image, seed=cert.seed)) == outcome(cert)


# ------------------------------------------------------------------ image inputs


def test_all_image_forms_give_identical_certificates(tmp_path) -> None:
    smoothed = vision_rs.smooth(tiny_model(), sigma=0.5, progress=False)
    pixels = tiny_image(seed=4)
    path = tmp_path / "picture.png"
    Image.fromarray(pixels).save(path)
    forms = {
        "path str": str(path),
        "path": path,
        "PIL": Image.fromarray(pixels),
        "numpy uint8 HWC": pixels,
        "numpy float HWC": pixels.astype(np.float32) / 255.0,
        "torch uint8 CHW": torch.from_numpy(pixels).permute(2, 0, 1),
        "torch float CHW": torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0,
    }
    expected_pixels = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    for name, form in forms.items():
        torch.testing.assert_close(to_unit_tensor(form, channels=3), expected_pixels, rtol=0, atol=0, msg=name)
    results = {name: outcome(certify(smoothed, form)) for name, form in forms.items()}
    assert len(set(map(repr, results.values()))) == 1, results
    assert len(results["PIL"][3]) > 1, "votes should be spread, or the comparison says little"


class EqualChannelLinear(nn.Module):
    """Logits [0, s] with s = Σ_p a_p (R_p + G_p + B_p) + b: the same weight on the three channels of a pixel."""

    def __init__(self, per_pixel: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("per_pixel", per_pixel.flatten().double())
        self.bias = bias
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:4].clone())
        score = x.double().sum(dim=1).flatten(1) @ self.per_pixel + self.bias
        return torch.stack([torch.zeros_like(score), score], dim=1).float()


def grey_setup(distance: float) -> tuple[EqualChannelLinear, np.ndarray]:
    """A 4×4 uint8 grey image and an RGB model at true L2 distance ``distance`` in grey units.

    On grey inputs the model is linear in the grey pixels with weights u = 3a, so the smoothed
    classifier of noise added to the grey image has p_1 = Φ(d_g/σ) with d_g = (u·x + b)/‖u‖; a grey
    change of norm d_g crosses the boundary. Noise added after repeating to RGB would instead see
    d_rgb = (u·x + b)/(√3‖a‖) = √3 d_g.
    """
    rng = np.random.default_rng(8)
    grey = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    per_pixel = torch.from_numpy(rng.normal(size=16))
    grey_weights = 3 * per_pixel
    x = torch.from_numpy(grey.astype(np.float64).flatten() / 255.0)
    bias = distance * float(grey_weights.norm()) - float(grey_weights @ x)
    return EqualChannelLinear(per_pixel, bias), grey


def test_grey_images_are_certified_in_grey_units() -> None:
    """Issue 8: the radius of a grey image is L2 over its grey pixels; repeating to RGB before the noise
    over-claims by √3. Failures of a sound certificate are at most α of the trials (false failure
    ≤ 1e-4 from the binomial); the RGB-first certificate must fail the same check (power)."""
    from scipy.stats import binom

    sigma, distance, alpha, trials, n = 0.25, 0.25, 0.05, 200, 500
    model, grey = grey_setup(distance)
    smoothed = vision_rs.smooth(model, sigma=sigma, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), batch_size=500, progress=False)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    too_far_grey = too_far_rgb_first = 0
    for seed in range(trials):
        too_far_grey += certify_seeded(smoothed, grey, n, alpha, seed).radius > distance
        too_far_rgb_first += certify_seeded(smoothed, rgb, n, alpha, seed).radius > distance
    tolerance = binom.ppf(1 - 1e-4, trials, alpha)
    assert too_far_grey <= tolerance, f"{too_far_grey}/{trials} grey radii above the true grey distance"
    assert too_far_rgb_first > tolerance, "the check has no power: noise added after the RGB repeat passes it"
    # the model sees one grey noise value repeated on R, G and B
    certify_seeded(smoothed, grey, n, alpha, 0)
    seen = model.seen[-1]
    torch.testing.assert_close(seen[:, 0], seen[:, 2], rtol=0, atol=0)


def test_grey_radius_is_tight_and_a_grey_change_of_that_size_crosses() -> None:
    sigma, distance = 0.25, 0.25
    model, grey = grey_setup(distance)
    smoothed = vision_rs.smooth(model, sigma=sigma, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), batch_size=10_000, progress=False)
    cert = certify_seeded(smoothed, grey, 100_000, 0.001, 0)
    assert cert.label == 1 and 0.9 * distance <= cert.radius <= distance
    # the grey change of norm `distance` along −u reaches the boundary: nothing beyond the true radius is claimed
    grey_weights = 3 * model.per_pixel
    x = torch.from_numpy(grey.astype(np.float64).flatten() / 255.0)
    moved = x - distance * grey_weights / grey_weights.norm()
    assert float(grey_weights @ moved + model.bias) == pytest.approx(0.0, abs=1e-9)


def test_every_grey_form_gives_the_same_certificate() -> None:
    smoothed = vision_rs.smooth(tiny_model(), sigma=0.5, progress=False)
    grey = np.random.default_rng(5).integers(0, 256, size=(8, 8), dtype=np.uint8)
    expected = outcome(certify(smoothed, grey))
    for form in (Image.fromarray(grey, mode="L"), grey[:, :, None], torch.from_numpy(grey), torch.from_numpy(grey)[None]):
        unit = to_unit_tensor(form, channels=3)
        assert unit.shape == (1, 8, 8)  # the image keeps its own channel: the noise is added in grey
        assert outcome(certify(smoothed, form)) == expected


def test_opaque_rgba_is_accepted_as_rgb() -> None:
    smoothed = vision_rs.smooth(tiny_model(), sigma=0.5, progress=False)
    rgb = tiny_image(seed=6)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, dtype=np.uint8)], axis=2)
    expected = outcome(certify(smoothed, rgb))
    assert outcome(certify(smoothed, Image.fromarray(rgba, mode="RGBA"))) == expected
    assert outcome(certify(smoothed, rgba)) == expected
    float_rgba = torch.from_numpy(rgba).permute(2, 0, 1).float() / 255.0
    assert outcome(certify(smoothed, float_rgba)) == expected


# ------------------------------------------------------------------ resize after noise


class RecordingNoise(GaussianNoise):
    """Gaussian noise that remembers the shapes of the batches it perturbs."""

    def __init__(self, sigma: float) -> None:
        super().__init__(sigma)
        object.__setattr__(self, "shapes", [])

    def perturb_(self, buffer, image, generator):
        self.shapes.append(tuple(buffer.shape))
        return super().perturb_(buffer, image, generator)


class RecordingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.inner(x)


def test_noise_at_native_resolution_then_resize_and_centre_crop() -> None:
    model = RecordingModel(tiny_model(size=32))
    smoothed = vision_rs.smooth(model, SIGMA, input_size=(3, 32, 32), batch_size=16, progress=False)
    assert WholeImage(smoothed.spec.transform)(torch.rand(2, 3, 64, 48)).shape == (2, 3, 32, 32)
    smoothed.noise = RecordingNoise(SIGMA)
    image = np.random.default_rng(8).integers(0, 256, size=(64, 48, 3), dtype=np.uint8)  # H=64, W=48
    cert = smoothed.certify(image, n0=5, n=40, alpha=0.01, seed=0, progress=False)
    assert sum(cert.counts.values()) == 40 and cert.sigma == SIGMA
    # 40 estimation draws at most 16 per batch: 3 equal batches of 14
    assert smoothed.noise.shapes and set(smoothed.noise.shapes) == {(5, 3, 64, 48), (14, 3, 64, 48)}
    assert set(model.shapes) == {(5, 3, 32, 32), (14, 3, 32, 32)}
    # the view resizes the shorter side to 32 and crops the centre of the longer one
    ramp = torch.linspace(0, 1, 64).view(1, 1, 64, 1).expand(1, 3, 64, 48)
    viewed = WholeImage(smoothed.spec.transform)(ramp)
    assert viewed[0, 0, :, 0].min() > 0.1 and viewed[0, 0, :, 0].max() < 0.9
    # an image already at the input size is passed through untouched
    same = torch.rand(2, 3, 32, 32)
    assert WholeImage(smoothed.spec.transform)(same) is same
