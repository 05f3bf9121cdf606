"""Segmentation on the engine (issue 11): per-pixel tallies, localized noise per output cell, end-to-end soundness,
the embedded scenes, the CLI and bad input. The certificate functions alone are tested in
tests/test_segmentation_certificates.py.

End-to-end soundness uses a per-pixel threshold model: pixel p is class 1 iff its own noisy value exceeds
t_p. Under localized smoothing the draws of output cell k put N(0, σ_min²) on k's own pixels, so
p_p = Φ((x_p − t_p)/σ_min) exactly, the smoothed classifier keeps pixel p iff δ_p > −(x_p − t_p), the
true per-pixel radius is d_p = |x_p − t_p|, and one shared δ of norm ε flips at most the largest set of
pixels whose d_p² sum to at most ε² (cheapest first). Certificates may exceed these truths only when their
confidence bounds fail: at most α of the trials.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binom
from torch import nn

from vision_rs import InvalidParameterError, ModelOutputError, clopper_pearson_lower
from vision_rs import segmentation as seg
from vision_rs.cli import main
from vision_rs.models.embedded.scenes import DigitScenes
from vision_rs.runs.files import read_jsonl
from vision_rs.sampling.engine import EngineConfig, PixelVoteTally, sample
from vision_rs.sampling.noise import SigmaMapNoise
from vision_rs.sampling.views import WholeImage
from vision_rs.segmentation.datasets import certify_segmentation_dataset, read_segmentation_rows

ALPHA = 0.05


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Threshold(nn.Module):
    """Per-pixel class 1 iff the pixel's (first channel) value exceeds its threshold; scores [B, 2, H, W]."""

    def __init__(self, thresholds: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("thresholds", thresholds)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.seen) < 4:
            self.seen.append(x.clone())
        score = (x[:, 0] - self.thresholds) * 100
        return torch.stack([torch.zeros_like(score), score], dim=1)


def threshold_setup(seed: int = 0, size: int = 8, margin: float = 0.6) -> tuple[Threshold, torch.Tensor, np.ndarray]:
    """The model, an image [1, size, size] and the true per-pixel radii d_p (every pixel of class 1, d_p ∈ (0, margin·σ))."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, generator=generator) * 0.5 + 0.25
    distances = (0.05 + torch.rand(size, size, generator=generator) * margin) * 0.25
    return Threshold(image[0] - distances), image, distances.double().numpy()


def smooth_threshold(model: Threshold, **kwargs) -> seg.SmoothedSegmenter:
    return seg.smooth(model, mean=(0.0,), std=(1.0,), batch_size=400, progress=False, **kwargs)


# ------------------------------------------------------------------ the engine pieces


def test_pixel_tally_counts_every_pixel_of_its_region() -> None:
    tally = PixelVoteTally((2, 3), region=(slice(0, 1), slice(1, 3)))
    scores = torch.zeros(4, 1, 3, 2, 3)
    scores[:2, 0, 2] = 1.0  # draws 0, 1: class 2 everywhere
    scores[2:, 0, 1, 0, 1] = 1.0  # draws 2, 3: class 1 at (0, 1), class 0 elsewhere
    tally.update(tally.check(scores[:, 0], 4)[:, None])
    counts = tally.result()
    assert counts.shape == (1, 2, 3)
    assert counts[0, 0].tolist() == [0, 2, 2] and counts[0, 1].tolist() == [2, 0, 2]


def test_localized_draws_use_the_cells_sigma_map_and_count_only_the_cell() -> None:
    localized = seg.Localized((2, 2), 0.1, 0.7)
    model, image, _ = threshold_setup(size=8)
    noisy_inputs = []
    recorder = lambda x: noisy_inputs.append(x.clone()) or model(x)  # noqa: E731
    sigma = torch.from_numpy(seg.sigma_map(localized, 8, 8, 3))
    region = seg.cell_slices(localized, 8, 8, 3)
    counts = sample(recorder, image, SigmaMapNoise(sigma), WholeImage(), PixelVoteTally((8, 8), region), 4000,
                    torch.Generator().manual_seed(0), EngineConfig(batch_size=4000, progress=False))
    assert counts.shape == (4, 4, 2) and (counts.sum(axis=-1) == 4000).all()
    noise = torch.cat(noisy_inputs)[:, 0] - image[0]
    table = seg.sigma_table(localized)[3]  # cell 3 is the bottom right: its own σ 0.1, the farthest 0.7
    for cell, std in enumerate(table):
        rows, cols = seg.cell_slices(localized, 8, 8, cell)
        # 4000 draws × 16 pixels: the sample std is within 3% of σ except with probability < 1e-6
        assert float(noise[:, rows, cols].std()) == pytest.approx(std, rel=0.03)


def reference_sigma(localized: seg.Localized, height: int, width: int, output_cell: int) -> np.ndarray:
    """σ of every pixel from the definition alone, in Python floats (float64): cell borders ⌊iS/P⌋ in exact integer
    arithmetic, the Chebyshev distance of the pixel's cell to the output cell, σ_min + (σ_max − σ_min)·d/d_max."""
    rows, cols = localized.grid
    row_of = [max(i for i in range(rows) if i * height // rows <= y) for y in range(height)]
    col_of = [max(j for j in range(cols) if j * width // cols <= x) for x in range(width)]
    k, l = divmod(output_cell, cols)
    farthest = max(rows, cols) - 1
    spread = localized.sigma_max - localized.sigma_min
    return np.array([[localized.sigma_min + (spread * max(abs(row_of[y] - k), abs(col_of[x] - l)) / farthest if farthest else 0.0)
                      for x in range(width)] for y in range(height)])


def test_sigma_maps_and_radii_are_float64_end_to_end_against_a_float64_reference() -> None:
    """The σ maps the certificates use, and the radii, equal a float64 computation from the definitions to 1e-12; the
    noise is drawn in float32 with every σ rounded up (conservative), and the method's σ is σ_min exactly."""
    from scipy.stats import beta, norm

    localized = seg.Localized((3, 5), 0.15, 1.0 / 3.0)  # 1/3 and the steps between are not float32 numbers
    for cell in range(localized.cells):
        sigmas = seg.sigma_map(localized, 20, 23, cell)
        assert sigmas.dtype == np.float64
        np.testing.assert_allclose(sigmas, reference_sigma(localized, 20, 23, cell), rtol=0, atol=1e-12)
        noise = SigmaMapNoise(torch.from_numpy(sigmas))
        drawn = noise.scale(torch.device("cpu"), torch.float32).double().numpy()
        assert noise.sigma == localized.sigma_min and (drawn >= sigmas).all() and (drawn - sigmas <= 2.0**-23 * sigmas).all()  # one float32 step
    model, image, _ = threshold_setup(size=8)
    cert = smooth_threshold(model, localized=seg.Localized((2, 2), 0.1, 0.3)).certify(image, n0=10, n=60, alpha=ALPHA, seed=0)
    counts, n, pixels = cert.counts.astype(float), cert.n, cert.counts.size
    p_lower = np.where(counts > 0, beta.ppf(ALPHA / pixels, np.maximum(counts, 1), n - counts + 1), 0.0)
    expected = np.where(p_lower > 0.5, 0.1 * norm.ppf(np.maximum(p_lower, 0.5)), 0.0)
    assert cert.radii.dtype == np.float64 and (cert.radii > 0).any()
    np.testing.assert_allclose(cert.radii, expected, rtol=0, atol=1e-12)


def test_localized_progress_names_each_cell_of_the_grid() -> None:
    model, image, _ = threshold_setup(size=8)
    phases: list[str] = []
    report = lambda phase, done, total: phases.append(phase) if done == 0 else None  # noqa: E731
    smooth_threshold(model, localized=seg.Localized((1, 2), 0.1, 0.5)).certify(image, n0=2, n=4, seed=0, progress=report)
    assert phases == ["select (n0), cell 1 of 2", "estimate (n), cell 1 of 2",
                      "select (n0), cell 2 of 2", "estimate (n), cell 2 of 2"]


def test_a_one_cell_grid_is_isotropic_smoothing() -> None:
    model, image, _ = threshold_setup()
    isotropic = smooth_threshold(model, sigma=0.25).certify(image, n0=20, n=300, alpha=0.01, seed=3)
    one_cell = smooth_threshold(model, localized=seg.Localized((1, 1), 0.25, 0.25)).certify(image, n0=20, n=300, alpha=0.01, seed=3)
    assert np.array_equal(isotropic.counts, one_cell.counts) and np.array_equal(isotropic.radii, one_cell.radii)
    assert [c.certified for c in isotropic.collective([0.05, 0.1])] == [int(isotropic.certified(e).sum()) for e in (0.05, 0.1)]


# ------------------------------------------------------------------ end-to-end soundness through the engine


def greedy_flips(distances: np.ndarray, eps: float) -> int:
    """The most pixels one δ with ‖δ‖₂ ≤ ε flips when pixel p costs d_p² on its own coordinate."""
    costs = np.sort(distances.ravel() ** 2)
    return int((np.cumsum(costs) <= eps**2 + 1e-15).sum())


def test_per_pixel_and_collective_certificates_hold_for_all_pixels_at_once() -> None:
    """Over 60 trials, a trial fails when any certified pixel claims more than its true radius (per-pixel), or
    when the collective count at ε exceeds the pixels one shared δ cannot flip. Sound: at most the binomial
    tolerance of rate α (false failure ≤ 1e-4). Power: the same counts with a bound per pixel at the full α
    (no correction across the 64 pixels) fail far more often."""
    localized = seg.Localized((2, 2), 0.25, 0.75)
    model, image, distances = threshold_setup(margin=0.6)
    smoothed = smooth_threshold(model, localized=localized)
    truth = np.ones((8, 8), dtype=np.int64)
    trials, n, eps = 60, 300, 0.12
    true_count = truth.size - greedy_flips(distances, eps)
    per_pixel = collective = uncorrected = 0
    for trial in range(trials):
        cert = smoothed.certify(image, n0=20, n=n, alpha=ALPHA, seed=trial)
        kept = ~cert.abstained
        per_pixel += bool(((cert.labels != 1) & kept).any() or (cert.radii[kept] > distances[kept]).any())
        collective += cert.collective([eps], truth)[0].certified > true_count
        loose = np.array([clopper_pearson_lower(int(k), n, ALPHA) for k in cert.counts.ravel()]).reshape(8, 8)
        uncorrected += bool((0.25 * np.where(loose > 0.5, __import__("scipy").stats.norm.ppf(np.maximum(loose, 0.5)), 0)
                             > distances).any())
    tolerance = binom.ppf(1 - 1e-4, trials, ALPHA)
    assert per_pixel <= tolerance and collective <= tolerance
    assert uncorrected > tolerance, "no power: bounds without a correction across pixels pass"


# ------------------------------------------------------------------ the embedded scenes and a torchvision model


def test_embedded_scenes_certify_with_both_models() -> None:
    image, labels = DigitScenes("test")[0]
    iso = seg.smooth("digits_segnet.sigma_0.25", 0.25, device="cpu", batch_size=64, channels_last=True, progress=False)
    cert = iso.certify(image, n0=10, n=60, alpha=0.01, seed=0)
    assert cert.correct(labels).mean() > 0.85 and cert.radii.max() > 0
    local = seg.smooth("digits_segnet_localized.grid_3x3_sigma_0.25_1.00", localized=seg.Localized((3, 3), 0.25, 1.0),
                       device="cpu", batch_size=64, channels_last=True, progress=False)
    cert = local.certify(image, n0=4, n=30, alpha=0.01, seed=0)
    assert cert.correct(labels).mean() > 0.8
    counts = [solution.certified for solution in cert.collective([0.05, 0.1, 0.2], labels)]
    assert counts == sorted(counts, reverse=True) and counts[0] >= int(cert.certified(0.05, labels).sum())


def test_a_torchvision_segmentation_model_gets_its_preset_and_its_dict_unwrapped() -> None:
    smoothed = seg.smooth("torchvision:lraspp_mobilenet_v3_large", 0.25, pretrained=False, input_size=(32, 32),
                          device="cpu", batch_size=4, progress=False)
    assert smoothed.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    cert = smoothed.certify(torch.rand(3, 24, 20), n0=2, n=2, alpha=0.5, seed=0)
    assert cert.labels.shape == (24, 20) and cert.num_classes == 21


# ------------------------------------------------------------------ bad input, each with our own error


class Classifier(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3]


class NoOut(nn.Module):
    def forward(self, x):
        return {"aux": x}


@pytest.mark.parametrize(("build", "match"), [
    (lambda: seg.smooth(Classifier(), 0.25, mean=(0.0,), std=(1.0,)), r"expected \[1, classes, 8, 8\]"),
    (lambda: seg.smooth(NoOut(), 0.25, mean=(0.0,), std=(1.0,)), "without 'out'"),
])
def test_models_that_do_not_segment_are_refused(build, match: str) -> None:
    with pytest.raises(ModelOutputError, match=match):
        build().certify(torch.rand(1, 8, 8), n0=2, n=2, seed=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sigma": 0.25, "localized": seg.Localized((2, 2), 0.1, 0.5)}, "exactly one"),
    ({}, "exactly one"),
    ({"sigma": -1.0}, "sigma"),
    ({"localized": (2, 2)}, "Localized"),
])
def test_impossible_smoothing_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        seg.smooth(threshold_setup()[0], mean=(0.0,), std=(1.0,), **kwargs)


def test_a_grid_larger_than_the_image_and_holm_with_localized_are_refused() -> None:
    model, image, _ = threshold_setup(size=8)
    smoothed = smooth_threshold(model, localized=seg.Localized((10, 2), 0.1, 0.5))
    with pytest.raises(InvalidParameterError, match="larger than the 8x8 image"):
        smoothed.certify(image, n0=2, n=2, seed=0)
    with pytest.raises(InvalidParameterError, match="bonferroni"):
        smooth_threshold(model, localized=seg.Localized((2, 2), 0.1, 0.5)).certify(image, n0=2, n=2, correction="holm")
    with pytest.raises(InvalidParameterError, match="sigma_min <= sigma_max"):
        seg.Localized((2, 2), 0.5, 0.1)


def test_label_maps_with_the_wrong_shape_or_unknown_classes_are_refused(tmp_path: Path) -> None:
    model, image, _ = threshold_setup(size=8)
    cert = smooth_threshold(model, sigma=0.25).certify(image, n0=4, n=20, seed=0)
    with pytest.raises(InvalidParameterError, match="shape"):
        cert.collective([0.1], np.ones((4, 4), dtype=np.int64))
    with pytest.raises(InvalidParameterError, match=r"classes \[7\]"):
        cert.correct(np.full((8, 8), 7))
    assert cert.correct(np.full((8, 8), 255)).sum() == 0  # ignored pixels are never counted
    with pytest.raises(InvalidParameterError, match="eps"):
        cert.certified(-0.1)
    out = tmp_path / "run.tsv"
    with pytest.raises(InvalidParameterError, match="shape"):
        certify_segmentation_dataset(smooth_threshold(model, sigma=0.25), [(image, np.ones((3, 3), dtype=np.int64))], out,
                                     n0=2, n=4, progress=False)
    assert not out.exists()


# ------------------------------------------------------------------ data-set runs and the CLI


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scenes")
    images, masks = root / "images", root / "masks"
    images.mkdir(), masks.mkdir()
    scenes = DigitScenes("test")
    for index in range(2):
        image, labels = scenes[index]
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(images / f"scene_{index}.png")
        Image.fromarray(labels.numpy().astype(np.uint8), mode="L").save(masks / f"scene_{index}.png")
    return images, masks


def test_certify_seg_through_the_cli_then_report(scene_files: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = scene_files
    out = tmp_path / "seg.tsv"
    args = ["certify-seg", str(images), "--model", "digits_segnet_localized.grid_3x3_sigma_0.25_1.00", "--grid", "3x3",
            "--sigma-min", "0.25", "--sigma-max", "1.0", "--eps", "0.05,0.1", "--masks", str(masks), "--n0", "3",
            "--n", "20", "--device", "cpu", "--out", str(out), "--no-progress", "--channels-last"]
    assert main(args) == 0
    rows = read_segmentation_rows(out)
    assert len(rows) == 2 and all(row.labelled == 64 * 64 for row in rows)
    assert list(rows[0].certified) == ["naive@0.05", "naive@0.1", "collective@0.05", "collective@0.1"]
    assert all(row.certified["collective@0.05"] >= row.certified["naive@0.05"] for row in rows)
    record, results = read_jsonl(out.with_suffix(".jsonl"))
    assert record["kind"] == "segmentation" and record["classifier"]["details"]["grid"] == [3, 3] and record["eps"] == [0.05, 0.1]
    assert results[0]["collective"][0]["solver"] in ("highs-lp", "none") and len(results[0]["intersection"]) == 11
    capsys.readouterr()
    assert main(args) == 0 and len(read_segmentation_rows(out)) == 2  # resumed: nothing redone
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| seg.tsv | collective | 2 |" in printed and "ε=0.05" in printed and out.with_suffix(".png").is_file()


def test_certify_seg_with_a_denoiser_records_it(scene_files: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = scene_files
    out = tmp_path / "denoised.tsv"
    assert main(["certify-seg", str(images), "--model", "digits_segnet.sigma_0.25", "--sigma", "0.25", "--eps", "0.1",
                 "--masks", str(masks), "--n0", "3", "--n", "20", "--device", "cpu", "--out", str(out), "--no-progress",
                 "--denoiser", "digits_denoiser.sigma_0.25"]) == 0
    record, _ = read_jsonl(out.with_suffix(".jsonl"))
    assert record["classifier"]["denoiser"]["name"] == "digits_denoiser.sigma_0.25"
    assert len(read_segmentation_rows(out)) == 2


def test_certify_seg_refuses_a_bad_denoiser_and_writes_nothing(scene_files: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = scene_files
    out = tmp_path / "bad.tsv"
    base = ["certify-seg", str(images), "--model", "digits_segnet.sigma_0.25", "--sigma", "0.25", "--masks", str(masks),
            "--n0", "3", "--n", "10", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main([*base, "--denoiser", "no_such_denoiser"]) == 2
    assert "unknown denoiser 'no_such_denoiser'" in capsys.readouterr().err
    with pytest.raises(ModelOutputError, match="the denoiser returned shape"):
        smooth_threshold(threshold_setup()[0], sigma=0.25, denoiser=nn.Upsample(scale_factor=2)).certify(
            threshold_setup()[1], n0=2, n=4)
    assert not out.exists() and not out.with_suffix(".jsonl").exists()


def test_certify_seg_refuses_incomplete_smoothing_options_and_missing_masks(scene_files, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    images, _ = scene_files
    base = ["certify-seg", str(images), "--model", "digits_segnet.sigma_0.25", "--out", str(tmp_path / "run.tsv")]
    assert main([*base, "--grid", "3x3"]) == 2
    assert "--sigma-min" in capsys.readouterr().err
    assert main([*base, "--sigma", "0.25", "--masks", str(tmp_path)]) == 2
    assert "no label map" in capsys.readouterr().err
    assert main([*base, "--sigma", "0.25", "--eps", "-1"]) == 2
    assert not (tmp_path / "run.tsv").exists()


def test_segmentation_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--segmentation", "--out-dir", str(tmp_path / "demo"), "--limit", "1", "--n0", "2", "--n", "12"]) == 0
    out = capsys.readouterr().out
    assert "| isotropic σ=0.25 | pixel | 1 |" in out and "| localized 3×3, σ 0.25–1.0 | collective | 1 |" in out
    assert "ε=0.1: most certified pixels with" in out
    assert (tmp_path / "demo" / "segmentation_certified_accuracy.png").is_file()
