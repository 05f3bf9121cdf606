"""The vision-rs Gradio app (``vision-rs app``): certify images, clips and segmentation masks in the browser.

Three tabs call :class:`~vision_rs.app.certify.AppCertifier`; this module only lays out the page and connects it:

* progress: the engine's tqdm bars, followed by ``gr.Progress(track_tqdm=True)``;
* cancelling: the Cancel button cancels the event (``cancels=``; a gradio_client ``job.cancel()`` goes through the
  same button); the handler then sets the run's stop event, the worker thread ends at its next forward pass, and the
  handler waits for it before gradio frees the slot, so no cancelled run keeps computing or holds the model;
* errors: our errors become ``gr.Error`` with our message; anything else is logged and shown as an internal error,
  never as a traceback;
* a bounded queue (``queue_size`` waiting, ``concurrency`` certifications at once, shared by the three tabs);
* offline and locked down: no analytics, system fonts, uploads in a private temporary folder (the only files it
  serves besides its own page), ``max_file_size``, localhost unless ``host`` says otherwise, no share link unless asked.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, MissingDependencyError, VisionRSError
from ..sampling.methods import MODES, REDUCTIONS
from .catalog import IMAGE, SEGMENTATION, VIDEO, ModelCatalog
from .certify import (
    EXAMPLES,
    METHODS,
    AppCertifier,
    AppLimits,
    CertificationCancelled,
    ImageRequest,
    SegmentationRequest,
    VideoRequest,
    clip_example,
    digit_example,
    read_image_upload,
    read_video_upload,
    scene_example,
)

log = logging.getLogger(__name__)

EMBEDDED, UPLOAD = "Embedded example", "Upload"
CONCURRENCY_ID = "certify"
TITLE = "vision-rs: certified robustness"
INTRO = """\
# vision-rs: certified robustness in the browser
Randomized smoothing turns a classifier into one whose prediction provably stays the same for every perturbation
within an L2 **radius** (in [0, 1] pixel units, over all pixels and channels), with probability at least 1 − α over
the sampling. Pick an input and a model, press **Certify**, and watch the progress bar; **Cancel** stops a run.
"""


def _gradio():
    try:
        import gradio as gr
    except ImportError as exc:
        raise MissingDependencyError("the app needs gradio: pip install 'vision-rs[demo]'") from exc
    return gr


@dataclass(frozen=True)
class AppConfig:
    """How ``vision-rs app`` serves the page."""

    host: str = "127.0.0.1"
    port: int | None = None
    """None: gradio's default (7860, or the next free port)."""
    models_dir: str | None = None
    share: bool = False
    device: str | None = None
    queue_size: int = 16
    """Requests that may wait in the queue; later ones are refused with 'queue full'."""
    concurrency: int = 1
    """Certifications that run at once (all tabs together)."""
    limits: AppLimits = AppLimits()
    local_caches: bool = True
    """Offer timm / torchvision models whose weights are in the local caches."""


# ------------------------------------------------------------------------------------------ page ↔ certifier


def _page_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors → ``gr.Error`` with our message; anything else is logged and reported without a traceback."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        gr = _gradio()
        try:
            return function(*args, **kwargs)
        except (CertificationCancelled, gr.Error):
            raise
        except VisionRSError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # a bug: the log has the traceback, the page a short message
            log.exception("the app failed")
            raise gr.Error(f"internal error ({type(exc).__name__}); the server's log has the details",
                           print_exception=False) from None

    return wrapped


async def run_stoppable(workers: Executor, work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args, stop)`` on one of ``workers``' threads, with the caller's context (so tqdm reaches gr.Progress).

    When gradio cancels the event, ``stop`` is set and the cancellation waits for the worker, which ends at its
    next forward pass; only then is the slot freed.
    """
    stop = threading.Event()
    call = functools.partial(contextvars.copy_context().run, work, *args, stop)
    task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(workers, call))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved (CertificationCancelled, or a result that came first): not logged as lost
        raise


INPUTS: dict[str, tuple[Callable[[Any], tuple[Any, Any]], Callable[[str, AppLimits], Any], str]] = {
    IMAGE: (digit_example, read_image_upload, "an image"),
    VIDEO: (clip_example, read_video_upload, "a video"),
    SEGMENTATION: (scene_example, read_image_upload, "an image"),
}
"""Per tab: its embedded examples, how an upload is read (within the limits), what to upload."""


class Handlers:
    """The functions the page calls (plain functions of the page's values; gradio passes them in order)."""

    def __init__(self, certifier: AppCertifier, concurrency: int = 1) -> None:
        self.certifier = certifier
        self.limits = certifier.limits
        self.workers = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vision-rs-certify")
        """The threads certifications run on: as many as run at once, so their memory is reused run after run."""

    # -------------------------------------------------------------------------------- inputs
    def read(self, kind: str, source: str, example: Any, upload: str | None) -> tuple[Any, Any]:
        """(the input, its true label or mask when it is an embedded example) of tab ``kind``."""
        embedded, uploaded, what = INPUTS[kind]
        if source != UPLOAD:
            return embedded(example)
        if not upload:
            raise InvalidParameterError(f"upload {what} first (or choose '{EMBEDDED}')")
        return uploaded(upload, self.limits), None

    @_page_errors
    def preview(self, kind: str, source: str, example: Any, upload: str | None) -> Any:
        """The picture of tab ``kind``'s input: the image scaled up, or a clip's frames; nothing before an upload."""
        from .pictures import enlarged, frame_strip

        if source == UPLOAD and not upload:
            return None
        data = self.read(kind, source, example, upload)[0]
        return frame_strip(data) if kind == VIDEO else enlarged(data)[0]

    # -------------------------------------------------------------------------------- certify
    @_page_errors
    def certify_image(self, source: str, example: Any, upload: str | None, model: str, arch: str, num_classes: Any,
                      method: str, sigma: float, n0: int, n: int, alpha: float, seed: int, patch_size: int,
                      patch_stride: int, reduce: str, mode: str, p: float, indicator: bool,
                      stop: threading.Event | None = None) -> tuple:
        image, truth = self.read(IMAGE, source, example, upload)
        request = ImageRequest(model=model, sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, reduce=reduce, mode=mode,
                               arch=arch or "", num_classes=num_classes, method=method, patch_size=patch_size,
                               patch_stride=patch_stride, p=p, indicator=indicator)
        result = self.certifier.certify_image(image, request, truth=truth, stop=stop)
        budgets = {"headers": ["r (pixels changed)", "certified L2 budget ε"],
                   "data": [[r, round(radius, 5)] for r, radius in result.budgets]}
        return result.summary, result.shares, result.picture, budgets, result.sample_plot

    @_page_errors
    def certify_video(self, source: str, example: Any, upload: str | None, model: str, arch: str, num_classes: Any,
                      sigma: float, n0: int, n: int, alpha: float, seed: int, subclips: bool, subclip_length: int,
                      subclip_stride: int, reduce: str, mode: str, stop: threading.Event | None = None) -> tuple:
        clip, truth = self.read(VIDEO, source, example, upload)
        request = VideoRequest(model=model, sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, reduce=reduce, mode=mode,
                               arch=arch or "", num_classes=num_classes, subclips=subclips,
                               subclip_length=subclip_length, subclip_stride=subclip_stride)
        result = self.certifier.certify_video(clip, request, truth=truth, stop=stop)
        return result.summary, result.shares, result.strip, result.votes_plot

    @_page_errors
    def certify_segmentation(self, source: str, example: Any, upload: str | None, isotropic_model: str | None,
                             localized_model: str | None, arch: str, num_classes: Any, sigma: float, grid_rows: int,
                             grid_cols: int, sigma_min: float, sigma_max: float, n0: int, n: int, alpha: float, seed: int,
                             eps: str, stop: threading.Event | None = None) -> tuple:
        image, truth = self.read(SEGMENTATION, source, example, upload)
        request = SegmentationRequest(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, arch=arch or "",
                                      num_classes=num_classes, isotropic_model=isotropic_model or "",
                                      localized_model=localized_model or "", grid_rows=grid_rows, grid_cols=grid_cols,
                                      sigma_min=sigma_min, sigma_max=sigma_max, eps=eps)
        result = self.certifier.certify_segmentation(image, request, truth=truth, stop=stop)
        by_name = {run.name: run for run in result.runs}
        pictures = []
        for name in ("isotropic", "localized"):
            run = by_name.get(name)
            pictures += [run.mask, run.heatmap] if run else [None, None]
        table = {"headers": ["smoothing", "ε", "certified per pixel", "certified collectively"], "data": result.table}
        return (result.summary, *pictures, result.eps_plot, table)


# ------------------------------------------------------------------------------------------ layout


def _offline_theme(gr: Any) -> Any:
    """The default theme with system fonts: the page loads nothing from outside the server."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def _stoppable_handler(method: Callable[..., Any], workers: Executor, gr: Any) -> Callable[..., Any]:
    """An async gradio handler around ``method``: its parameters (``stop`` aside) and a ``gr.Progress`` that follows
    the engine's tqdm bars; cancelling the event stops the run (see :func:`run_stoppable`)."""
    tracker = gr.Progress(track_tqdm=True)

    async def handler(*args: Any) -> Any:
        if args and isinstance(args[-1], gr.Progress):
            args = args[:-1]  # gradio passes the tracker positionally, where the signature below puts it
        return await run_stoppable(workers, method, *args)

    parameters = [p for name, p in inspect.signature(method).parameters.items() if name != "stop"]
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*parameters, inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=tracker)])
    handler.__name__ = method.__name__
    return handler


def _source_inputs(gr: Any, kind: str, examples: list[tuple[str, int]], file_types: list[str], elem: str) -> tuple:
    source = gr.Radio([EMBEDDED, UPLOAD], value=EMBEDDED, label="Input", elem_id=f"{elem}-source")
    example = gr.Dropdown(choices=examples, value=0, label=f"Embedded {kind}")
    upload = gr.File(label=f"Upload ({', '.join(file_types)})", file_types=file_types, type="filepath",
                     elem_id=f"{elem}-upload")
    return source, example, upload


SKIP = "none (skip this smoothing)"


def _model_inputs(gr: Any, catalog: ModelCatalog, task: str, default: str, label: str = "Model",
                  optional: bool = False) -> Any:
    """The models the catalog offers for ``task`` (``optional``: with a first choice that skips it, value '')."""
    choices = [(SKIP, "")] * optional + [(choice.label, choice.key) for choice in catalog.for_task(task)]
    value = default if any(key == default for _, key in choices) else (choices[0][1] if choices else None)
    return gr.Dropdown(choices=choices, value=value, label=label)


def _checkpoint_inputs(gr: Any) -> tuple[Any, Any]:
    with gr.Accordion("Checkpoint (models from the server's --models folder)", open=False):
        arch = gr.Textbox(label="Architecture of the checkpoint", placeholder="a timm name, torchvision:NAME or an embedded name")
        classes = gr.Number(value=0, precision=0, label="Classes of its head (0: the architecture's own)")
    return arch, classes


def _sampling_inputs(gr: Any, n0: int, n: int, alpha: float) -> tuple:
    with gr.Row():
        n0_box = gr.Number(value=n0, precision=0, label="n0 (selection)")
        n_box = gr.Number(value=n, precision=0, label="n (estimation)")
        alpha_box = gr.Number(value=alpha, label="α (failure probability)")
        seed = gr.Number(value=0, precision=0, label="seed")
    return n0_box, n_box, alpha_box, seed


def _view_inputs(gr: Any, size_label: str, size: int, stride_label: str, stride: int) -> tuple:
    """Smooth-Reduce's views (patches or sub-clips): their size and stride, the reduction and the mode."""
    with gr.Row():
        size_box = gr.Number(value=size, precision=0, label=size_label)
        stride_box = gr.Number(value=stride, precision=0, label=stride_label)
    with gr.Row():
        reduce = gr.Radio(list(REDUCTIONS), value="mean", label="reduce")
        mode = gr.Dropdown(list(MODES), value="vote", label="mode")
    return size_box, stride_box, reduce, mode


def _buttons(gr: Any, elem: str) -> tuple[Any, Any]:
    with gr.Row():
        run = gr.Button("Certify", variant="primary", elem_id=f"{elem}-certify")
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{elem}-cancel")
    return run, cancel


def _connect(gr: Any, run: Any, cancel: Any, handler: Callable[..., Any], workers: Executor, inputs: list, outputs: list,
             name: str) -> None:
    event = run.click(_stoppable_handler(handler, workers, gr), inputs, outputs, api_name=name,
                      concurrency_id=CONCURRENCY_ID)
    cancel.click(None, None, None, cancels=[event], queue=False)


def _previews(handlers: Handlers, kind: str, inputs: list, output: Any, name: str) -> None:
    preview = functools.partial(handlers.preview, kind)
    source, example, upload = inputs
    for trigger in (source.change, example.change):
        trigger(preview, inputs, output, api_name=False, concurrency_limit=4)
    upload.upload(lambda: UPLOAD, None, source, api_name=False, queue=False)
    upload.change(preview, inputs, output, api_name=name, concurrency_limit=4)


def _image_tab(gr: Any, handlers: Handlers, catalog: ModelCatalog) -> None:
    from ..models.embedded import DigitsDataset

    digits = DigitsDataset("test")
    examples = [(f"#{i}: a {digits.labels[i].item()}", i) for i in range(EXAMPLES)]
    with gr.Row():
        with gr.Column(scale=2):
            source, example, upload = _source_inputs(gr, "test digit", examples, ["image"], "image")
            preview = gr.Image(value=handlers.preview(IMAGE, EMBEDDED, 0, None), label="Input image", interactive=False,
                               height=180, elem_id="image-preview")
            model = _model_inputs(gr, catalog, IMAGE, "embedded:digits_cnn.sigma_0.25")
            arch, classes = _checkpoint_inputs(gr)
            method = gr.Radio(list(METHODS), value="Gaussian", label="Method")
            with gr.Accordion("Smooth-Reduce: overlapping patches", open=False):
                patch_size, patch_stride, reduce, mode = _view_inputs(gr, "patch size (pixels)", 24, "stride (pixels)", 8)
            with gr.Accordion("Hierarchical: r changed pixels", open=False):
                with gr.Row():
                    p = gr.Slider(0.5, 1.0, value=0.85, step=0.01, label="p (pixel selected and noised)")
                    indicator = gr.Checkbox(value=True, label="indicator channel")
            sigma = gr.Slider(0.01, 2.0, value=0.25, step=0.01, label="σ (noise std, [0, 1] pixel units)")
            n0, n, alpha, seed = _sampling_inputs(gr, 100, 1000, 0.001)
            run, cancel = _buttons(gr, "image")
        with gr.Column(scale=3):
            summary = gr.Markdown("Press **Certify**.", elem_id="image-certificate")
            shares = gr.Label(label="Vote shares of the n draws (top classes)", num_top_classes=5)
            picture = gr.Image(label="The input (with Smooth-Reduce: each patch and its vote)", interactive=False,
                               elem_id="image-picture", height=300)
            budgets = gr.Dataframe(headers=["r (pixels changed)", "certified L2 budget ε"], value=[],
                                   label="Hierarchical smoothing only: certified budget per number of changed pixels r",
                                   interactive=False)
            plot = gr.Plot(label="What radius N samples can reach", show_label=False)
    inputs = [source, example, upload]
    _previews(handlers, IMAGE, inputs, preview, "preview_image")
    _connect(gr, run, cancel, handlers.certify_image, handlers.workers,
             [*inputs, model, arch, classes, method, sigma, n0, n, alpha, seed, patch_size, patch_stride, reduce, mode,
              p, indicator], [summary, shares, picture, budgets, plot], "certify_image")

    def trained_settings(key: str) -> tuple:
        choice = catalog.choices.get(f"{key}|{IMAGE}")
        if choice is None or choice.sigma is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        if choice.hierarchical_p is not None:
            return gr.update(value=choice.sigma), gr.update(value="Hierarchical"), gr.update(value=choice.hierarchical_p), gr.update(value=True)
        return gr.update(value=choice.sigma), gr.update(), gr.update(), gr.update()

    model.change(trained_settings, model, [sigma, method, p, indicator], api_name=False, queue=False)


def _video_tab(gr: Any, handlers: Handlers, catalog: ModelCatalog) -> None:
    from ..models.embedded.clips import digit_clips

    _, labels = digit_clips("test")
    examples = [(f"#{i}: a moving {labels[i].item()}", i) for i in range(EXAMPLES)]
    with gr.Row():
        with gr.Column(scale=2):
            source, example, upload = _source_inputs(gr, "test clip", examples, [".mp4", ".avi", ".mov", ".mkv", ".webm"],
                                                     "video")
            model = _model_inputs(gr, catalog, VIDEO, "embedded:digits_c3d.sigma_0.25")
            arch, classes = _checkpoint_inputs(gr)
            with gr.Accordion("Sub-clips along time (temporal Smooth-Reduce)", open=False):
                subclips = gr.Checkbox(value=False, label="reduce over sub-clips")
                length, stride, reduce, mode = _view_inputs(gr, "length (frames)", 8, "stride (frames)", 4)
            sigma = gr.Slider(0.01, 2.0, value=0.25, step=0.01, label="σ (noise std, [0, 1] pixel units)")
            n0, n, alpha, seed = _sampling_inputs(gr, 60, 600, 0.001)
            run, cancel = _buttons(gr, "video")
        with gr.Column(scale=3):
            strip = gr.Image(value=handlers.preview(VIDEO, EMBEDDED, 0, None), label="Frames", interactive=False,
                             elem_id="video-frames", height=240)
            summary = gr.Markdown("Press **Certify**.", elem_id="video-certificate")
            shares = gr.Label(label="Vote shares of the n draws (top classes)", num_top_classes=5)
            votes = gr.Plot(label="Votes along time", show_label=False)
    inputs = [source, example, upload]
    _previews(handlers, VIDEO, inputs, strip, "preview_clip")
    _connect(gr, run, cancel, handlers.certify_video, handlers.workers,
             [*inputs, model, arch, classes, sigma, n0, n, alpha, seed, subclips, length, stride, reduce, mode],
             [summary, shares, strip, votes], "certify_video")


def _segmentation_tab(gr: Any, handlers: Handlers, catalog: ModelCatalog) -> None:
    examples = [(f"scene #{i}", i) for i in range(EXAMPLES)]
    with gr.Row():
        with gr.Column(scale=2):
            source, example, upload = _source_inputs(gr, "test scene", examples, ["image"], "segmentation")
            preview = gr.Image(value=handlers.preview(SEGMENTATION, EMBEDDED, 0, None), label="Input image", interactive=False,
                               height=180)
            isotropic = _model_inputs(gr, catalog, SEGMENTATION, "embedded:digits_segnet.sigma_0.25",
                                      "Isotropic smoothing: model", optional=True)
            sigma = gr.Slider(0.01, 2.0, value=0.25, step=0.01, label="σ (isotropic)")
            localized = _model_inputs(gr, catalog, SEGMENTATION, "embedded:digits_segnet_localized.grid_3x3_sigma_0.25_1.00",
                                      "Localized smoothing: model", optional=True)
            with gr.Row():
                rows = gr.Number(value=3, precision=0, label="grid rows")
                cols = gr.Number(value=3, precision=0, label="grid columns")
                sigma_min = gr.Number(value=0.25, label="σ_min (own cell)")
                sigma_max = gr.Number(value=1.0, label="σ_max (farthest cells)")
            arch, classes = _checkpoint_inputs(gr)
            eps = gr.Textbox(value="0, 0.1, 0.25, 0.5, 0.75, 1.0", label="ε budgets for the plot (L2, [0, 1] pixel units)")
            n0, n, alpha, seed = _sampling_inputs(gr, 10, 100, 0.01)
            run, cancel = _buttons(gr, "segmentation")
        with gr.Column(scale=3):
            summary = gr.Markdown("Press **Certify**. Localized smoothing certifies each of its grid cells with its "
                                  "own n0 + n draws.", elem_id="segmentation-certificate")
            with gr.Row():
                iso_mask = gr.Image(label="Isotropic: predicted mask (magenta: abstained)", interactive=False)
                iso_heat = gr.Plot(label="Isotropic: radius per pixel", show_label=False)
            with gr.Row():
                loc_mask = gr.Image(label="Localized: predicted mask (magenta: abstained)", interactive=False)
                loc_heat = gr.Plot(label="Localized: radius per pixel", show_label=False)
            curve = gr.Plot(label="Certified pixel ratio against ε", show_label=False)
            table = gr.Dataframe(headers=["smoothing", "ε", "certified per pixel", "certified collectively"], value=[],
                                 interactive=False, label="Certified pixels")
    inputs = [source, example, upload]
    _previews(handlers, SEGMENTATION, inputs, preview, "preview_scene")
    _connect(gr, run, cancel, handlers.certify_segmentation, handlers.workers,
             [*inputs, isotropic, localized, arch, classes, sigma, rows, cols, sigma_min, sigma_max, n0, n, alpha, seed,
              eps], [summary, iso_mask, iso_heat, loc_mask, loc_heat, curve, table], "certify_segmentation")


def build_app(certifier: AppCertifier, config: AppConfig = AppConfig()) -> Any:
    """The page (a ``gr.Blocks``) with its queue set up; launch it with :func:`launch_app` or ``.launch``."""
    gr = _gradio()
    handlers = Handlers(certifier, config.concurrency)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Image"):
            _image_tab(gr, handlers, certifier.catalog)
        with gr.Tab("Video"):
            _video_tab(gr, handlers, certifier.catalog)
        with gr.Tab("Segmentation"):
            _segmentation_tab(gr, handlers, certifier.catalog)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    return demo


def private_upload_folder() -> tuple[Path, bool]:
    """Point gradio's upload and output folder at a new private folder (mode 0700), unless GRADIO_TEMP_DIR is set;
    return the folder and whether it was made here.

    Gradio serves the files of that folder (and nothing else of ours): with a folder of its own, the app serves
    no file another program or an earlier run put into the shared default (/tmp/gradio).
    """
    made = not os.environ.get("GRADIO_TEMP_DIR")
    if made:
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="vision-rs-app-")
    return Path(os.environ["GRADIO_TEMP_DIR"]), made


def blocked_paths(config: AppConfig) -> list[str]:
    """Folders gradio must never serve from, even if a path there were handed to it: the models folder, the
    working directory (gradio's examples cache lives there) and the home folder."""
    paths = [Path.cwd(), Path.home()]
    if config.models_dir:
        paths.append(Path(config.models_dir))
    upload = Path(os.environ.get("GRADIO_TEMP_DIR", "/nonexistent")).resolve()
    return [str(path.resolve()) for path in paths if not upload.is_relative_to(path.resolve())]


def launch_app(config: AppConfig = AppConfig(), *, block: bool = True, catalog: ModelCatalog | None = None,
               certifier: AppCertifier | None = None) -> tuple[Any, str]:
    """Build and serve the app; returns (the running ``gr.Blocks``, its local URL). ``block``: serve until Ctrl+C,
    then remove the upload folder made for this server."""
    folder, made = private_upload_folder()
    gr = _gradio()
    if certifier is None:
        catalog = catalog or ModelCatalog.scan(config.models_dir, local_caches=config.local_caches)
        certifier = AppCertifier(catalog, config.limits, config.device)
    demo = build_app(certifier, config)
    demo.launch(
        server_name=config.host, server_port=config.port, share=config.share, prevent_thread_lock=True, quiet=True,
        show_error=False, max_file_size=config.limits.max_file_size, allowed_paths=[],
        blocked_paths=blocked_paths(config), enable_monitoring=False, theme=_offline_theme(gr), footer_links=["api"],
        ssr_mode=False,
    )
    url = demo.share_url or demo.local_url
    if block:
        print(f"vision-rs app: open {url} (Ctrl+C stops it)", flush=True)
        try:
            demo.block_thread()
        finally:
            demo.close()
            if made:
                shutil.rmtree(folder, ignore_errors=True)
    return demo, url
