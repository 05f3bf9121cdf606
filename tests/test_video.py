"""Video certification (issue 12) on the core engine: sub-clip views, clip and frame-wise base classifiers,
analytic soundness of the image modes with views along time, the embedded clips, bad input.

Soundness uses a base classifier that is linear on every sub-clip, f(v) = 1[w·v + b > 0] with one w for
every sub-clip. The noise is added to the whole clip, so sub-clip i's smoothed probability is exactly
Φ(z_i), z_i = (W_i·x + b)/(σ‖w‖), W_i = P_iᵀw. With two heavily overlapping sub-clips every mode's
decision is z_1 + z_2 > 0 (see tests/test_smooth_reduce.py), so the true robust radius is exactly
(s_1 + s_2)/‖W_1 + W_2‖, and a sound certificate exceeds it only when its confidence bounds fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

import vision_rs
from vision_rs import InvalidImageError, InvalidParameterError, ModelOutputError, read_rows, video
from vision_rs.cli import main
from vision_rs.errors import InvalidVideoError
from vision_rs.models.embedded.clips import digit_clips, write_clips
from vision_rs.runs.files import read_jsonl
from vision_rs.sampling.preprocess import EvalTransform

SIGMA = 0.5
ALPHA = 0.05
FRAMES, LENGTH = 6, 5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ sub-clip views


@pytest.mark.parametrize(("frames", "length", "stride", "starts"), [
    (16, 8, 4, (0, 4, 8)), (16, 8, 8, (0, 8)), (10, 4, 3, (0, 3, 6)), (10, 4, 4, (0, 4, 6)), (5, 5, 1, (0,)),
])
def test_subclips_cover_the_clip_with_the_last_one_flush_with_the_end(frames, length, stride, starts) -> None:
    view = video.SubClips(length, stride).view_for((frames, 3, 4, 4), None, torch.Generator())
    assert view.starts == starts and view.count == len(starts)
    cover = np.zeros(frames, dtype=int)
    for start in starts:
        cover[start : start + length] += 1
    assert np.array_equal(view.coverage.numpy(), cover) and view.c_max == cover.max() and view.uncovered == 0


def test_subclips_are_cut_from_one_noisy_clip_and_resized_per_frame() -> None:
    noisy = torch.randn(3, 10, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    transform = EvalTransform((6, 6), (6, 6), mode="squash")
    view = video.SubClips(4, 3).view_for((10, 3, 8, 12), transform, torch.Generator())
    out = view(noisy)
    assert out.shape == (3 * 3, 4, 3, 6, 6)
    for draw in range(3):
        for i, start in enumerate(view.starts):
            expected = transform(noisy[draw, start : start + 4])
            torch.testing.assert_close(out[draw * 3 + i], expected)
    # overlapping sub-clips of one draw share the very same noisy frames (frame 3 is in sub-clips 0 and 1)
    torch.testing.assert_close(out[0][3], out[1][0])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"length": 0}, "length"), ({"length": 4, "stride": 0}, "stride"), ({"length": 4, "stride": 5}, "larger"),
    ({"length": 2.5}, "length"),
])
def test_impossible_subclips_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        video.SubClips(**kwargs)


def test_subclips_longer_than_the_clip_are_refused_at_certify_time() -> None:
    smoothed = video.smooth(LinearClip.make()[0], SIGMA, subclips=video.SubClips(8), mean=(0.0,), std=(1.0,), progress=False)
    with pytest.raises(InvalidImageError, match="do not fit a clip of 6 frames"):
        smoothed.certify(torch.rand(FRAMES, 1, 1, 2), n0=2, n=4, seed=0)


# ------------------------------------------------------------------ analytic soundness with views along time


class LinearClip(nn.Module):
    """Logits [0, w·v + b] of a (sub-)clip v, read in the clip models' layout [N, C, T, H, W]."""

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.double())  # [C, L, H, W]
        self.bias = bias

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        score = (clips.double() * self.weight).flatten(1).sum(dim=1) + self.bias
        return torch.stack([torch.zeros_like(score), score], dim=1).float()

    @staticmethod
    def make(z_mean: float = 1.0, seed: int = 0) -> tuple[LinearClip, torch.Tensor, float]:
        """The model, a clip [6, 1, 1, 2] and the exact robust radius of two sub-clips of 5 frames at stride 1."""
        generator = torch.Generator().manual_seed(seed)
        clip = torch.rand(FRAMES, 1, 1, 2, generator=generator)
        weight = torch.ones(1, LENGTH, 1, 2) + 0.1 * torch.randn(1, LENGTH, 1, 2, generator=generator)
        weight = weight / weight.norm()
        placed = []
        for start in (0, 1):  # W_i = P_iᵀ w over the clip in its own [T, C, H, W] order
            full = torch.zeros(FRAMES, 1, 1, 2)
            full[start : start + LENGTH] = weight.permute(1, 0, 2, 3)
            placed.append(full.flatten().double())
        placed = torch.stack(placed)
        raw = placed @ clip.flatten().double()
        bias = float(z_mean * SIGMA - raw.mean())
        scores = raw + bias
        return LinearClip(weight, bias), clip, float(scores.sum() / placed.sum(dim=0).norm())


def tolerance(trials: int) -> float:
    """Over-claims a sound α-level certificate exceeds with probability ≤ 1e-4."""
    return binom.ppf(1 - 1e-4, trials, ALPHA)


@pytest.mark.parametrize(("mode", "reduce"), [("vote", "mean"), ("vote", "max"), ("smoothed", "mean"),
                                               ("smoothed", "max"), ("probit-mean", "mean")])
def test_temporal_certificates_exceed_the_true_radius_at_most_alpha_of_the_time(mode: str, reduce: str) -> None:
    """False failure ≤ 1e-4 per mode. Power: for vote, the plug-in radius σΦ⁻¹(k/n); for probit-mean, ignoring the
    overlap (c_max = 1, which multiplies the radius by √c_max = √2): both must over-claim beyond the tolerance.
    The smoothed modes share their bounds with images, whose power checks are in tests/test_smooth_reduce.py."""
    model, clip, true_radius = LinearClip.make()
    smoothed = video.smooth(model, SIGMA, subclips=video.SubClips(LENGTH, 1), mode=mode, reduce=reduce,
                            mean=(0.0,), std=(1.0,), batch_size=5000, progress=False)
    trials, n = 100, 300
    over = unsound = 0
    for seed in range(trials):
        cert = smoothed.certify(clip, n0=20, n=n, alpha=ALPHA, seed=seed)
        assert (cert.views, cert.c_max) == (2, 2)
        over += cert.label == 1 and cert.radius > true_radius or cert.label == 0
        if mode == "vote":
            k = cert.counts.get(cert.candidate, 0)
            unsound += cert.candidate == 1 and vision_rs.gaussian_radius(min(k / n, 1 - 1e-12), SIGMA) > true_radius
        elif mode == "probit-mean":
            unsound += cert.radius * np.sqrt(cert.c_max) > true_radius
    assert over <= tolerance(trials), f"{over}/{trials} temporal {mode}+{reduce} radii above the true radius {true_radius:.3f}"
    if mode in ("vote", "probit-mean"):
        assert unsound > tolerance(trials), "no power: the unsound variant passes"


def test_certificates_come_close_to_the_exact_radius_with_many_samples() -> None:
    model, clip, true_radius = LinearClip.make()
    smoothed = video.smooth(model, SIGMA, subclips=video.SubClips(LENGTH, 1), mean=(0.0,), std=(1.0,),
                            batch_size=20_000, progress=False)
    cert = smoothed.certify(clip, n0=100, n=50_000, alpha=0.001, seed=0)
    assert cert.label == 1 and 0.9 * true_radius <= cert.radius <= true_radius


def test_one_subclip_the_whole_clip_is_gaussian_smoothing_of_the_clip() -> None:
    model = LinearClip(torch.ones(1, FRAMES, 1, 2) / np.sqrt(2 * FRAMES), -0.2)
    clip = torch.rand(FRAMES, 1, 1, 2, generator=torch.Generator().manual_seed(3))
    options = dict(mean=(0.0,), std=(1.0,), batch_size=500, progress=False)
    gaussian = video.smooth(model, SIGMA, **options).certify(clip, n0=50, n=1000, alpha=0.01, seed=4)
    one = video.smooth(model, SIGMA, subclips=video.SubClips(FRAMES), **options).certify(clip, n0=50, n=1000, alpha=0.01, seed=4)
    assert (one.views, one.c_max) == (1, 1)
    assert (one.label, one.counts, one.radius) == (gaussian.label, gaussian.counts, gaussian.radius)
    # the exact radius of this linear clip classifier: the certificate is below it and close
    x = clip.flatten().double()
    exact = float((model.weight.permute(1, 0, 2, 3).flatten() @ x + model.bias) / model.weight.norm())
    assert gaussian.radius <= abs(exact) and gaussian.label == int(exact > 0)
    assert gaussian.radius == pytest.approx(SIGMA * norm.ppf(gaussian.p_lower))


# ------------------------------------------------------------------ base classifiers of clips


class Recorder(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1)[:, : self.classes] * 10


def test_clip_models_get_their_layout_and_chunks_are_averaged() -> None:
    recorder = Recorder()
    layout = video.ClipLayout(recorder, chunk=4)
    clips = torch.rand(2, 10, 3, 2, 2)
    logits = layout(clips)
    assert recorder.seen[0].shape == (2 * 3, 3, 4, 2, 2)  # chunks at 0, 4 and 6 (flush with the end)
    expected = torch.stack([clips[:, s : s + 4].permute(0, 2, 1, 3, 4).flatten(1)[:, :3] * 10 for s in (0, 4, 6)], 1).mean(1)
    torch.testing.assert_close(logits, expected)


def test_framewise_models_average_logits_over_frames_and_see_grey_repeated() -> None:
    recorder = Recorder()
    base = vision_rs.NormalizedClassifier(video.FramesAsImages(recorder), vision_rs.InputSpec((0.5,) * 3, (0.5,) * 3))
    grey = torch.rand(2, 4, 1, 3, 3)
    logits = base(grey)
    images = recorder.seen[0]
    assert images.shape == (8, 3, 3, 3)
    torch.testing.assert_close(images[:, 0], images[:, 2])  # the grey channel, repeated after the noise
    torch.testing.assert_close(logits, (((grey - 0.5) / 0.5).expand(2, 4, 3, 3, 3).flatten(2)[..., :3] * 10).mean(1))


def test_torchvision_video_model_reads_its_preset() -> None:
    smoothed = video.smooth("torchvision:r3d_18", sigma=0.25, pretrained=False, batch_size=2, device="cpu", progress=False)
    preset = __import__("torchvision").models.video.R3D_18_Weights.DEFAULT.transforms()
    spec = smoothed.spec
    assert spec.mean == pytest.approx(tuple(preset.mean)) and spec.transform.size == (112, 112)
    assert spec.transform.scale == (128, 171) and spec.crop_mode == "squash"
    cert = smoothed.certify(torch.rand(4, 3, 40, 60), n0=2, n=2, alpha=0.5, seed=0)
    assert sum(cert.counts.values()) == 2


def test_a_model_that_does_not_return_class_scores_is_refused() -> None:
    class Spatial(nn.Module):
        def forward(self, x):
            return x.mean(dim=2)  # [N, C, H, W]: no class axis

    smoothed = video.smooth(Spatial(), SIGMA, mean=(0.0,), std=(1.0,), progress=False)
    with pytest.raises(ModelOutputError, match="expected"):
        smoothed.certify(torch.rand(4, 1, 2, 2), n0=2, n=2, seed=0)


# ------------------------------------------------------------------ inputs


@pytest.mark.parametrize(("clip", "match"), [
    (torch.rand(3, 8, 8), "an image"), (torch.rand(2, 4, 3, 8, 8), "a batch"),
    (torch.rand(4, 8, 8, 3), r"looks like \[T, H, W, C\]"), (torch.full((4, 3, 2, 2), float("nan")), "NaN"),
    (torch.full((4, 3, 2, 2), 2.0), r"\[0, 1\]"), (torch.zeros(4, 3, 2, 2, dtype=torch.int32), "dtype"),
    (torch.zeros(0, 3, 2, 2), "empty"), ("no/such/video.mp4", "not found"), (3.5, "cannot read a clip"),
])
def test_bad_clips_are_refused(clip, match: str) -> None:
    with pytest.raises(InvalidVideoError, match=match):
        video.to_unit_clip(clip, 3)


def test_numpy_clips_in_decord_layout_and_uint8_are_accepted() -> None:
    clip = np.random.default_rng(0).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    unit = video.to_unit_clip(clip, 3)
    assert unit.shape == (4, 3, 5, 6)
    torch.testing.assert_close(unit[1, 2], torch.from_numpy(clip[1, :, :, 2]).float() / 255)


def test_chunk_is_for_clip_models_only() -> None:
    with pytest.raises(InvalidParameterError, match="frame-wise"):
        video.smooth("digits_cnn.sigma_0.25", sigma=0.25, framewise=True, chunk=4)
    with pytest.raises(InvalidParameterError, match="chunk"):
        video.smooth("digits_c3d.sigma_0.25", sigma=0.25, chunk=0)


def test_models_of_the_wrong_task_name_the_right_smooth() -> None:
    with pytest.raises(InvalidParameterError, match="vision_rs.smooth"):
        video.smooth("digits_cnn.sigma_0.25", sigma=0.25)
    with pytest.raises(InvalidParameterError, match="vision_rs.video.smooth"):
        vision_rs.smooth("digits_c3d.sigma_0.25", sigma=0.25)


# ------------------------------------------------------------------ end to end on the embedded clips


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder, "test", limit=4)
    return folder


def test_embedded_clips_certify_with_the_clip_model_and_frame_by_frame() -> None:
    clips, labels = digit_clips("test")
    c3d = video.smooth("digits_c3d.sigma_0.25", sigma=0.25, device="cpu", batch_size=100, progress=False)
    framewise = video.smooth("digits_cnn.sigma_0.25", sigma=0.25, framewise=True, device="cpu", batch_size=100, progress=False)
    for index in range(3):
        for smoothed in (c3d, framewise):
            cert = smoothed.certify(clips[index], n0=20, n=100, alpha=0.01, seed=index)
            assert cert.label == int(labels[index]) and cert.radius > 0


def test_certify_video_through_the_cli_records_the_reader_and_resumes(clip_folder: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.tsv"
    args = ["certify-video", str(clip_folder), "--model", "digits_c3d.sigma_0.25", "--sigma", "0.25", "--frames", "16",
            "--subclip", "8", "--subclip-stride", "4", "--n0", "10", "--n", "40", "--device", "cpu", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    rows = read_rows(out)
    assert len(rows) == 4 and sum(row.correct == 1 for row in rows) >= 3
    record, results = read_jsonl(out.with_suffix(".jsonl"))
    assert record["kind"] == "video-classification" and record["reading"]["frames"] == 16
    assert results[0]["certificate"]["details"]["subclips"] == {"length": 8, "stride": 4}
    assert results[0]["clip"]["backend"] in ("decord", "pyav") and results[0]["clip"]["indices"] == list(range(16))
    capsys.readouterr()
    assert main(args) == 0 and len(read_rows(out)) == 4  # nothing redone
    assert main([*args[:-3], "--n", "41", "--out", str(out), "--no-progress"]) == 2
    assert "n: was 40, now 41" in capsys.readouterr().err


def test_certify_video_refuses_a_corrupt_file_before_writing(clip_folder: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "videos" / "3"
    bad.mkdir(parents=True)
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "run.tsv"
    assert main(["certify-video", str(tmp_path / "videos"), "--model", "digits_c3d.sigma_0.25", "--sigma", "0.25",
                 "--out", str(out)]) == 2
    assert "broken.mp4" in capsys.readouterr().err and not out.exists()


def test_video_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--video", "--out-dir", str(tmp_path / "demo"), "--limit", "2", "--n0", "6", "--n", "30"]) == 0
    out = capsys.readouterr().out
    for label in ("Gaussian, 3D CNN (whole clip)", "Smooth-Reduce vote+mean, 3D CNN on 3 sub-clips of 8",
                  "Gaussian, image CNN frame by frame"):
        assert f"| {label} | 2 |" in out
    assert len(list((tmp_path / "demo" / "clips").rglob("*.mp4"))) == 2
    assert (tmp_path / "demo" / "video_certified_accuracy.png").is_file()
