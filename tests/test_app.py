"""The Gradio app: its functions called directly, the running server over HTTP (gradio_client), and one end-to-end
run in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium; skipped, with the reason,
only when no browser is installed)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

gr = pytest.importorskip("gradio")

from vision_rs.app.catalog import IMAGE, SEGMENTATION, VIDEO, ModelCatalog, ModelChoice  # noqa: E402
from vision_rs.app.certify import (  # noqa: E402
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
from vision_rs.app.pictures import ABSTAIN_COLOUR, AGREE, DISAGREE  # noqa: E402
from vision_rs.app.ui import AppConfig, Handlers, launch_app  # noqa: E402
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
    return AppCertifier(catalog, device="cpu", progress=False)


@pytest.fixture(scope="module")
def handlers(certifier: AppCertifier) -> Handlers:
    return Handlers(certifier)


def _png(path: Path, pixels: torch.Tensor) -> Path:
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path


# ------------------------------------------------------------------------------------------------ direct: image


def test_image_gaussian_certificate_picture_and_projection(certifier: AppCertifier) -> None:
    image, truth = digit_example(3)
    result = certifier.certify_image(image, ImageRequest(**FAST), truth=truth)
    cert = result.certificate
    assert cert.method == "gaussian" and cert.n == 40
    heading = f"Certified: digit {cert.label}, radius {cert.radius:.4f}" if not cert.abstained else "Abstained"
    assert heading in result.summary and f"True class: digit {truth}" in result.summary
    assert sum(result.shares.values()) == pytest.approx(1.0) or len(cert.counts) > 5
    assert result.picture.size == (256, 256)  # 32 × 32 enlarged 8×
    assert result.budgets == [] and result.view_counts is None
    # the projection uses the method's own bound: at the run's own n it gives the certificate's radius
    sizes, radii = result.sample_plot.axes[0].lines[0].get_data()
    assert radii[list(sizes).index(cert.n)] == pytest.approx(cert.radius, abs=1e-12)
    assert np.all(np.diff(radii) >= -1e-9), "more samples at the same shares never certify less"


def test_image_smooth_reduce_draws_the_patch_grid_with_each_views_vote(certifier: AppCertifier) -> None:
    image, truth = digit_example(0)
    request = ImageRequest(**FAST, method="Smooth-Reduce", patch_size=16, patch_stride=8, mode="smoothed")
    result = certifier.certify_image(image, request, truth=truth)
    cert, counts = result.certificate, result.view_counts
    assert cert.views == 9 and cert.c_max == 4
    assert counts.shape == (9, 10) and (counts.sum(axis=1) == 40).all()  # min(n, view_draws) draws, one vote per view
    label = cert.candidate if cert.abstained else cert.label
    # the last patch drawn (bottom right, top-left corner at (16, 16), 8× enlarged): its outline's top edge has its
    # agreement colour (green: its top class is the prediction)
    expected = AGREE if counts[8].argmax() == label else DISAGREE
    assert tuple(np.asarray(result.picture)[16 * 8, 16 * 8 + 20]) == expected
    assert "patch grid shows each view's top class" in result.summary
    assert "9 patches of 16×16, stride 8×8" in result.summary


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


def test_image_from_a_checkpoint_in_the_models_folder(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = load_embedded_model("digits_cnn.sigma_0.25")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    certifier = AppCertifier(ModelCatalog.scan(tmp_path, local_caches=False), device="cpu", progress=False)
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
    assert result.strip.size == (8 * 96 + 7 * 4, 2 * 96 + 4)  # 16 frames in two rows of 8
    whole = certifier.certify_video(clip, VideoRequest(n0=4, n=20, model="embedded:digits_cnn.sigma_0.25#framewise"))
    assert whole.view_counts.shape[0] == 1 and whole.view_counts.sum() == 20  # one view: the whole clip


def test_segmentation_maps_and_eps_curves(certifier: AppCertifier) -> None:
    image, truth = scene_example(0)
    request = SegmentationRequest(n0=2, n=10, grid_rows=1, grid_cols=2, eps="0.5, 0, 0.1")
    result = certifier.certify_segmentation(image, request, truth=truth)
    assert [run.name for run in result.runs] == ["isotropic", "localized"]
    for run in result.runs:
        cert = run.certificate
        magenta = (np.asarray(run.mask) == ABSTAIN_COLOUR).all(axis=2)
        assert magenta.sum() == cert.abstained.sum() * 4 * 4  # 64 × 64 enlarged 4×: every abstained pixel, no other
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
                  num_classes=0, method="Gaussian", sigma=0.25, n0=10, n=40, alpha=0.001, seed=0, patch_size=24,
                  patch_stride=8, reduce="mean", mode="vote", p=0.85, indicator=True)
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
    with pytest.raises(gr.Error, match="cut.png"):
        handlers.preview(IMAGE, "Upload", 0, str(truncated))
    large = _png(tmp_path / "large.png", torch.zeros(3, 1100, 1000, dtype=torch.uint8))
    with pytest.raises(gr.Error, match=r"1000×1100 pixels; this app certifies images of at most 1,048,576"):
        handlers.certify_image(*_image_args(source="Upload", upload=str(large)))
    good = _png(tmp_path / "seven.png", digit_example(0)[0])
    summary, *_ = handlers.certify_image(*_image_args(source="Upload", upload=str(good)))
    assert "True class" not in summary and ("Certified" in summary or "Abstained" in summary)


def test_video_limits_show_our_message(catalog: ModelCatalog, tmp_path: Path) -> None:
    from vision_rs.models.embedded.clips import write_clips

    path = write_clips(tmp_path, limit=1)[0]
    strip = Handlers(AppCertifier(catalog, device="cpu", progress=False)).preview(VIDEO, "Upload", 0, str(path))
    assert strip.size == (8 * 96 + 7 * 4, 2 * 96 + 4)  # the uploaded file's 16 frames
    strict = Handlers(AppCertifier(catalog, AppLimits(max_video_frames=8), device="cpu", progress=False))
    with pytest.raises(gr.Error, match="clip_0000.mp4 has 16 frames; this app certifies clips of at most 8 frames"):
        strict.preview(VIDEO, "Upload", 0, str(path))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(gr.Error, match="broken.mp4") as caught:
        strict.preview(VIDEO, "Upload", 0, str(bad))
    assert str(tmp_path) not in str(caught.value)


def test_nan_output_and_bugs_show_a_message_not_a_traceback(catalog: ModelCatalog) -> None:
    local = ModelCatalog(dict(catalog.choices))
    local.add(ModelChoice("test:nan", "NaN model", IMAGE, "nan"), loader=NaNModel)
    local.add(ModelChoice("test:bug", "buggy model", IMAGE, "bug"), loader=BuggyModel)
    pages = Handlers(AppCertifier(local, device="cpu", progress=False))
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
    certifier = AppCertifier(local, device="cpu", progress=False, batch_size=10)
    request = ImageRequest(model="test:tripwire", n0=10, n=1000, alpha=0.001, seed=0)
    with pytest.raises(CertificationCancelled):
        certifier.certify_image(digit_example(0)[0], request, stop=stop)
    assert model.calls == 2, "the run stops before the forward pass after the one that saw the stop"
    assert model.modes == [False, False] and model.training, "eval while certifying, train mode restored afterwards"
    result = certifier.certify_image(digit_example(0)[0], ImageRequest(model="test:tripwire", **FAST))
    assert result.certificate.n == 40 and model.training  # no hook left behind


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The app served on a free localhost port (in this process), with a models folder and small limits."""
    models = tmp_path_factory.mktemp("models")
    (models / "secret.safetensors").write_bytes(b"not served")
    config = AppConfig(port=_free_port(), models_dir=str(models), local_caches=False, device="cpu", queue_size=2,
                       limits=AppLimits(max_file_size=200_000))
    before = os.environ.pop("GRADIO_TEMP_DIR", None)
    catalog = ModelCatalog.scan(models, local_caches=False)
    counting = CountingCNN()
    catalog.add(ModelChoice("test:counting", "counts its forward passes", IMAGE, "counting"), loader=lambda: counting)
    demo, url = launch_app(config, block=False, certifier=AppCertifier(catalog, config.limits, "cpu", batch_size=50))
    assert demo.server_name == "127.0.0.1" and not demo.share, "localhost only, no public link, unless asked"
    yield url, models, counting
    demo.close()
    shutil.rmtree(os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
    os.environ.pop("GRADIO_TEMP_DIR")
    if before is not None:
        os.environ["GRADIO_TEMP_DIR"] = before


class CountingCNN(DigitsCNN):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_http_certify_an_embedded_example(server) -> None:
    from gradio_client import Client

    url, _, _ = server
    client = Client(url, verbose=False)
    summary, shares, picture, budgets, plot = client.predict(*_image_args(example=5), api_name="/certify_image")
    image, truth = digit_example(5)
    assert f"True class: digit {truth}" in summary and ("### Certified: digit" in summary or "### Abstained" in summary)
    assert shares["confidences"] and Image.open(picture).size == (256, 256)
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")


def test_http_corrupt_upload_returns_our_error(server, tmp_path: Path) -> None:
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
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(*_image_args(source="Upload", upload=handle_file(str(big))), api_name="/certify_image")


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


def test_http_cancel_stops_the_worker_and_frees_the_queue(server) -> None:
    from gradio_client import Client
    from gradio_client.utils import Status

    url, _, counting = server
    client = Client(url, verbose=False)
    slow = client.submit(*_image_args(n=1_000_000, model="test:counting"), api_name="/certify_image")
    deadline = time.monotonic() + 30
    while not (slow.status().progress_data or time.monotonic() > deadline):  # the engine's tqdm bar reaches the client
        time.sleep(0.05)
    progress = slow.status().progress_data
    assert progress and progress[0].desc in ("select (n0)", "estimate (n)")
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
    calls = counting.calls
    time.sleep(0.5)
    assert counting.calls == calls, "the cancelled run's worker has stopped before the cancel returns"
    outcomes = []
    for job in queued:
        try:
            outcomes.append(job.result(timeout=60)[0][:3])
        except Exception as exc:  # noqa: BLE001 - the refused one
            outcomes.append(str(exc))
    assert sum(outcome == "###" for outcome in outcomes) == 2 and any("queue" in o.lower() for o in outcomes), outcomes
    assert cancel_seconds < 10, "the cancelled worker stops within one batch"


# ------------------------------------------------------------------------------------------------ a real browser


def _browser():
    """A headless Chromium driven by Selenium, or the reason there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install 'vision-rs[dev]')"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return None, "no chromium / chromedriver (apt-get install chromium chromium-driver; .ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800"):
        options.add_argument(flag)
    return (webdriver, Service(driver), options), ""


def test_browser_upload_certify_and_see_the_certificate(server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser, reason = _browser()
    if browser is None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    webdriver, service, options = browser
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    url, _, _ = server
    image, _ = digit_example(7)
    upload = _png(tmp_path / "digit.png", image)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        wait = WebDriverWait(driver, 45, poll_frequency=0.05)
        started = time.monotonic()
        driver.get(url)
        certify = wait.until(ready.element_to_be_clickable((By.ID, "image-certify")))
        loaded = time.monotonic() - started
        driver.find_element(By.CSS_SELECTOR, "#image-upload input[type=file]").send_keys(str(upload))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image-source input[value='Upload']").is_selected())
        started = time.monotonic()
        certify.click()
        box = driver.find_element(By.ID, "image-certificate")
        tracker = box.find_element(By.CSS_SELECTOR, "[data-testid=status-tracker]")
        wait.until(lambda d: "hide" in tracker.get_attribute("class")  # not pending (a pending box shows the progress)
                   and ("Certified: digit" in box.text or "Abstained" in box.text))
        answered = time.monotonic() - started
        text = driver.find_element(By.ID, "image-certificate").text
        assert "True class" not in text, "the uploaded file was certified, not the embedded example"
        picture = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image-picture img"))
        assert picture.get_attribute("src") and driver.execute_script("return arguments[0].naturalWidth", picture) == 256
        print(f"page ready in {loaded:.1f} s; certificate {answered:.1f} s after pressing Certify")
    finally:
        driver.quit()
