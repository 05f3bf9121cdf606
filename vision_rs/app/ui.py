"""The vision-rs Gradio app (``vision-rs app``): certify images, clips and segmentation masks in the browser.

Three tabs call :class:`~vision_rs.app.certify.AppCertifier`; this module only lays out the page and connects it.
Pressing Certify runs three steps: the old result is cleared at once (and the run registered for the page, see
:mod:`~vision_rs.app.sessions`), the certification waits in the queue and runs, and a failed run writes why where
its result would be. Around them:

* progress: the run's draws done of its total, its phase (and cell) and the time left, in the certificate's box;
* stopping: Cancel stops the page's run of that tab (queued or running) and says so where the result would be; a page
  that is closed or reloaded stops its runs (gradio's ``unload`` event, on the page's heartbeat connection closing);
  either way the worker ends at its next forward pass. A gradio_client ``job.cancel()`` cancels the event: the handler
  then stops the worker and waits for it before gradio frees the slot;
* errors: our errors become ``gr.Error`` with our message (marking the certificate's box only); anything else is
  logged and shown as an internal error, never as a traceback;
* a bounded queue (``queue_size`` waiting, ``concurrency`` certifications at once, shared by the three tabs);
* offline and locked down: no analytics, system fonts, uploads in a private temporary folder (the only files it
  serves besides its own page; removed on Ctrl+C and on SIGTERM), uploads larger than ``max_file_size`` refused with
  our message, localhost unless ``host`` says otherwise, no share link unless asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, MissingDependencyError, VisionRSError
from ..wording import size_in_bytes
from ..sampling.methods import MODES, REDUCTIONS
from .catalog import (
    IMAGE,
    SEGMENTATION,
    VIDEO,
    ImageSettings,
    ModelCatalog,
    after_method_choice,
    after_model_choice,
    model_card,
)
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
from .progress import ProgressLine
from .sessions import SessionRuns

log = logging.getLogger(__name__)

EMBEDDED, UPLOAD = "Embedded example", "Upload"
CONCURRENCY_ID = "certify"
TITLE = "vision-rs: certified robustness"
INTRO = """\
# vision-rs: certified robustness
Randomized smoothing makes a classifier whose prediction provably stays the same for every perturbation within an L2
**radius** ([0, 1] pixel units, over all pixels and channels), with probability at least 1 − α over the sampling.
"""
WAITING = ""
"""The certificate's box while a run waits or runs: empty, for gradio's queue position and progress bar."""
CANCELLED = "### Cancelled\nThe certification was stopped before it finished: nothing was certified. Press **Certify** to run it again."
IMAGE_DEFAULTS = ImageRequest()
VIDEO_DEFAULTS = VideoRequest()
SEGMENTATION_DEFAULTS = SegmentationRequest()


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


async def run_stoppable(workers: Executor, work: Callable[..., Any], *args: Any, stop: threading.Event,
                        **kwargs: Any) -> Any:
    """``work(*args, stop=stop, **kwargs)`` on one of ``workers``' threads, with the caller's context (so a
    ``gr.Progress`` reaches the page).

    When gradio cancels the event, ``stop`` is set and the cancellation waits for the worker, which ends at its
    next forward pass; only then is the slot freed.
    """
    call = functools.partial(contextvars.copy_context().run, work, *args, stop=stop, **kwargs)
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


def _input_note(kind: str, data: Any, upload: str | None) -> str:
    """What the page says under an input's preview: its size, and for a clip which frames the certificate covers."""
    name = f"{Path(upload).name}: " if upload else ""
    if kind == VIDEO:
        frames, height, width = int(data.shape[0]), int(data.shape[-2]), int(data.shape[-1])
        return (f"{name}{frames} frames (0–{frames - 1}) of {width}×{height} pixels; the certificate covers all of "
                "them, every pixel and channel.")
    return f"{name}{int(data.shape[-1])}×{int(data.shape[-2])} pixels."


class Handlers:
    """The functions the page calls (plain functions of the page's values; gradio passes them in order)."""

    def __init__(self, certifier: AppCertifier, concurrency: int = 1) -> None:
        self.certifier = certifier
        self.limits = certifier.limits
        self.runs = SessionRuns()
        """The runs each open page has queued or running, per tab."""
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

    def preview(self, kind: str, source: str, example: Any, upload: str | None) -> tuple[Any, str]:
        """The picture of tab ``kind``'s input (the image scaled up, or a clip's frames) and a note on it: its size,
        or why it cannot be read (then no picture). Nothing before an upload."""
        from .pictures import enlarged, frame_strip

        if source == UPLOAD and not upload:
            return None, f"Upload {INPUTS[kind][2]} (at most {size_in_bytes(self.limits.max_file_size)})."
        try:
            data = self.read(kind, source, example, upload)[0]
        except VisionRSError as exc:
            return None, f"**Cannot use this file.** {exc}"
        return (frame_strip(data) if kind == VIDEO else enlarged(data)[0]), _input_note(kind, data, upload if source == UPLOAD else None)

    # -------------------------------------------------------------------------------- certify
    @_page_errors
    def certify_image(self, source: str, example: Any, upload: str | None, model: str, arch: str, num_classes: Any,
                      method: str, sigma: float, n0: int, n: int, alpha: float, seed: int, patch_size: int,
                      patch_stride: int, reduce: str, mode: str, p: float, indicator: bool,
                      stop: threading.Event | None = None,
                      progress: Callable[[ProgressLine], None] | None = None) -> tuple:
        """(certificate, vote shares, Smooth-Reduce's patches or None, perturbation picture or None, its text,
        hierarchical budgets (no rows for other methods), radius against N)."""
        image, truth = self.read(IMAGE, source, example, upload)
        request = ImageRequest(model=model, sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, reduce=reduce, mode=mode,
                               arch=arch or "", num_classes=num_classes, method=method, patch_size=patch_size,
                               patch_stride=patch_stride, p=p, indicator=indicator)
        result = self.certifier.certify_image(image, request, truth=truth, stop=stop, progress=progress)
        budgets = {"headers": ["r (pixels changed)", "certified L2 budget ε"],
                   "data": [[r, round(radius, 5)] for r, radius in result.budgets]}
        ball_text = result.ball_text or "No certified ball: the run abstained."
        return (result.summary, result.shares, result.picture, result.ball_picture, ball_text, budgets,
                result.sample_plot)

    @_page_errors
    def certify_video(self, source: str, example: Any, upload: str | None, model: str, arch: str, num_classes: Any,
                      sigma: float, n0: int, n: int, alpha: float, seed: int, subclips: bool, subclip_length: int,
                      subclip_stride: int, reduce: str, mode: str, stop: threading.Event | None = None,
                      progress: Callable[[ProgressLine], None] | None = None) -> tuple:
        """(certificate, vote shares, votes along time)."""
        clip, truth = self.read(VIDEO, source, example, upload)
        request = VideoRequest(model=model, sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, reduce=reduce, mode=mode,
                               arch=arch or "", num_classes=num_classes, subclips=subclips,
                               subclip_length=subclip_length, subclip_stride=subclip_stride)
        result = self.certifier.certify_video(clip, request, truth=truth, stop=stop, progress=progress)
        return result.summary, result.shares, result.votes_plot

    @_page_errors
    def certify_segmentation(self, source: str, example: Any, upload: str | None, isotropic_model: str | None,
                             localized_model: str | None, arch: str, num_classes: Any, sigma: float, grid_rows: int,
                             grid_cols: int, sigma_min: float, sigma_max: float, n0: int, n: int, alpha: float, seed: int,
                             eps: str, stop: threading.Event | None = None,
                             progress: Callable[[ProgressLine], None] | None = None) -> tuple:
        """(certificates, isotropic mask and radius map, localized mask and radius map, ε plot, table)."""
        image, truth = self.read(SEGMENTATION, source, example, upload)
        request = SegmentationRequest(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, arch=arch or "",
                                      num_classes=num_classes, isotropic_model=isotropic_model or "",
                                      localized_model=localized_model or "", grid_rows=grid_rows, grid_cols=grid_cols,
                                      sigma_min=sigma_min, sigma_max=sigma_max, eps=eps)
        result = self.certifier.certify_segmentation(image, request, truth=truth, stop=stop, progress=progress)
        by_name = {run.name: run for run in result.runs}
        pictures = []
        for name in ("isotropic", "localized"):
            run = by_name.get(name)
            pictures += [run.mask, run.heatmap] if run else [None, None]
        table = {"headers": ["smoothing", "ε", "certified per pixel", "certified collectively"], "data": result.table}
        return (result.summary, *pictures, result.eps_plot, table)

    # -------------------------------------------------------------------------------- a run's life on the page
    def page_closed(self, session: str) -> None:
        """The page is gone (closed or reloaded): stop its runs."""
        if self.runs.close(session):
            log.info("a page closed during its certification: stopped")

    def close(self) -> None:
        """The server stops: stop every run and wait for the workers (each ends at its next forward pass)."""
        self.runs.stop_all()
        self.workers.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------ layout


def _offline_theme(gr: Any) -> Any:
    """The default theme with system fonts: the page loads nothing from outside the server."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def _with_session(gr: Any, function: Callable[[str], Any]) -> Callable[..., Any]:
    """A gradio handler without inputs that calls ``function(session)`` with the page's session id (gradio hands a
    parameter annotated ``gr.Request`` the request; the annotation is set here, where gradio is imported)."""

    def handler(request: Any) -> Any:
        return function(request.session_hash)

    handler.__annotations__ = {"request": gr.Request}
    return handler


def _certify_handler(gr: Any, handlers: Handlers, kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """The async gradio handler of one tab's Certify: ``method``'s parameters (``stop`` and ``progress`` aside), then
    the request and a ``gr.Progress``. It runs ``method`` on a worker with the page's run (see :class:`SessionRuns`);
    a stopped run answers "Cancelled" (or nothing, when the page pressed Certify again), a failed one leaves its
    message for the page."""
    tracker = gr.Progress()

    async def handler(*args: Any) -> tuple:
        *values, request, progress = args
        run = handlers.runs.begin(request.session_hash, kind)

        def show(line: ProgressLine) -> None:
            progress((line.done, line.total), desc=line.text, unit="draws")

        try:
            return await run_stoppable(handlers.workers, method, *values, stop=run.stop, progress=show)
        except CertificationCancelled:
            return tuple(gr.skip() for _ in range(OUTPUTS[kind])) if run.replaced else _cleared(kind, CANCELLED)
        except gr.Error as exc:
            run.error = exc.message
            raise
        finally:
            handlers.runs.end(request.session_hash, kind, run)

    parameters = [p for name, p in inspect.signature(method).parameters.items() if name not in ("stop", "progress")]
    handler.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        *parameters, inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
        inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=tracker)])
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = method.__name__
    return handler


OUTPUTS = {IMAGE: 7, VIDEO: 3, SEGMENTATION: 7}
"""Outputs of each tab's Certify: the certificate first, then the pictures, plots and tables of the result."""


def _cleared(kind: str, summary: str) -> tuple:
    """The outputs of tab ``kind`` with ``summary`` in the certificate's box and nothing else."""
    return (summary, *[None] * (OUTPUTS[kind] - 1))


def _connect(gr: Any, handlers: Handlers, kind: str, run: Any, cancel: Any, method: Callable[..., Any], inputs: list,
             outputs: list, results: Any, name: str) -> None:
    """Certify: clear the old result (hiding the ``results`` column until a result is in it) and register the run,
    certify, and on failure say why where the result would be. Cancel: stop the run and say so (gradio also takes it
    out of the queue)."""
    assert len(outputs) == OUTPUTS[kind], "a wiring mistake, caught when the page is built"
    summary = outputs[0]
    quick = dict(queue=False, show_progress="hidden", api_name=False)

    def begin(session: str) -> tuple:
        handlers.runs.ask(session, kind)
        return (*_cleared(kind, WAITING), gr.update(visible=False))

    def stop(session: str) -> tuple:
        return _cleared(kind, CANCELLED) if handlers.runs.cancel(session, kind) else tuple(gr.skip() for _ in outputs)

    def failed(session: str) -> Any:
        reason = handlers.runs.failure(session, kind)
        return gr.skip() if reason is None else f"### Not certified\nThe run failed: {reason}"

    asked = run.click(_with_session(gr, begin), None, [*outputs, results], **quick)
    event = asked.then(_certify_handler(gr, handlers, kind, method), inputs, outputs, api_name=name,
                       concurrency_id=CONCURRENCY_ID, show_progress_on=[summary])
    event.success(lambda text: gr.update(visible=text not in (WAITING, CANCELLED)), summary, results, **quick)
    event.failure(_with_session(gr, failed), None, summary, **quick)
    cancel.click(_with_session(gr, stop), None, outputs, cancels=[event], **quick)


def _source_inputs(gr: Any, handlers: Handlers, kind: str, examples: list[tuple[str, int]], file_types: list[str],
                   elem: str, preview: Callable[[], Any]) -> tuple:
    """Input radio, embedded examples and upload box (only the one the radio chooses is shown), the preview made by
    ``preview()`` and its note; they update one another."""
    source = gr.Radio([EMBEDDED, UPLOAD], value=EMBEDDED, label="Input", elem_id=f"{elem}-source")
    example = gr.Dropdown(choices=examples, value=0, label=f"Embedded {kind}", elem_id=f"{elem}-example")
    limit = size_in_bytes(handlers.limits.max_file_size)
    upload = file_box(gr, label=f"Upload ({', '.join(file_types)}; at most {limit})", file_types=file_types,
                      elem_id=f"{elem}-upload", visible=False, height=120)
    picture, note = preview()
    return source, example, upload, picture, note


def _previews(gr: Any, handlers: Handlers, kind: str, source: Any, example: Any, upload: Any, picture: Any,
              note: Any, name: str) -> None:
    inputs = [source, example, upload]
    preview = functools.partial(handlers.preview, kind)
    source.change(lambda chosen: (gr.update(visible=chosen != UPLOAD), gr.update(visible=chosen == UPLOAD)), source,
                  [example, upload], queue=False, api_name=False)
    for trigger in (source.change, example.change):
        trigger(preview, inputs, [picture, note], api_name=False, concurrency_limit=4)
    upload.change(preview, inputs, [picture, note], api_name=name, concurrency_limit=4)


def file_box(gr: Any, **options: Any) -> Any:
    """A ``gr.File`` (``type="filepath"``) that hands handlers the upload's path without first opening an empty
    temporary file it never uses, as gradio 6's ``File._process_single_file`` does on every call: the upload folder
    gains no empty files while the app runs. (An instance attribute, not a subclass: gradio writes a ``.pyi`` stub
    next to the module of every component class.) The path was checked to lie in the upload folder before this."""
    from gradio.utils import NamedString
    from gradio_client import utils as client_utils

    box = gr.File(type="filepath", **options)

    def path_of(upload: Any) -> NamedString:
        if box.file_types and not client_utils.is_valid_file(upload.path, box.file_types):
            raise gr.Error(f"this box takes {', '.join(box.file_types)} files", print_exception=False)
        return NamedString(upload.path)

    box._process_single_file = path_of
    return box


SKIP = "none (skip this smoothing)"


def _model_inputs(gr: Any, catalog: ModelCatalog, task: str, default: str, label: str = "Model",
                  optional: bool = False, elem_id: str | None = None) -> Any:
    """The models the catalog offers for ``task`` (``optional``: with a first choice that skips it, value '')."""
    choices = [(SKIP, "")] * optional + [(choice.label, choice.key) for choice in catalog.for_task(task)]
    value = default if any(key == default for _, key in choices) else (choices[0][1] if choices else None)
    return gr.Dropdown(choices=choices, value=value, label=label, elem_id=elem_id)


def _card(gr: Any, catalog: ModelCatalog, task: str, key: str | None, elem_id: str | None = None) -> Any:
    return gr.Markdown(model_card(catalog.choices.get(f"{key}|{task}")), elem_id=elem_id)


def _checkpoint_inputs(gr: Any) -> tuple[Any, Any]:
    with gr.Accordion("Checkpoint (models from the server's --models folder)", open=False):
        arch = gr.Textbox(label="Architecture of the checkpoint", placeholder="a timm name, torchvision:NAME or an embedded name")
        classes = gr.Number(value=0, precision=0, label="Classes of its head (0: the architecture's own)")
    return arch, classes


def _sampling_inputs(gr: Any, defaults: Any, elem: str) -> tuple:
    with gr.Row():
        n0_box = gr.Number(value=defaults.n0, precision=0, label="n0 (selection)", elem_id=f"{elem}-n0")
        n_box = gr.Number(value=defaults.n, precision=0, label="n (estimation)", elem_id=f"{elem}-n")
        alpha_box = gr.Number(value=defaults.alpha, label="α (failure probability)")
        seed = gr.Number(value=defaults.seed, precision=0, label="seed")
    return n0_box, n_box, alpha_box, seed


def _view_inputs(gr: Any, size_label: str, size: int, stride_label: str, stride: int, defaults: Any) -> tuple:
    """Smooth-Reduce's views (patches or sub-clips): their size and stride, the reduction and the mode."""
    with gr.Row():
        size_box = gr.Number(value=size, precision=0, label=size_label)
        stride_box = gr.Number(value=stride, precision=0, label=stride_label)
    with gr.Row():
        reduce = gr.Radio(list(REDUCTIONS), value=defaults.reduce, label="reduce")
        mode = gr.Dropdown(list(MODES), value=defaults.mode, label="mode")
    return size_box, stride_box, reduce, mode


def _buttons(gr: Any, elem: str) -> tuple[Any, Any]:
    with gr.Row():
        run = gr.Button("Certify", variant="primary", elem_id=f"{elem}-certify")
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{elem}-cancel")
    return run, cancel


def _summary(gr: Any, elem: str, text: str = "Press **Certify**.") -> Any:
    """The certificate's box, tall enough for the progress bar drawn over it while a run is pending."""
    return gr.Markdown(text, elem_id=f"{elem}-certificate", min_height=140)


def _result_image(gr: Any, label: str, elem_id: str | None = None, visible: bool = True) -> Any:
    """A picture of the result; it carries its own title (see :func:`~vision_rs.app.pictures.titled`), so the page
    draws no label over it (``label`` names it for screen readers and the API)."""
    return gr.Image(label=label, show_label=False, interactive=False, elem_id=elem_id, visible=visible)


def _result_plot(gr: Any, label: str) -> Any:
    """A figure of the result; like :func:`_result_image`, titled in the figure itself."""
    return gr.Plot(label=label, show_label=False)


def _sigma_slider(gr: Any, value: float, label: str = "σ (noise std, [0, 1] pixel units)") -> Any:
    return gr.Slider(0.01, 2.0, value=value, step=0.01, label=label)


def _image_tab(gr: Any, handlers: Handlers, catalog: ModelCatalog) -> None:
    from ..models.embedded import DigitsDataset

    defaults = IMAGE_DEFAULTS
    digits = DigitsDataset("test")
    examples = [(f"#{i}: a {digits.labels[i].item()}", i) for i in range(EXAMPLES)]
    with gr.Row():
        with gr.Column(scale=2):
            picture, note = handlers.preview(IMAGE, EMBEDDED, 0, None)
            source, example, upload, preview, preview_note = _source_inputs(
                gr, handlers, "test digit", examples, ["image"], "image",
                lambda: (gr.Image(value=picture, label="Input image", interactive=False, height=160,
                                  elem_id="image-preview"), gr.Markdown(note, elem_id="image-input-note")))
            model = _model_inputs(gr, catalog, IMAGE, defaults.model, elem_id="image-model")
            card = _card(gr, catalog, IMAGE, model.value, "image-model-card")
            method = gr.Radio(list(METHODS), value=defaults.method, label="Method", elem_id="image-method")
            sigma = _sigma_slider(gr, defaults.sigma)
            n0, n, alpha, seed = _sampling_inputs(gr, defaults, "image")
            with gr.Accordion("Smooth-Reduce: overlapping patches", open=False):
                patch_size, patch_stride, reduce, mode = _view_inputs(gr, "patch size (pixels)", defaults.patch_size,
                                                                      "stride (pixels)", defaults.patch_stride, defaults)
            with gr.Accordion("Hierarchical: r changed pixels", open=False):
                with gr.Row():
                    p = gr.Slider(0.5, 1.0, value=defaults.p, step=0.01, label="p (pixel selected and noised)")
                    indicator = gr.Checkbox(value=defaults.indicator, label="indicator channel")
            arch, classes = _checkpoint_inputs(gr)
        with gr.Column(scale=3):
            run, cancel = _buttons(gr, "image")
            summary = _summary(gr, "image")
            with gr.Column(visible=False) as results:
                shares = gr.Label(label="Vote shares of the n draws (top classes)", num_top_classes=5)
                shown = _result_image(gr, "Smooth-Reduce: what each patch sees and how it votes", "image-picture",
                                      visible=defaults.method == "Smooth-Reduce")
                ball = _result_image(gr, "One perturbation inside the certified ball", "image-ball")
                ball_text = gr.Markdown(elem_id="image-ball-text")
                budgets = gr.Dataframe(headers=["r (pixels changed)", "certified L2 budget ε"], value=[],
                                       interactive=False, visible=defaults.method == "Hierarchical",
                                       label="Hierarchical smoothing: certified L2 budget per number of changed pixels r")
                plot = _result_plot(gr, "Radius that N estimation samples would certify at this run's vote shares")
    _previews(gr, handlers, IMAGE, source, example, upload, preview, preview_note, "preview_image")
    _connect(gr, handlers, IMAGE, run, cancel, handlers.certify_image,
             [source, example, upload, model, arch, classes, method, sigma, n0, n, alpha, seed, patch_size, patch_stride,
              reduce, mode, p, indicator], [summary, shares, shown, ball, ball_text, budgets, plot], results,
             "certify_image")
    method.change(lambda chosen: (gr.update(visible=chosen == "Smooth-Reduce"), gr.update(visible=chosen == "Hierarchical")),
                  method, [shown, budgets], queue=False, api_name=False)

    def apply(settings: ImageSettings) -> tuple:
        return tuple(gr.update() if value is None else gr.update(value=value) for value in
                     (settings.model, settings.sigma, settings.method, settings.p, settings.indicator)) + (settings.card,)

    changed = [model, sigma, method, p, indicator, card]
    model.input(lambda key, chosen: apply(after_model_choice(catalog, key, chosen)), [model, method], changed,
                queue=False, api_name=False)
    method.input(lambda chosen, key: apply(after_method_choice(catalog, key, chosen)), [method, model], changed,
                 queue=False, api_name=False)


def _video_tab(gr: Any, handlers: Handlers, catalog: ModelCatalog) -> None:
    from ..models.embedded.clips import digit_clips

    defaults = VIDEO_DEFAULTS
    _, labels = digit_clips("test")
    examples = [(f"#{i}: a moving {labels[i].item()}", i) for i in range(EXAMPLES)]
    with gr.Row():
        with gr.Column(scale=2):
            frames, note = handlers.preview(VIDEO, EMBEDDED, 0, None)
            source, example, upload, strip, strip_note = _source_inputs(
                gr, handlers, "test clip", examples, [".mp4", ".avi", ".mov", ".mkv", ".webm"], "video",
                lambda: (gr.Image(value=frames, label="Frames", interactive=False, elem_id="video-frames", height=200),
                         gr.Markdown(note, elem_id="video-input-note")))
            model = _model_inputs(gr, catalog, VIDEO, defaults.model)
            card = _card(gr, catalog, VIDEO, model.value)
            sigma = _sigma_slider(gr, defaults.sigma)
            n0, n, alpha, seed = _sampling_inputs(gr, defaults, "video")
            with gr.Accordion("Sub-clips along time (temporal Smooth-Reduce)", open=False):
                subclips = gr.Checkbox(value=defaults.subclips, label="reduce over sub-clips")
                length, stride, reduce, mode = _view_inputs(gr, "length (frames)", defaults.subclip_length,
                                                            "stride (frames)", defaults.subclip_stride, defaults)
            arch, classes = _checkpoint_inputs(gr)
        with gr.Column(scale=3):
            run, cancel = _buttons(gr, "video")
            summary = _summary(gr, "video")
            with gr.Column(visible=False) as results:
                shares = gr.Label(label="Vote shares of the n draws (top classes)", num_top_classes=5)
                votes = _result_plot(gr, "Votes along time (each sub-clip's share of the draws)")
    _previews(gr, handlers, VIDEO, source, example, upload, strip, strip_note, "preview_clip")
    _connect(gr, handlers, VIDEO, run, cancel, handlers.certify_video,
             [source, example, upload, model, arch, classes, sigma, n0, n, alpha, seed, subclips, length, stride, reduce,
              mode], [summary, shares, votes], results, "certify_video")
    def model_chosen(key: str) -> tuple:
        choice = catalog.choices.get(f"{key}|{VIDEO}")
        return gr.update(value=choice.sigma) if choice and choice.sigma else gr.update(), model_card(choice)

    model.input(model_chosen, model, [sigma, card], queue=False, api_name=False)


def _segmentation_tab(gr: Any, handlers: Handlers, catalog: ModelCatalog) -> None:
    defaults = SEGMENTATION_DEFAULTS
    examples = [(f"scene #{i}", i) for i in range(EXAMPLES)]
    with gr.Row():
        with gr.Column(scale=2):
            picture, note = handlers.preview(SEGMENTATION, EMBEDDED, 0, None)
            source, example, upload, preview, preview_note = _source_inputs(
                gr, handlers, "test scene", examples, ["image"], "segmentation",
                lambda: (gr.Image(value=picture, label="Input image", interactive=False, height=160),
                         gr.Markdown(note)))
            isotropic = _model_inputs(gr, catalog, SEGMENTATION, defaults.isotropic_model, "Isotropic smoothing: model",
                                      optional=True)
            sigma = _sigma_slider(gr, defaults.sigma, "σ (isotropic)")
            localized = _model_inputs(gr, catalog, SEGMENTATION, defaults.localized_model,
                                      "Localized smoothing: model (each grid cell certified with its own n0 + n draws)",
                                      optional=True)
            card = gr.Markdown(model_card(catalog.choices.get(f"{defaults.isotropic_model}|{SEGMENTATION}")))
            with gr.Row():
                rows = gr.Number(value=defaults.grid_rows, precision=0, label="grid rows")
                cols = gr.Number(value=defaults.grid_cols, precision=0, label="grid columns")
                sigma_min = gr.Number(value=defaults.sigma_min, label="σ_min (own cell)")
                sigma_max = gr.Number(value=defaults.sigma_max, label="σ_max (farthest cells)")
            eps = gr.Textbox(value=defaults.eps, label="ε budgets for the plot (L2, [0, 1] pixel units)")
            n0, n, alpha, seed = _sampling_inputs(gr, defaults, "segmentation")
            arch, classes = _checkpoint_inputs(gr)
        with gr.Column(scale=3):
            run, cancel = _buttons(gr, "segmentation")
            summary = _summary(gr, "segmentation")
            with gr.Column(visible=False) as results:
                with gr.Row() as iso_row:
                    iso_mask = _result_image(gr, "Isotropic: predicted mask")
                    iso_heat = _result_plot(gr, "Isotropic: certified radius per pixel")
                with gr.Row() as loc_row:
                    loc_mask = _result_image(gr, "Localized: predicted mask")
                    loc_heat = _result_plot(gr, "Localized: certified radius per pixel")
                curve = _result_plot(gr, "Certified pixel ratio against ε")
                table = gr.Dataframe(headers=["smoothing", "ε", "certified per pixel", "certified collectively"],
                                     value=[], interactive=False, label="Certified pixels")
    _previews(gr, handlers, SEGMENTATION, source, example, upload, preview, preview_note, "preview_scene")
    _connect(gr, handlers, SEGMENTATION, run, cancel, handlers.certify_segmentation,
             [source, example, upload, isotropic, localized, arch, classes, sigma, rows, cols, sigma_min, sigma_max, n0,
              n, alpha, seed, eps], [summary, iso_mask, iso_heat, loc_mask, loc_heat, curve, table], results,
             "certify_segmentation")
    for dropdown, row in ((isotropic, iso_row), (localized, loc_row)):
        dropdown.input(lambda key: model_card(catalog.choices.get(f"{key}|{SEGMENTATION}")), dropdown, card,
                       queue=False, api_name=False)
        dropdown.change(lambda key: gr.update(visible=bool(key)), dropdown, row, queue=False, api_name=False)


def build_app(handlers: Handlers, config: AppConfig = AppConfig()) -> Any:
    """The page (a ``gr.Blocks``) calling ``handlers``, with its queue set up; launch it with :func:`launch_app`."""
    gr = _gradio()
    catalog = handlers.certifier.catalog
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Image"):
            _image_tab(gr, handlers, catalog)
        with gr.Tab("Video"):
            _video_tab(gr, handlers, catalog)
        with gr.Tab("Segmentation"):
            _segmentation_tab(gr, handlers, catalog)
        demo.unload(_with_session(gr, handlers.page_closed))
    demo.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    return demo


# ------------------------------------------------------------------------------------------ serving


class UploadLimit:
    """ASGI middleware: an upload request whose body is larger than ``limit`` bytes (plus the multipart envelope) is
    refused with 413 and our message, in binary units, before gradio reads it (by its Content-Length), or as soon as
    it has sent that much (without one)."""

    ENVELOPE = 64 << 10
    """Bytes allowed beyond the file for the multipart boundaries and headers."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def message(self) -> bytes:
        return (f"this file is larger than the {size_in_bytes(self.limit)} this app takes (vision-rs app "
                "--max-file-size raises the limit)").encode()

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        most = self.limit + self.ENVELOPE
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > most:
            return await self._refuse(send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            return {"type": "http.disconnect"} if seen > most else message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Callable[..., Any]) -> None:
        body = self.message()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


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


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside (in the main thread), SIGTERM raises KeyboardInterrupt, so that it cleans up like Ctrl+C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def warm_up(catalog: ModelCatalog) -> None:
    """Fit the training-data statistics the embedded models' inputs are checked against (the segmentation scenes take
    seconds to build), so that no first certification waits for them. The served app calls it in its main thread
    while the page is already up: Ctrl+C and SIGTERM interrupt it like the wait that follows."""
    from ..models.embedded.typicality import TRAINING_DATA, training_statistics

    wanted = {choice.reference for choice in catalog.choices.values() if choice.reference}
    for task in TRAINING_DATA:  # the image digits first: the quickest and the most used
        if task in wanted:
            training_statistics(task)


def launch_app(config: AppConfig = AppConfig(), *, block: bool = True, catalog: ModelCatalog | None = None,
               certifier: AppCertifier | None = None) -> tuple[Any, str]:
    """Build and serve the app; returns (the running ``gr.Blocks``, its local URL). ``block``: serve until Ctrl+C or
    SIGTERM, then remove the upload folder made for this server."""
    folder, made = private_upload_folder()
    try:
        with terminate_as_interrupt() if block else contextlib.nullcontext():
            demo, url, handlers = _serve(config, catalog, certifier)
            if block:
                print(f"vision-rs app: open {url} (Ctrl+C stops it)", flush=True)
                try:
                    warm_up(handlers.certifier.catalog)
                    threading.Event().wait()  # until Ctrl+C, or SIGTERM
                except KeyboardInterrupt:
                    print("vision-rs app: stopping", flush=True)
                finally:
                    handlers.close()  # first: a stopped run lets the server close its connections at once
                    demo.close()
    finally:
        if block and made:
            shutil.rmtree(folder, ignore_errors=True)
    return demo, url


def _serve(config: AppConfig, catalog: ModelCatalog | None,
           certifier: AppCertifier | None) -> tuple[Any, str, Handlers]:
    gr = _gradio()
    from starlette.middleware import Middleware

    if certifier is None:
        catalog = catalog or ModelCatalog.scan(config.models_dir, local_caches=config.local_caches)
        certifier = AppCertifier(catalog, config.limits, config.device)
    handlers = Handlers(certifier, config.concurrency)
    demo = build_app(handlers, config)
    demo.launch(
        server_name=config.host, server_port=config.port, share=config.share, prevent_thread_lock=True, quiet=True,
        show_error=False, max_file_size=None, allowed_paths=[], blocked_paths=blocked_paths(config),
        enable_monitoring=False, theme=_offline_theme(gr), footer_links=["api"], ssr_mode=False,
        app_kwargs={"middleware": [Middleware(UploadLimit, limit=config.limits.max_file_size)]},
    )
    return demo, demo.share_url or demo.local_url, handlers
