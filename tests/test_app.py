"""The Gradio app: its functions called directly, the running server over HTTP (gradio_client) and as a process
(SIGTERM), and end-to-end runs in one real headless browser (Debian's chromium + chromium-driver, driven by Selenium;
skipped, with the reason, only when no browser is installed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

gr = pytest.importorskip("gradio")

from vision_rs.app.catalog import (  # noqa: E402
    IMAGE,
    VIDEO,
    ModelCatalog,
    ModelChoice,
    after_method_choice,
    after_model_choice,
)
from vision_rs.app.certify import (  # noqa: E402
    METHODS,
    AppCertifier,
    AppLimits,
    CertificationCancelled,
    ImageRequest,
    SegmentationRequest,
    VideoRequest,
    clip_example,
    digit_example,
    parse_eps,
    scene_example,
)
from vision_rs.app.pictures import ABSTAIN_COLOUR, AGREE, DISAGREE, LEGEND_FONT, TILE_SIDE, TITLE_FONT  # noqa: E402
from vision_rs.app.progress import ProgressLine, RunProgress  # noqa: E402
from vision_rs.app.sessions import SessionRuns  # noqa: E402
from vision_rs.app.ui import AppConfig, Handlers, build_app, launch_app  # noqa: E402
from vision_rs.errors import InvalidParameterError, ModelOutputError  # noqa: E402
from vision_rs.models.embedded import DigitsCNN, load_embedded_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # gradio's queue statistics use pandas options that pandas 3 deprecates
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated")

FAST = dict(n0=10, n=40, alpha=0.001, seed=0)


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog.scan(local_caches=False)


@pytest.fixture(scope="module")
def certifier(catalog: ModelCatalog) -> AppCertifier:
    torch.set_num_threads(1)
    return AppCertifier(catalog, device="cpu")


@pytest.fixture(scope="module")
def handlers(certifier: AppCertifier) -> Handlers:
    return Handlers(certifier)


def _png(path: Path, pixels: torch.Tensor) -> Path:
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path


def _mp4(path: Path, clip: torch.Tensor) -> Path:
    """uint8 [T, 3, H, W] written with OpenCV (mp4v), as a user's camera or editor would."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 16.0, (clip.shape[-1], clip.shape[-2]))
    for frame in clip.numpy():
        writer.write(np.ascontiguousarray(frame.transpose(1, 2, 0)[:, :, ::-1]))
    writer.release()
    return path


# ------------------------------------------------------------------------------------------------ direct: image


def test_image_gaussian_certificate_projection_and_a_point_inside_the_ball(certifier: AppCertifier) -> None:
    image, truth = digit_example(3)
    result = certifier.certify_image(image, ImageRequest(**FAST), truth=truth)
    cert = result.certificate
    assert cert.method == "gaussian" and cert.n == 40 and not cert.abstained
    assert f"Certified: digit {cert.label}, radius {cert.radius:.4f}" in result.summary
    assert f"True class: digit {truth}" in result.summary and "unlike the data" not in result.summary
    assert sum(result.shares.values()) == pytest.approx(1.0) or len(cert.counts) > 5
    assert result.picture is None and result.budgets == [] and result.view_counts is None
    # the projection uses the method's own bound: at the run's own n it gives the certificate's radius
    sizes, radii = result.sample_plot.axes[0].lines[0].get_data()
    assert radii[list(sizes).index(cert.n)] == pytest.approx(cert.radius, abs=1e-12)
    assert np.all(np.diff(radii) >= -1e-9), "more samples at the same shares never certify less"
    # one perturbation inside the certified ball: its norm is below the radius, after clipping to [0, 1]
    ball, pixels = result.ball, image.float() / 255
    assert ball is not None and ball.radius == cert.radius
    assert float((ball.perturbed - pixels).norm()) == pytest.approx(ball.norm) and ball.norm < cert.radius
    assert 0.9 * cert.radius < ball.norm and 0 <= float(ball.perturbed.min()) and float(ball.perturbed.max()) <= 1
    for words in ("One perturbation inside the certified ball", "not an attack result",
                  "clipping can only shrink it", f"L2 norm {ball.norm:.4f}"):
        assert words in result.ball_text
    assert result.ball_picture.width == 3 * 256 + 2 * 12 and result.ball_picture.height > 256  # three panels, titled


def test_image_smooth_reduce_shows_each_patch_and_its_vote(certifier: AppCertifier) -> None:
    image, truth = digit_example(0)
    request = ImageRequest(**FAST, method="Smooth-Reduce", patch_size=16, patch_stride=8, mode="smoothed")
    result = certifier.certify_image(image, request, truth=truth)
    cert, counts = result.certificate, result.view_counts
    assert cert.views == 9 and cert.c_max == 4
    assert counts.shape == (9, 10) and (counts.sum(axis=1) == 40).all()  # min(n, view_draws) draws, one vote per view
    label = cert.candidate if cert.abstained else cert.label
    # 9 tiles in the patches' 3 × 3 grid, none over another (from the first frame's top left corner on): each tile's
    # frame has its agreement colour (green: its top class is the prediction; red: another class)
    pixels = np.asarray(result.picture)
    framed = (pixels == AGREE).all(axis=2) | (pixels == DISAGREE).all(axis=2)
    top, left = np.argwhere(framed)[0]
    cell_w, cell_h, gap = TILE_SIDE + 8, TILE_SIDE + 8 + LEGEND_FONT + 8, 10
    for view, votes in enumerate(counts):
        row, column = divmod(view, 3)
        expected = AGREE if votes.argmax() == label else DISAGREE
        assert tuple(pixels[top + row * (cell_h + gap) + 1, left + column * (cell_w + gap) + cell_w // 2]) == expected
    assert "9 patches of 16×16, stride 8×8" in result.summary


def test_every_method_certifies_the_default_example_on_its_own_defaults(certifier: AppCertifier) -> None:
    """Choosing a method switches the default model to one that works with it; each then certifies digit #0."""
    image, truth = digit_example(0)
    defaults = ImageRequest()
    radii = {}
    for method in METHODS:
        settings = after_method_choice(certifier.catalog, defaults.model, method)
        request = ImageRequest(method=method, model=settings.model or defaults.model, sigma=settings.sigma or defaults.sigma,
                               p=settings.p or defaults.p,
                               indicator=defaults.indicator if settings.indicator is None else settings.indicator)
        cert = certifier.certify_image(image, request, truth=truth).certificate
        assert cert.label == truth, (method, cert)
        radii[method] = cert.radius
    assert min(radii.values()) > 0.4, radii


def test_image_hierarchical_budget_table(certifier: AppCertifier) -> None:
    image, truth = digit_example(1)
    request = ImageRequest(**FAST, model="embedded:digits_cnn_hier.p_0.85_sigma_0.25", method="Hierarchical", p=0.85,
                           indicator=True)
    result = certifier.certify_image(image, request, truth=truth)
    rs = [r for r, _ in result.budgets]
    assert rs == [1, 2, 3, 4]  # 0.85^4 > 1/2 > 0.85^5
    budgets = [b for _, b in result.budgets]
    assert budgets[0] == pytest.approx(result.certificate.radius)
    assert all(a >= b for a, b in zip(budgets, budgets[1:])), "more changed pixels never get a larger budget"
    # the ball of hierarchical smoothing: at most one changed pixel (r = 1) with L2 norm below ε(1)
    assert result.ball.pixels == 1 and result.ball.norm < budgets[0]
    assert "r = 1 changed pixel" in result.ball_text


class SplitVote(nn.Module):
    """Votes for whichever of the first 10 pixels of the top row is brightest: under noise, about 1/10 each."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :10] * 100


def test_advice_after_an_abstention_follows_the_plot(catalog: ModelCatalog) -> None:
    local = ModelCatalog(dict(catalog.choices))
    local.add(ModelChoice("test:split", "splits its votes", IMAGE, "split"), loader=SplitVote)
    certifier = AppCertifier(local, device="cpu")
    image = torch.full((3, 32, 32), 0.5)
    split = certifier.certify_image(image, ImageRequest(model="test:split", n0=10, n=200))
    share = max(split.certificate.counts.values()) / 200
    assert split.certificate.abstained and share < 0.5
    assert "More samples cannot help" in split.summary and "not above 1/2" in split.summary
    assert not any(split.sample_plot.axes[0].lines[0].get_data()[1]), "the plot is flat at 0 too"
    few = certifier.certify_image(digit_example(0)[0], ImageRequest(n0=10, n=5))
    sizes, radii = few.sample_plot.axes[0].lines[0].get_data()
    first = next(int(size) for size, radius in zip(sizes, radii) if radius > 0)
    assert few.certificate.abstained and f"about N = {first:,} estimation samples would certify" in few.summary


def test_choosing_a_method_or_a_model_keeps_the_two_compatible(catalog: ModelCatalog) -> None:
    gaussian, hierarchical = "embedded:digits_cnn.sigma_0.25", "embedded:digits_cnn_hier.p_0.85_sigma_0.25"
    to_hierarchical = after_method_choice(catalog, gaussian, "Hierarchical")
    assert (to_hierarchical.model, to_hierarchical.sigma, to_hierarchical.p, to_hierarchical.indicator) == (
        hierarchical, 0.25, 0.85, True)
    assert "Switched the model to digits_cnn_hier" in to_hierarchical.card and "Trained on" in to_hierarchical.card
    back = after_method_choice(catalog, hierarchical, "Smooth-Reduce")
    assert back.model == gaussian and "indicator channel that only hierarchical smoothing feeds" in back.card
    assert after_method_choice(catalog, gaussian, "Smooth-Reduce").model is None, "compatible: nothing changes"
    assert after_model_choice(catalog, hierarchical, "Gaussian").method == "Hierarchical"
    assert after_model_choice(catalog, "embedded:digits_cnn.sigma_0.50", "Hierarchical").method == "Gaussian"
    local = ModelCatalog(dict(catalog.choices))
    local.add(ModelChoice("timm:resnet18.a1_in1k", "resnet18.a1_in1k (timm)", IMAGE, "resnet18.a1_in1k"))
    timm = after_method_choice(local, "timm:resnet18.a1_in1k", "Hierarchical")
    assert timm.model is None and timm.indicator is False and "indicator channel is off" in timm.card


def test_image_from_a_checkpoint_in_the_models_folder(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = load_embedded_model("digits_cnn.sigma_0.25")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    certifier = AppCertifier(ModelCatalog.scan(tmp_path, local_caches=False), device="cpu")
    keys = {choice.key for choice in certifier.catalog.for_task(IMAGE)}
    assert "checkpoint:mine.safetensors" in keys and not any("notes" in key for key in keys)
    image, truth = digit_example(2)
    request = ImageRequest(**FAST, model="checkpoint:mine.safetensors", arch="digits_cnn.sigma_0.25")
    from_checkpoint = certifier.certify_image(image, request).certificate
    embedded = certifier.certify_image(image, ImageRequest(**FAST)).certificate
    assert (from_checkpoint.counts, from_checkpoint.radius) == (embedded.counts, embedded.radius)
    with pytest.raises(InvalidParameterError, match="give its architecture"):
        certifier.certify_image(image, ImageRequest(**FAST, model="checkpoint:mine.safetensors"))
    with pytest.raises(InvalidParameterError, match="must be a model name, not a path"):
        certifier.certify_image(image, ImageRequest(**FAST, model="checkpoint:mine.safetensors",
                                                    arch=str(tmp_path / "mine.safetensors")))


def test_only_catalog_keys_reach_a_model_never_a_path(certifier: AppCertifier, tmp_path: Path) -> None:
    image, _ = digit_example(0)
    for key in ("/etc/passwd", "../mine.safetensors", "resnet18", "checkpoint:/etc/passwd", "embedded:digits_c3d.sigma_0.25"):
        with pytest.raises(InvalidParameterError, match="unknown model"):
            certifier.certify_image(image, ImageRequest(**FAST, model=key))
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "link.safetensors").symlink_to(outside)
    assert not [c for c in ModelCatalog.scan(folder, local_caches=False).choices.values() if c.checkpoint is not None]


def test_timm_models_are_offered_only_with_cached_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert not [c for c in ModelCatalog.scan().choices.values() if c.key.startswith(("timm:", "torchvision:"))]
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"weights")
    offered = {(c.key, c.task) for c in ModelCatalog.scan().choices.values() if c.key.startswith("timm:")}
    assert offered == {("timm:resnet18.a1_in1k", IMAGE), ("timm:resnet18.a1_in1k#framewise", VIDEO)}


# ------------------------------------------------------------------------------------------------ direct: video, segmentation


def test_video_subclip_votes_along_time(certifier: AppCertifier) -> None:
    clip, truth = clip_example(0)
    request = VideoRequest(n0=4, n=20, subclips=True, subclip_length=8, subclip_stride=4)
    result = certifier.certify_video(clip, request, truth=truth)
    assert result.certificate.views == 3 and result.view_counts.shape == (3, 10)
    assert (result.view_counts.sum(axis=1) == 20).all()
    segments = result.votes_plot.axes[0].collections
    assert [tuple(s.get_segments()[0][:, 0]) for s in segments] == [(0, 7), (4, 11), (8, 15)]
    assert "16 frames × 3×32×32 values" in result.summary and f"True class: digit {truth}" in result.summary
    whole = certifier.certify_video(clip, VideoRequest(n0=4, n=20, model="embedded:digits_cnn.sigma_0.25#framewise"))
    assert whole.view_counts.shape[0] == 1 and whole.view_counts.sum() == 20  # one view: the whole clip


def test_segmentation_maps_and_eps_curves(certifier: AppCertifier) -> None:
    image, truth = scene_example(0)
    request = SegmentationRequest(n0=2, n=10, grid_rows=1, grid_cols=2, eps="0.5, 0, 0.1")
    lines: list[ProgressLine] = []
    result = certifier.certify_segmentation(image, request, truth=truth, progress=lines.append)
    # the page's progress: draws done of the whole run's (1 isotropic + 2 localized cells) × (n0 + n), cell k of K
    assert lines[0].done == 0 and lines[-1].done == lines[-1].total == 3 * 12
    assert [line.done for line in lines] == sorted(line.done for line in lines)
    assert "estimate (n), cell 2 of 2" in {line.phase for line in lines}
    assert [run.name for run in result.runs] == ["isotropic", "localized"]
    for run in result.runs:
        cert = run.certificate
        top, left = TITLE_FONT + 12, (run.mask.width - 256) // 2  # under its title, above its legend
        mask = np.asarray(run.mask)[top:top + 256, left:left + 256]
        magenta = (mask == ABSTAIN_COLOUR).all(axis=2)
        assert magenta.sum() == cert.abstained.sum() * 4 * 4  # 64 × 64 enlarged 4×: every abstained pixel, no other
        assert run.mask.height > 256 + 2 * LEGEND_FONT, "a legend of the classes (and abstained) under the mask"
        shown = run.heatmap.axes[0].images[0].get_array()
        assert (shown.mask == cert.abstained).all(), "abstained pixels are drawn in the bad colour, with a legend"
        assert run.heatmap.axes[0].get_legend() is not None or not cert.abstained.any()
    curves = result.curves
    assert set(curves) == {"isotropic", "localized, per pixel", "localized, collective"}
    labelled = (truth != 255).sum()
    for name, (eps, ratios) in curves.items():
        assert eps == [0.0, 0.1, 0.5]
        assert all(0 <= r <= 1 for r in ratios) and all(a >= b for a, b in zip(ratios, ratios[1:])), name
    localized = result.runs[1].certificate
    assert curves["localized, per pixel"][1][1] == pytest.approx(localized.certified(0.1, truth).sum() / labelled)
    # one shared perturbation can flip fewer pixels than each pixel's own worst case: collective ≥ per pixel
    assert all(c >= p for c, p in zip(curves["localized, collective"][1], curves["localized, per pixel"][1]))
    assert len(result.table) == 6 and result.eps_plot.axes[0].get_ylabel().startswith("certified correct pixels")
    styles = {(line.get_linestyle(), line.get_marker()) for line in result.eps_plot.axes[0].lines}
    assert len(styles) == 3, "curves that coincide stay distinguishable"
    only_isotropic = certifier.certify_segmentation(image, SegmentationRequest(n0=2, n=10, localized_model=""))
    assert set(only_isotropic.curves) == {"isotropic"}


def test_parse_eps() -> None:
    assert parse_eps("1, 0.5 0.25;0", 12) == [0.0, 0.25, 0.5, 1.0]
    for bad in ("", "a, b", "-1", "nan"):
        with pytest.raises(InvalidParameterError):
            parse_eps(bad, 12)
    with pytest.raises(InvalidParameterError, match="between 1 and 2"):
        parse_eps("1, 2, 3", 2)


# ------------------------------------------------------------------------------------------------ direct: errors


class NaNModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 10), float("nan"))


class BuggyModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 10) * (1 / 0)  # a bug: ZeroDivisionError


def _image_args(**change: object) -> list[object]:
    values = dict(source="Embedded example", example=0, upload=None, model="embedded:digits_cnn.sigma_0.25", arch="",
                  num_classes=0, method="Gaussian", sigma=0.25, n0=10, n=40, alpha=0.001, seed=0, patch_size=28,
                  patch_stride=4, reduce="mean", mode="vote", p=0.85, indicator=True)
    values.update(change)
    return list(values.values())


def _video_args(**change: object) -> list[object]:
    values = dict(source="Embedded example", example=0, upload=None, model="embedded:digits_c3d.sigma_0.25", arch="",
                  num_classes=0, sigma=0.25, n0=4, n=20, alpha=0.001, seed=0, subclips=False, subclip_length=8,
                  subclip_stride=4, reduce="mean", mode="vote")
    values.update(change)
    return list(values.values())


@pytest.mark.parametrize(("change", "message"), [
    (dict(sigma=0.0), "sigma must be finite and > 0"),
    (dict(n=0), "n must be a whole number >= 1"),
    (dict(n=10**7), "more than this app allows"),
    (dict(n0=2.5), "n0 must be a whole number"),
    (dict(alpha=1.5), "alpha must lie strictly between 0 and 1"),
    (dict(method="Smooth-Reduce", patch_size=40), "larger than the image"),
    (dict(method="Smooth-Reduce", patch_size=8, patch_stride=12), "stride (12, 12) is larger than the patch"),
    (dict(method="Smooth-Reduce", mode="probit-mean", reduce="max"), "use reduce='mean'"),
    (dict(method="Hierarchical", p=0.0), "selection probability p must lie in (0, 1]"),
    (dict(model="embedded:digits_cnn_hier.p_0.85_sigma_0.25"), "built for hierarchical smoothing"),
    (dict(example=99), "example = 99 is more than this app allows"),
    (dict(source="Upload"), "upload an image first"),
    (dict(model="/etc/passwd"), "unknown model"),
])
def test_impossible_parameters_show_our_message(handlers: Handlers, change: dict, message: str) -> None:
    with pytest.raises(gr.Error) as caught:
        handlers.certify_image(*_image_args(**change))
    assert message in str(caught.value)


def test_bad_and_large_uploads_show_our_message(handlers: Handlers, tmp_path: Path) -> None:
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    with pytest.raises(gr.Error) as caught:
        handlers.certify_image(*_image_args(source="Upload", upload=str(bad)))
    assert "holiday.png" in str(caught.value) and "Upload a complete PNG" in str(caught.value)
    assert str(tmp_path) not in str(caught.value), "no server path in the page"
    truncated = tmp_path / "cut.png"
    _png(truncated, digit_example(0)[0])
    truncated.write_bytes(truncated.read_bytes()[:-40])
    picture, note = handlers.preview(IMAGE, "Upload", 0, str(truncated))
    assert picture is None and note.startswith("**Cannot use this file.**") and "cut.png" in note
    large = _png(tmp_path / "large.png", torch.zeros(3, 1100, 1000, dtype=torch.uint8))
    with pytest.raises(gr.Error, match=r"1000×1100 pixels; this app certifies images of at most 1,048,576"):
        handlers.certify_image(*_image_args(source="Upload", upload=str(large)))
    good = _png(tmp_path / "seven.png", digit_example(0)[0])
    summary, *_ = handlers.certify_image(*_image_args(source="Upload", upload=str(good)))
    assert "True class" not in summary and ("Certified" in summary or "Abstained" in summary)


def test_a_photo_gets_its_certificate_with_a_warning_that_it_is_unlike_the_training_data(handlers: Handlers,
                                                                                          tmp_path: Path) -> None:
    from sklearn.datasets import load_sample_image

    photo = tmp_path / "temple.jpg"
    Image.fromarray(load_sample_image("china.jpg")).save(photo)
    summary, *_ = handlers.certify_image(*_image_args(source="Upload", upload=str(photo)))
    assert "This input is unlike the data the model was trained on" in summary
    assert "says nothing about what this input shows" in summary
    assert summary.index("unlike the data") < summary.index("| certificate |"), "under the verdict, not below the table"


def test_video_limits_show_our_message(catalog: ModelCatalog, tmp_path: Path) -> None:
    from vision_rs.models.embedded.clips import write_clips

    path = write_clips(tmp_path, limit=1)[0]
    pages = Handlers(AppCertifier(catalog, device="cpu"))
    strip, note = pages.preview(VIDEO, "Upload", 0, str(path))
    assert strip.size == (8 * 96 + 7 * 4, 2 * 96 + 4)  # the uploaded file's 16 frames
    assert note == "clip_0000.mp4: 16 frames (0–15) of 32×32 pixels; the certificate covers all of them, every pixel and channel."
    longer = _mp4(tmp_path / "longer.mp4", torch.cat([clip_example(0)[0], clip_example(1)[0][:8]]))
    strip, note = pages.preview(VIDEO, "Upload", 0, str(longer))
    assert strip.size == (8 * 64 + 7 * 4, 3 * 64 + 2 * 4) and "24 frames (0–23)" in note  # every frame, smaller
    strict = Handlers(AppCertifier(catalog, AppLimits(max_video_frames=8), device="cpu"))
    strip, note = strict.preview(VIDEO, "Upload", 0, str(path))
    assert strip is None and "clip_0000.mp4 has 16 frames; this app certifies clips of at most 8 frames" in note
    for name, content in (("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100), ("empty.mp4", b"")):
        (tmp_path / name).write_bytes(content)
        strip, note = strict.preview(VIDEO, "Upload", 0, str(tmp_path / name))
        assert strip is None and "Cannot use this file" in note and name in note and str(tmp_path) not in note
    with pytest.raises(gr.Error, match="empty.mp4"):
        strict.certify_video(*_video_args(source="Upload", upload=str(tmp_path / "empty.mp4")))


def test_nan_output_and_bugs_show_a_message_not_a_traceback(catalog: ModelCatalog) -> None:
    local = ModelCatalog(dict(catalog.choices))
    local.add(ModelChoice("test:nan", "NaN model", IMAGE, "nan"), loader=NaNModel)
    local.add(ModelChoice("test:bug", "buggy model", IMAGE, "bug"), loader=BuggyModel)
    pages = Handlers(AppCertifier(local, device="cpu"))
    with pytest.raises(gr.Error, match="NaN or Inf logits"):
        pages.certify_image(*_image_args(model="test:nan"))
    with pytest.raises(gr.Error) as caught:
        pages.certify_image(*_image_args(model="test:bug"))
    assert caught.value.message == "internal error (ZeroDivisionError); the server's log has the details"
    with pytest.raises(ModelOutputError):  # the certifier itself raises our error type
        pages.certifier.certify_image(digit_example(0)[0], ImageRequest(**FAST, model="test:nan"))


def test_a_cancelled_run_stops_at_the_next_batch_and_restores_train_mode(catalog: ModelCatalog) -> None:
    stop = threading.Event()

    class Tripwire(DigitsCNN):
        """Sets the stop event during its second forward pass, and records its mode in each."""

        def __init__(self) -> None:
            super().__init__()
            self.calls, self.modes = 0, []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.modes.append(self.training)
            if self.calls == 2:
                stop.set()
            return super().forward(x)

    model = Tripwire().train()
    local = ModelCatalog(dict(catalog.choices))
    local.add(ModelChoice("test:tripwire", "tripwire", IMAGE, "tripwire"), loader=lambda: model)
    certifier = AppCertifier(local, device="cpu", batch_size=10)
    request = ImageRequest(model="test:tripwire", n0=10, n=1000, alpha=0.001, seed=0)
    with pytest.raises(CertificationCancelled):
        certifier.certify_image(digit_example(0)[0], request, stop=stop)
    assert model.calls == 2, "the run stops before the forward pass after the one that saw the stop"
    assert model.modes == [False, False] and model.training, "eval while certifying, train mode restored afterwards"
    result = certifier.certify_image(digit_example(0)[0], ImageRequest(model="test:tripwire", **FAST))
    assert result.certificate.n == 40 and model.training  # no hook left behind


def test_run_progress_adds_up_phases_and_estimates_the_time_left() -> None:
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    lines: list[ProgressLine] = []
    progress = RunProgress(300, lines.append, clock=lambda: next(clock))
    progress("select (n0)", 0, 100)
    progress("select (n0)", 100, 100)  # 100 draws in 1 s
    progress("estimate (n)", 0, 200)
    progress("estimate (n)", 100, 200)
    assert [(line.done, line.total) for line in lines] == [(0, 300), (100, 300), (100, 300), (200, 300)]
    assert lines[0].seconds_left is None and lines[1].seconds_left == pytest.approx(2.0)
    assert lines[-1].text == "estimate (n) · about 1.5 s left"
    progress.plan(100, "the perturbed input")
    progress("select (n0)", 0, 100)
    assert (lines[-1].done, lines[-1].total, lines[-1].phase) == (300, 400, "the perturbed input: select (n0)")


def test_session_runs_stop_what_cancel_and_a_closed_page_ask_for() -> None:
    runs = SessionRuns()
    asked = runs.ask("page", IMAGE)
    assert runs.begin("page", IMAGE) is asked, "the handler takes the run the page registered"
    assert runs.cancel("page", IMAGE) and asked.stop.is_set() and asked.cancelled
    assert not runs.cancel("page", IMAGE), "nothing left to cancel"
    first = runs.ask("page", IMAGE)
    second = runs.ask("page", IMAGE)  # Certify pressed again: the first run is replaced
    assert first.stop.is_set() and first.replaced and not second.stop.is_set()
    video = runs.ask("page", VIDEO)
    other = runs.ask("another page", IMAGE)
    assert runs.close("page") == 2 and second.stop.is_set() and video.stop.is_set() and not other.stop.is_set()
    failed = runs.begin("another page", IMAGE)
    failed.error = "bad file"
    runs.end("another page", IMAGE, failed)
    assert runs.failure("another page", IMAGE) == "bad file" and runs.failure("another page", IMAGE) is None
    runs.ask("another page", IMAGE)  # asked for, then refused before its turn (queue full)
    assert "did not start it" in runs.failure("another page", IMAGE)
    api = runs.begin("client", IMAGE)  # a call through the API: its caller gets the error, nothing is kept
    api.error = "bad file"
    runs.end("client", IMAGE, api)
    assert runs.failure("client", IMAGE) is None and runs.active() == 0


# ------------------------------------------------------------------------------------------------ command line


def test_command_line_app_defaults_and_errors(capsys: pytest.CaptureFixture) -> None:
    import subprocess
    import sys

    from vision_rs.cli import build_parser, main

    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.models, args.share, args.max_file_size) == ("127.0.0.1", None, None, False, 20 << 20)
    assert main(["app", "--models", "/no/such/folder"]) == 2
    assert "--models /no/such/folder: no such folder" in capsys.readouterr().err
    launcher = Path(__file__).resolve().parents[1] / "demos" / "app.py"
    shown = subprocess.run([sys.executable, str(launcher), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--models DIR" in shown.stdout and "127.0.0.1" in shown.stdout


# ------------------------------------------------------------------------------------------------ the running server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CountingCNN(DigitsCNN):
    """The embedded σ = 0.25 digits CNN, counting its forward passes (so a test sees whether a run still computes)."""

    def __init__(self) -> None:
        super().__init__()
        self.load_state_dict(load_embedded_model("digits_cnn.sigma_0.25").state_dict())
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_the_page_marks_only_the_certificate_and_hides_what_has_no_content_yet(handlers: Handlers) -> None:
    """Layout the browser shows (issue 25, item 13): a run's progress and errors mark the certificate's box only; the
    results column, the hierarchical budget table and the upload boxes are hidden until they have something to show."""
    config = build_app(handlers).get_config_file()
    components = {component["id"]: component for component in config["components"]}
    certify = {d["api_name"]: d for d in config["dependencies"] if str(d.get("api_name")).startswith("certify_")}
    assert sorted(certify) == ["certify_image", "certify_segmentation", "certify_video"]
    for name, dependency in certify.items():
        marked = [components[i]["props"].get("elem_id") for i in dependency["show_progress_on"]]
        assert marked == [name.replace("certify_", "") + "-certificate"], name
    hidden = [(c["type"], c["props"].get("label") or c["props"].get("elem_id")) for c in config["components"]
              if c["props"].get("visible") is False]
    assert [kind for kind, _ in hidden].count("column") == 3  # one results column a tab
    assert any(kind == "dataframe" and "Hierarchical" in str(label) for kind, label in hidden)
    assert sum(kind == "file" and "Upload" in str(label) for kind, label in hidden) == 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The app served on a free localhost port (in this process), with a models folder and small limits; its default
    image model counts its forward passes."""
    models = tmp_path_factory.mktemp("models")
    (models / "secret.safetensors").write_bytes(b"not served")
    config = AppConfig(port=_free_port(), models_dir=str(models), local_caches=False, device="cpu", queue_size=2,
                       limits=AppLimits(max_file_size=200_000))
    before = os.environ.pop("GRADIO_TEMP_DIR", None)
    catalog = ModelCatalog.scan(models, local_caches=False)
    counting = CountingCNN()
    catalog.add(catalog.get(ImageRequest().model, IMAGE), loader=lambda: counting)
    demo, url = launch_app(config, block=False, certifier=AppCertifier(catalog, config.limits, "cpu", batch_size=50))
    assert demo.server_name == "127.0.0.1" and not demo.share, "localhost only, no public link, unless asked"
    yield url, models, counting
    demo.close()
    shutil.rmtree(os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
    os.environ.pop("GRADIO_TEMP_DIR")
    if before is not None:
        os.environ["GRADIO_TEMP_DIR"] = before


def _computing(counting: CountingCNN, within: float = 0.5) -> bool:
    """Whether the counting model runs a forward pass within ``within`` seconds."""
    calls = counting.calls
    time.sleep(within)
    return counting.calls != calls


def test_http_certify_an_embedded_example(server) -> None:
    from gradio_client import Client

    url, _, _ = server
    client = Client(url, verbose=False)
    summary, shares, patches, ball, ball_text, budgets, plot = client.predict(*_image_args(example=5),
                                                                               api_name="/certify_image")
    truth = digit_example(5)[1]
    assert f"True class: digit {truth}" in summary and "### Certified: digit" in summary
    assert shares["confidences"] and patches is None and not budgets["data"], "Gaussian: no patches, no budgets"
    assert Image.open(ball).size[0] == 3 * 256 + 2 * 12 and "inside the certified ball" in ball_text
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")


def test_http_uploads_bad_large_and_good_leave_no_empty_files(server, tmp_path: Path) -> None:
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _, _ = server
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a picture" * 10)
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="cannot read broken.png as an image"):
        client.predict(*_image_args(source="Upload", upload=handle_file(str(bad))), api_name="/certify_image")
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 300_000)
    with pytest.raises(Exception, match="413"):  # the client says the status; the body says why (below)
        client.predict(*_image_args(source="Upload", upload=handle_file(str(big))), api_name="/certify_image")
    refused = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes())})
    assert refused.status_code == 413 and "195 KiB" in refused.text and "Mb" not in refused.text
    image, label = digit_example(7)
    good = _png(tmp_path / "seven.png", image)
    for _ in range(2):
        summary, *_ = client.predict(*_image_args(source="Upload", upload=handle_file(str(good))), api_name="/certify_image")
        assert f"### Certified: digit {label}" in summary and "True class" not in summary
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    assert [path.name for path in folder.rglob("*") if path.name.endswith("seven.png")]
    assert not [path for path in folder.rglob("*") if path.is_file() and path.stat().st_size == 0], "no empty files"


def test_http_serves_no_file_outside_its_own(server, tmp_path: Path) -> None:
    import httpx

    url, models, _ = server
    own = Path(os.environ["GRADIO_TEMP_DIR"]) / "own.txt"
    own.write_text("ours")
    shared = Path("/tmp/gradio")
    shared.mkdir(exist_ok=True)
    planted = shared / f"planted-{os.getpid()}.txt"
    planted.write_text("another program's upload")
    try:
        assert httpx.get(url + "gradio_api/file=" + str(own)).text == "ours"
        for prefix in ("gradio_api/file=", "file="):
            for path in ("/etc/passwd", str(models / "secret.safetensors"), str(planted), str(Path(__file__).resolve()),
                         str(own.parent / ".." / "etc" / "passwd")):
                response = httpx.get(url + prefix + path)
                assert response.status_code in (403, 404), (path, response.status_code)
    finally:
        planted.unlink()
        own.unlink()


def test_http_cancel_stops_the_worker_and_frees_the_queue(server) -> None:
    from gradio_client import Client
    from gradio_client.utils import Status

    url, _, counting = server
    client = Client(url, verbose=False)
    slow = client.submit(*_image_args(n=1_000_000), api_name="/certify_image")
    deadline = time.monotonic() + 30
    while not (slow.status().progress_data or time.monotonic() > deadline):  # the run's progress reaches the client
        time.sleep(0.05)
    progress = slow.status().progress_data
    assert progress and progress[0].unit == "draws" and progress[0].length == 1_000_010
    assert progress[0].desc.startswith(("select (n0)", "estimate (n)"))
    queued = [client.submit(*_image_args(), api_name="/certify_image") for _ in range(3)]  # queue_size=2: one is refused
    joining = (Status.STARTING, Status.JOINING_QUEUE)
    while any(job.status().code in joining for job in queued) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [job.status().code for job in queued].count(Status.IN_QUEUE) == 2
    started = time.monotonic()
    cancelling = threading.Thread(target=slow.cancel, daemon=True)  # returns once the server has stopped the worker
    cancelling.start()
    cancelling.join(timeout=20)
    assert not cancelling.is_alive(), "the cancel never returned: the cancelled worker keeps computing"
    cancel_seconds = time.monotonic() - started
    outcomes = []
    for job in queued:
        try:
            outcomes.append(job.result(timeout=60)[0][:3])
        except Exception as exc:  # noqa: BLE001 - the refused one
            outcomes.append(str(exc))
    assert sum(outcome == "###" for outcome in outcomes) == 2 and any("queue" in o.lower() for o in outcomes), outcomes
    assert cancel_seconds < 10, "the cancelled worker stops within one batch"
    assert not _computing(counting)


# ------------------------------------------------------------------------------------------------ the app as a process


@pytest.fixture(scope="module", autouse=True)
def app_process(tmp_path_factory: pytest.TempPathFactory):
    """``vision-rs app`` as its own process, with its temporary folder under a folder of the test's; started when this
    module starts, so that its start-up (seconds of imports) overlaps the tests before the one that stops it."""
    folder = tmp_path_factory.mktemp("app-tmp")
    environment = {**os.environ, "TMPDIR": str(folder)}
    environment.pop("GRADIO_TEMP_DIR", None)
    port = _free_port()
    app = subprocess.Popen([sys.executable, "-m", "vision_rs", "app", "--port", str(port), "--device", "cpu"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    yield app, port, folder
    if app.poll() is None:
        app.kill()
        app.wait()


def test_sigterm_removes_the_upload_folder_like_ctrl_c(app_process, tmp_path: Path) -> None:
    import httpx

    app, port, temporary = app_process
    line = app.stdout.readline()  # type: ignore[union-attr]
    assert "open http" in line, line + app.stdout.read()  # type: ignore[union-attr]
    (folder,) = temporary.glob("vision-rs-app-*")
    upload = _png(tmp_path / "seven.png", digit_example(7)[0])
    uploaded = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": ("seven.png", upload.read_bytes())})
    assert uploaded.status_code == 200 and any(path.name == "seven.png" for path in folder.rglob("*"))
    app.send_signal(signal.SIGTERM)
    assert app.wait(timeout=30) == 0, app.stdout.read()  # type: ignore[union-attr]
    assert not folder.exists(), "SIGTERM left the upload folder behind"


# ------------------------------------------------------------------------------------------------ a real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """One headless Chromium (Selenium) at 1400×1000 for the module's browser tests, or a skip that says why."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'vision-rs[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        print("skipped: no chromium / chromedriver")
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver; .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


class Page:
    """The app's page in the browser: its certificate box, buttons and settings by element id."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, 60, poll_frequency=0.05)

    def open(self) -> float:
        """Load the page; seconds until Certify can be pressed."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ready

        started = time.monotonic()
        self.driver.get(self.url)
        self.wait.until(ready.element_to_be_clickable((By.ID, "image-certify")))
        return time.monotonic() - started

    def element(self, elem_id: str, css: str = ""):
        """The element with id ``elem_id`` (or the one ``css`` selects inside it); False while there is none."""
        from selenium.common.exceptions import NoSuchElementException
        from selenium.webdriver.common.by import By

        try:
            return self.driver.find_element(By.CSS_SELECTOR, f"#{elem_id} {css}".strip())
        except NoSuchElementException:
            return False

    def certificate(self) -> str:
        return self.element("image-certificate").text

    def choose(self, elem_id: str, value: str) -> None:
        self.element(elem_id, f"input[value='{value}']").click()

    def type(self, elem_id: str, value: str) -> None:
        box = self.element(elem_id, "input")
        box.clear()
        box.send_keys(value)

    def certify(self) -> None:
        self.element("image-certify").click()
        self.wait.until(lambda _: "Certified" not in self.certificate())  # the old result is cleared at once

    def answer(self) -> str:
        """The certificate box's text once the run has ended (its progress gone, a verdict in place)."""
        verdicts = ("Certified", "Abstained", "Cancelled", "Not certified")
        self.wait.until(lambda _: any(words in self.certificate() for words in verdicts)
                        and "draws" not in self.certificate())
        return self.certificate()

    def running(self) -> None:
        """Wait until the run's progress (draws done of the total) shows in the certificate box."""
        self.wait.until(lambda _: "draws" in self.certificate())


def test_browser_upload_certify_and_see_the_certificate(server, browser, tmp_path: Path) -> None:
    url, _, _ = server
    page = Page(browser, url)
    loaded = page.open()
    certify = page.element("image-certify")
    assert certify.rect["y"] + certify.rect["height"] <= browser.execute_script("return window.innerHeight"), \
        "Certify is visible without scrolling"
    image, label = digit_example(7)
    page.choose("image-source", "Upload")  # the upload box shows only now: an upload that fails cannot fall back
    page.wait.until(lambda _: page.element("image-upload", "input[type=file]"))
    page.element("image-upload", "input[type=file]").send_keys(str(_png(tmp_path / "digit.png", image)))
    page.wait.until(lambda _: page.element("image-input-note").text.startswith("digit.png: 32×32"))
    started = time.monotonic()
    page.certify()
    text = page.answer()
    answered = time.monotonic() - started
    assert f"Certified: digit {label}" in text and "True class" not in text, "the uploaded file was certified"
    ball = page.wait.until(lambda _: page.element("image-ball", "img"))
    assert browser.execute_script("return arguments[0].naturalWidth", ball) == 3 * 256 + 2 * 12
    assert "not an attack result" in page.element("image-ball-text").text
    print(f"page ready in {loaded:.1f} s; certificate {answered:.1f} s after pressing Certify")


def test_browser_hierarchical_on_its_defaults_certifies(server, browser) -> None:
    url, _, _ = server
    page = Page(browser, url)
    page.open()
    page.choose("image-method", "Hierarchical")
    page.wait.until(lambda _: "Switched the model to digits_cnn_hier" in page.element("image-model-card").text)
    page.certify()
    assert "Certified: digit 0" in page.answer()


def test_browser_cancel_and_a_failure_say_so_where_the_result_was(server, browser) -> None:
    url, _, counting = server
    page = Page(browser, url)
    page.open()
    page.certify()
    first = page.answer()
    assert "Certified: digit 0" in first
    page.type("image-n", "1000000")
    page.certify()
    page.running()
    page.element("image-cancel").click()
    assert page.answer().startswith("Cancelled"), "a cancelled run says so where the result was"
    assert not _computing(counting)
    page.type("image-n", "0")
    page.certify()
    assert page.answer() == "Not certified\nThe run failed: n must be a whole number >= 1, got 0", \
        "a failed run says so where the result was"


def test_browser_reload_during_a_long_run_frees_the_server(server, browser) -> None:
    from gradio_client import Client

    url, _, counting = server
    client = Client(url, verbose=False)
    started = time.monotonic()
    client.predict(*_image_args(n=2_000), api_name="/certify_image")
    alone = time.monotonic() - started
    page = Page(browser, url)
    page.open()
    page.type("image-n", "1000000")
    page.certify()
    page.running()
    reloaded = time.monotonic()
    page.open()
    while _computing(counting, 0.1) and time.monotonic() - reloaded < 10:
        pass
    idle = time.monotonic() - reloaded
    started = time.monotonic()
    client.predict(*_image_args(n=2_000), api_name="/certify_image")
    after = time.monotonic() - started
    print(f"server idle {idle:.2f} s after the reload; the next run took {after:.2f} s (alone: {alone:.2f} s)")
    assert idle < 2.0, "the abandoned run stops within about a second"
    assert after < alone + 2.0, "the next run does not wait behind the abandoned one"
