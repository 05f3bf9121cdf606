"""Denoised smoothing: the denoiser is part of the base classifier, so the certificate machinery is unchanged.

Analytic check: with a linear classifier f(z) = 1[w·z + b > 0] and a linear "denoiser" that shrinks towards a
point, D(z) = c + s(z − c), the base classifier f∘D is again linear, with w' = s·w and b' = w·c(1 − s) + b, so
P(f(D(x + ε)) = 1) = Φ(d'/σ) and the true robust radius of the smoothed classifier is d' = (w'·x + b')/‖w'‖,
which differs from the radius d of f alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.stats import binom
from torch import nn

import vision_rs
from tests.conftest import LinearTwoClass, Recorder
from vision_rs.errors import InvalidParameterError, ModelOutputError
from vision_rs.sampling.certificates import probit_mean_certify

SIGMA = 0.5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class Shrink(nn.Module):
    """D(z) = c + s (z − c): a linear map towards the point ``c``, which keeps f∘D linear."""

    def __init__(self, centre: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("centre", centre)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.centre + self.scale * (z - self.centre)


def shrunk_setup(model: LinearTwoClass, image: torch.Tensor, distance: float, offset: float, scale: float):
    """A linear classifier at ``distance`` from ``image`` and a Shrink denoiser towards a point whose score is
    ``offset``; returns (classifier, denoiser, true radius of the smoothed f∘D)."""
    weight = model.weight.float()  # unit norm
    bias = distance - float(image.flatten() @ weight)
    classifier = LinearTwoClass(weight, bias)
    centre = image + (offset - distance) * weight.view_as(image)  # w·c + b = offset
    true_radius = (offset + scale * (distance - offset)) / scale  # (w'·x + b') / ‖w'‖ with w' = s·w
    return classifier, Shrink(centre, scale), true_radius


def test_identity_denoiser_gives_the_same_counts_and_radius(linear_setup) -> None:
    linear, image = linear_setup
    for model, options in ((linear, {}), (Recorder(), {"patches": vision_rs.Patches(2, stride=2), "mode": "smoothed"}),
                           (linear, {"hierarchical": vision_rs.Hierarchical(p=0.8)})):
        plain = vision_rs.smooth(model, sigma=SIGMA, progress=False, **options)
        denoised = vision_rs.smooth(model, sigma=SIGMA, denoiser=nn.Identity(), progress=False, **options)
        first = plain.certify(image, n0=50, n=400, alpha=0.01, seed=11)
        again = denoised.certify(image, n0=50, n=400, alpha=0.01, seed=11)
        assert again.counts == first.counts and again.candidate == first.candidate
        assert again.radius == first.radius and again.p_lower == first.p_lower


def test_certified_radius_of_the_denoised_classifier_exceeds_its_true_radius_at_most_alpha_of_the_time(linear_setup) -> None:
    model, image = linear_setup
    classifier, denoiser, true_radius = shrunk_setup(model, image, distance=0.1, offset=0.15, scale=0.5)
    assert true_radius == pytest.approx(0.25)  # p_A = Φ(0.5) ≈ 0.69: the bound matters
    smoothed = vision_rs.smooth(classifier, sigma=SIGMA, denoiser=denoiser, batch_size=500, progress=False)
    alpha, trials, n = 0.05, 300, 500
    too_far = plug_in_too_far = 0
    for seed in range(trials):
        cert = smoothed.certify(image, n0=20, n=n, alpha=alpha, seed=seed)
        too_far += cert.radius > true_radius
        k = cert.counts.get(cert.candidate, 0)  # the unsound plug-in estimate k/n on the same counts
        plug_in_too_far += cert.candidate == 1 and vision_rs.gaussian_radius(k / n, SIGMA) > true_radius
    tolerance = binom.ppf(1 - 1e-4, trials, alpha)  # fails a sound certificate with probability ≤ 1e-4
    assert too_far <= tolerance, f"{too_far}/{trials} over-claimed radii at alpha={alpha}"
    assert plug_in_too_far > tolerance, "the check has no power: an unsound estimate passes it"


def test_certified_radius_is_that_of_the_denoised_classifier(linear_setup) -> None:
    """With many samples the radius approaches the true radius of f∘D (0.5), not that of f alone (0.25)."""
    model, image = linear_setup
    classifier, denoiser, true_radius = shrunk_setup(model, image, distance=0.25, offset=0.25 + 0.25, scale=0.5)
    assert true_radius == pytest.approx(0.75)
    smoothed = vision_rs.smooth(classifier, sigma=SIGMA, denoiser=denoiser, batch_size=10_000, progress=False)
    cert = smoothed.certify(image, n0=100, n=50_000, alpha=0.001, seed=3)
    assert cert.label == 1 and 0.9 * true_radius <= cert.radius <= true_radius


class SpatialMean(nn.Module):
    """D(z) = every pixel replaced by its channel's mean: each patch of D(z) depends on every pixel of z."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.mean(dim=(-2, -1), keepdim=True).expand_as(z)


def test_probit_mean_behind_a_denoiser_counts_every_view_as_covering_every_pixel() -> None:
    """Four disjoint 2×2 patches (c_max = 1 without a denoiser) of D(x + ε) with D the spatial mean: every view sees
    u·(x + ε) with u_cq = W_c / 16 (W_c: the patch classifier's weights summed per channel), so the true robust radius
    of the probit-mean classifier is d = (u·x + b)/‖u‖, and m = 2d/σ. The sound radius σ m̲/2 (c_max = k) stays below
    d; the radius that keeps the patches' own c_max = 1 (σ m̲) is twice as large and over-claims."""
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(3, 4, 4, generator=generator)
    weight = torch.randn(12, generator=generator)
    per_channel = weight.view(3, 2, 2).sum(dim=(1, 2)).double()
    norm_u = float(per_channel.norm()) / 4
    u_dot_x = float(per_channel @ image.double().mean(dim=(1, 2)))
    distance = 0.5 * SIGMA  # Φ(d/σ) ≈ 0.69 per view
    classifier = LinearTwoClass(weight, bias=distance * norm_u - u_dot_x)
    smoothed = vision_rs.smooth(classifier, sigma=SIGMA, patches=vision_rs.Patches(2, stride=2), mode="probit-mean",
                                denoiser=SpatialMean(), batch_size=400, progress=False)
    alpha, trials, n = 0.05, 100, 400
    too_far = local_too_far = 0
    for seed in range(trials):
        cert = smoothed.certify(image, n0=20, n=n, alpha=alpha, seed=seed)
        assert cert.views == 4 and cert.c_max == 4 and cert.uncovered == 0
        too_far += cert.radius > distance
        # the views vote alike on every draw: per-view counts are the totals / 4
        per_view = np.array([[cert.counts.get(0, 0) // 4, cert.counts.get(1, 0) // 4]] * 4)
        local = probit_mean_certify(cert.candidate, per_view, n, SIGMA, alpha, c_max=1)
        local_too_far += local.label == 1 and local.radius > distance
    tolerance = binom.ppf(1 - 1e-4, trials, alpha)  # fails a sound certificate with probability ≤ 1e-4
    assert too_far <= tolerance, f"{too_far}/{trials} over-claimed radii at alpha={alpha}"
    assert local_too_far > tolerance, "the check has no power: the radius with the patches' own c_max passes it"


class Returns(nn.Module):
    """A broken denoiser: returns ``make(z)``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make
        self.calls = 0

    def forward(self, z: torch.Tensor):
        self.calls += 1
        return self.make(z, self.calls)


def _fails(z: torch.Tensor, calls: int) -> torch.Tensor:
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


@pytest.mark.parametrize("make, message", [
    (lambda z, _: z[..., ::2, ::2], "returned shape"),
    (lambda z, _: z[:, :1], "returned shape"),
    (lambda z, _: torch.full_like(z, float("nan")), "NaN or Inf for"),
    (lambda z, _: torch.where(torch.arange(z.shape[0]).view(-1, 1, 1, 1) == 3, torch.inf, z), "NaN or Inf for 1 of"),
    (lambda z, _: z.double(), "torch.float64"),
    (lambda z, _: (z * 255).to(torch.uint8), "torch.uint8"),
    (lambda z, _: (z,), "tuple, not a tensor"),
    (_fails, "the denoiser failed on a first batch"),
])
def test_bad_denoisers_are_refused_on_the_first_batch(linear_setup, make, message) -> None:
    _, image = linear_setup
    model = Recorder()
    smoothed = vision_rs.smooth(model, sigma=SIGMA, denoiser=Returns(make), batch_size=10, progress=False)
    with pytest.raises(ModelOutputError, match=message):
        smoothed.certify(image, n0=20, n=100, seed=0)
    assert model.shapes == []  # the model never ran


def test_later_non_finite_denoiser_outputs_are_caught_by_the_tally(linear_setup) -> None:
    model, image = linear_setup
    late_nan = Returns(lambda z, calls: z if calls == 1 else torch.full_like(z, float("nan")))
    smoothed = vision_rs.smooth(model, sigma=SIGMA, denoiser=late_nan, batch_size=10, progress=False)
    with pytest.raises(ModelOutputError, match="NaN or Inf logits"):
        smoothed.certify(image, n0=20, n=100, seed=0)


class Seen(nn.Module):
    """An identity denoiser that records what it is given (a 1×1 convolution, so its channels can be read)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.dirac_(self.conv.weight)
        self.inputs: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.clone())
        return self.conv(z) if z.dtype == torch.float32 else z


def test_hierarchical_indicator_bypasses_the_denoiser() -> None:
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen, model = Seen(), Recorder()
    smoothed = vision_rs.smooth(model, sigma=SIGMA, hierarchical=vision_rs.Hierarchical(p=0.5, indicator=True),
                                denoiser=seen, batch_size=16, progress=False)
    smoothed.certify(image, n0=16, n=16, seed=0)
    noisy, given = seen.inputs[0], model.inputs[0]
    assert noisy.shape == (16, 3, 8, 8) and given.shape == (16, 4, 8, 8)
    indicator = given[:, 3]
    assert set(indicator.unique().tolist()) == {0.0, 1.0}
    unselected = (indicator == 0).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(noisy[unselected], image.expand(16, -1, -1, -1)[unselected])  # it sees the hierarchical noise


def test_patches_are_cut_from_the_denoised_image() -> None:
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = Recorder()
    smoothed = vision_rs.smooth(model, sigma=SIGMA, patches=vision_rs.Patches(4, stride=4), denoiser=nn.Identity(),
                                batch_size=8, progress=False)
    smoothed.certify(image, n0=2, n=2, seed=0)
    assert model.shapes[0] == (8, 3, 4, 4)  # 2 draws × 4 patches, cut after the denoiser


def test_video_clips_are_denoised_frame_by_frame() -> None:
    clip = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen, model = Seen(), Recorder()
    smoothed = vision_rs.video.smooth(model, sigma=SIGMA, framewise=True, denoiser=seen, batch_size=5, progress=False)
    smoothed.certify(clip, n0=5, n=5, seed=0)
    assert seen.inputs[0].shape == (5 * 4, 3, 8, 8)
    assert model.shapes[0] == (5 * 4, 3, 8, 8)


def test_grey_images_are_repeated_to_the_denoisers_colours() -> None:
    grey = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    seen, model = Seen(3), Recorder()
    smoothed = vision_rs.smooth(model, sigma=SIGMA, denoiser=seen, mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=4,
                                progress=False)
    smoothed.certify(grey, n0=4, n=4, seed=0)
    noisy = seen.inputs[0]
    assert noisy.shape == (4, 3, 8, 8) and torch.equal(noisy[:, 0], noisy[:, 2])  # one noise draw, repeated


def test_denoiser_follows_autocast_and_channels_last() -> None:
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))

    class Half(Seen):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            super().forward(z)
            return z.to(torch.bfloat16)

    seen = Half()
    smoothed = vision_rs.smooth(Recorder(), sigma=SIGMA, denoiser=seen, autocast_dtype=torch.bfloat16,
                                channels_last=True, batch_size=4, progress=False)
    smoothed.certify(image, n0=4, n=4, seed=0)  # a bfloat16 output is accepted under bfloat16 autocast
    assert seen.inputs[0].is_contiguous(memory_format=torch.channels_last)
    assert seen.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ModelOutputError, match="torch.float64"):
        vision_rs.smooth(Recorder(), sigma=SIGMA, denoiser=Returns(lambda z, _: z.double()), autocast_dtype=torch.bfloat16,
                         progress=False).certify(image, n0=4, n=4, seed=0)


def test_denoiser_is_in_eval_mode_while_sampling_and_restored_after(linear_setup) -> None:
    model, image = linear_setup
    modes: list[bool] = []

    class Mode(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            modes.append(self.training)
            return z

    denoiser = Mode().train()
    vision_rs.smooth(model, sigma=SIGMA, denoiser=denoiser, progress=False).certify(image, n0=5, n=5, seed=0)
    assert modes and not any(modes) and denoiser.training


def test_denoisers_by_name_and_checkpoint(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    from vision_rs.models.embedded import EMBEDDED_DENOISERS, DigitsDenoiser

    model = vision_rs.embedded.DigitsCNN()
    for name in EMBEDDED_DENOISERS:
        record = vision_rs.smooth(model, sigma=0.25, denoiser=name, progress=False).describe()["denoiser"]
        assert record["name"] == name and len(record["weights_sha256"]) == 64 and len(record["state_sha256"]) == 64
    assert "was trained for noise σ=0.5" in caplog.text  # digits_denoiser.sigma_0.50 used at σ = 0.25
    path = tmp_path / "mine.safetensors"
    save_file(DigitsDenoiser().state_dict(), str(path))
    record = vision_rs.smooth(model, sigma=0.25, denoiser=path, progress=False).describe()["denoiser"]
    assert record["checkpoint"] == str(path) and record["name"] == "digits_denoiser"
    with pytest.raises(InvalidParameterError, match="unknown denoiser 'nope'.*digits_denoiser.sigma_0.25"):
        vision_rs.smooth(model, sigma=0.25, denoiser="nope", progress=False)
    with pytest.raises(InvalidParameterError, match="denoiser must be"):
        vision_rs.smooth(model, sigma=0.25, denoiser=3, progress=False)


def test_a_run_with_a_denoiser_does_not_resume_one_without(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    images = [(vision_rs.embedded.digits_split("test")[0][i], 0) for i in range(2)]
    out = tmp_path / "run.tsv"
    options = dict(n0=5, n=10, progress=False)
    vision_rs.certify_dataset(vision_rs.smooth("digits_cnn.clean", 0.25, device="cpu", progress=False), images, out, **options)
    assert "trained without noise" in caplog.text
    denoised = vision_rs.smooth("digits_cnn.clean", 0.25, denoiser="digits_denoiser.sigma_0.25", device="cpu", progress=False)
    with pytest.raises(vision_rs.OutputPathError, match="classifier.denoiser"):
        vision_rs.certify_dataset(denoised, images, out, **options)


def test_embedded_denoiser_lets_the_clean_model_classify_noisy_digits() -> None:
    """One seeded noise draw over the test split: the clean model behind the denoiser is far more accurate."""
    images, labels = vision_rs.embedded.digits_split("test")
    pixels = images.float() / 255
    accuracy = {}
    for sigma in (0.25, 0.5):
        noisy = pixels + sigma * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
        for denoiser in (None, f"digits_denoiser.sigma_{sigma:.2f}"):
            smoothed = vision_rs.smooth("digits_cnn.clean", sigma, denoiser=denoiser, device="cpu", progress=False)
            view = smoothed.view_for(tuple(pixels.shape[1:]), torch.Generator())
            with torch.inference_mode():
                predicted = smoothed.base.eval()(view(noisy)).argmax(1)
            accuracy[sigma, denoiser is not None] = float((predicted == labels).float().mean())
    assert accuracy[0.25, True] > 0.95 and accuracy[0.5, True] > 0.85, accuracy
    assert accuracy[0.25, True] > accuracy[0.25, False] + 0.1 and accuracy[0.5, True] > accuracy[0.5, False] + 0.3, accuracy


def test_the_embedded_clean_model_behind_the_denoiser_certifies_digits() -> None:
    images, labels = vision_rs.embedded.digits_split("test")
    smoothed = vision_rs.smooth("digits_cnn.clean", 0.25, denoiser="digits_denoiser.sigma_0.25", device="cpu",
                                progress=False)
    certs = [smoothed.certify(images[i], n0=20, n=200, alpha=0.001, seed=i) for i in range(5)]
    assert sum(cert.label == int(labels[i]) and cert.radius > 0.25 for i, cert in enumerate(certs)) >= 4


@pytest.mark.parametrize("method", [{"sigma": 0.25}, {"localized": vision_rs.segmentation.Localized((2, 2), 0.2, 0.6)}])
def test_segmentation_certifies_the_denoised_model(method: dict) -> None:
    """Threshold t behind D(z) = c + s (z − c) is a threshold model at t' = c + (t − c) / s: the denoised
    segmenter must give the counts of Threshold(t') without a denoiser (same seed), and Threshold(t) alone,
    which the test picks to disagree, must not."""
    from tests.test_segmentation import Threshold, smooth_threshold, threshold_setup

    model, image, _ = threshold_setup(size=8)
    centre, scale = torch.full_like(image, 0.5), 0.5
    shifted = Threshold(centre[0] + (model.thresholds - centre[0]) / scale)
    denoised = smooth_threshold(model, denoiser=Shrink(centre, scale), **method)
    certs = [smoother.certify(image, n0=20, n=300, alpha=0.01, seed=5) for smoother in
             (denoised, smooth_threshold(shifted, **method), smooth_threshold(model, **method))]
    behind, equivalent, alone = (cert.counts.astype(np.int64) for cert in certs)
    assert np.abs(behind - equivalent).max() <= 1  # float rounding may flip a draw that lands on the threshold
    assert np.abs(behind - alone).max() > 50
    assert denoised.describe()["denoiser"]["name"].endswith(".Shrink")


def test_the_denoisers_file_location_is_environment_but_its_fingerprint_is_not() -> None:
    from vision_rs.runs.files import record_differences

    earlier = {"classifier": {"denoiser": {"weights": "/a/w.safetensors", "weights_sha256": "1", "state_sha256": "2"}}}
    moved = {"classifier": {"denoiser": {"weights": "/b/w.safetensors", "weights_sha256": "1", "state_sha256": "2"}}}
    other = {"classifier": {"denoiser": {"weights": "/a/w.safetensors", "weights_sha256": "3", "state_sha256": "4"}}}
    assert record_differences(earlier, moved) == ([], ["classifier.denoiser.weights"])
    assert record_differences(earlier, other)[0] == ["classifier.denoiser.state_sha256", "classifier.denoiser.weights_sha256"]
