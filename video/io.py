"""Reading video clips as float tensors ``[T, C, H, W]`` in [0, 1] (uint8 / 255), decoding only the frames asked for.

Two decoders sit behind one function:

* ``"decord"``: ``decord.VideoReader(path).get_batch(indices)`` (the package
  ``decord`` or its maintained fork ``decord2``; both import as ``decord``);
* ``"pyav"``: PyAV (``av``), whose wheels bundle FFmpeg. It reads the packet
  table once (no decoding), seeks to the keyframe before a wanted frame when
  that skips work, and decodes forward until the last wanted frame.

``backend="auto"`` takes decord when it imports and PyAV otherwise. decord
(0.6.0 and decord2 3.4.0 alike) fails to copy frames of some widths (e.g. 32,
48 or 96 pixels, depending on the version; dmlc/decord issue 336): ``auto``
then reads the file with PyAV and says so in :attr:`Clip.note`.

Frame indices count decoded frames in presentation order from 0. A truncated
file whose index survives (the last frame would decode as garbage) is refused
wherever PyAV can inspect its packets, whichever backend decodes it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vision_rs.errors import InvalidParameterError, InvalidVideoError, VisionRSError
from vision_rs.wording import Wording, plural

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
"""Decoders ``read_clip`` can use, in the order ``backend="auto"`` tries them."""

PAD_MODES = ("loop", "repeat")
"""How a video too short for the request is extended: ``loop`` wraps around to frame 0, ``repeat`` repeats the last frame."""

UNIFORM = Wording("uniform=True", "--uniform")
RESIZE_INTERPOLATION = "bilinear, antialiased (torch.nn.functional.interpolate, align_corners=False)"


@dataclass(frozen=True)
class Clip:
    """A decoded clip and what produced it (everything except ``pixels`` goes into run records)."""

    pixels: torch.Tensor = field(repr=False)
    """float32 ``[T, 3, H, W]`` in [0, 1]."""
    path: str
    backend: str
    """The decoder that read the frames: ``"decord"`` or ``"pyav"``."""
    backend_version: str
    """Distribution and version of that decoder, e.g. ``"decord2 3.4.0"`` or ``"av 18.1.0"``."""
    indices: tuple[int, ...]
    """The frame of the video behind each of the T frames of the clip (0-based, presentation order)."""
    total_frames: int
    fps: float | None
    """Average frame rate the container reports (None when it reports none)."""
    source_size: tuple[int, int]
    """(height, width) of the frames as stored in the file."""
    resized_to: tuple[int, int] | None
    integrity_checked: bool
    """Whether the packets were checked for truncation (always with PyAV; with decord only when PyAV is installed)."""
    note: str = ""
    """Why the backend differs from the one asked for, if it does."""

    def record(self) -> dict[str, object]:
        """The reading settings as JSON-ready values, for a run's record."""
        return {
            "path": self.path,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "indices": list(self.indices),
            "total_frames": self.total_frames,
            "fps": self.fps,
            "source_size": list(self.source_size),
            "resized_to": list(self.resized_to) if self.resized_to else None,
            "resize_interpolation": RESIZE_INTERPOLATION if self.resized_to else None,
            "integrity_checked": self.integrity_checked,
            "note": self.note,
        }


# ---------------------------------------------------------------- which frames


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_request(
    frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    uniform: bool = False,
    size: Sequence[int] | None = None,
    pad: str | None = None,
    backend: str = "auto",
) -> None:
    """Refuse impossible reading parameters before any file is opened (:class:`InvalidParameterError`)."""
    if backend != "auto" and backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    if frames is not None and (not _is_int(frames) or frames < 1):
        raise InvalidParameterError(f"frames must be a whole number >= 1 (or None for all frames), got {frames!r}")
    if not _is_int(stride) or stride < 1:
        raise InvalidParameterError(f"stride must be a whole number >= 1 (1 = consecutive frames), got {stride!r}")
    if not _is_int(start) or start < 0:
        raise InvalidParameterError(f"start must be a frame index >= 0, got {start!r}")
    if uniform and frames is None:
        raise InvalidParameterError("{uniform} spreads a fixed number of frames over the video: give {frames}",
                                    uniform=UNIFORM, frames=Wording("frames=N", "--frames N"))
    if uniform and stride != 1:
        raise InvalidParameterError("{uniform} chooses its own spacing; drop {stride} or {uniform}", uniform=UNIFORM,
                                    stride=Wording(f"stride={stride}", f"--stride {stride}"))
    if pad is not None and pad not in PAD_MODES:
        raise InvalidParameterError(f"pad must be None, 'loop' or 'repeat', got {pad!r}")
    if size is not None:
        if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2 \
                or not all(_is_int(v) and v >= 1 for v in size):
            raise InvalidParameterError(f"size must be (height, width) in whole pixels >= 1, got {size!r}")


def frame_indices(
    total_frames: int,
    frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    uniform: bool = False,
    pad: str | None = None,
) -> list[int]:
    """Which frames of a ``total_frames``-frame video a request reads, in clip order.

    * ``frames=None``: every ``stride``-th frame from ``start`` to the end;
    * ``frames=N``: ``start, start + stride, ...``, N of them;
    * ``uniform=True``: N frames spread evenly over ``start .. total_frames - 1``,
      the middle frame of each of N equal segments: ``start + ⌊A(2k + 1) / 2N⌋``
      for k = 0..N-1, with A the number of frames from ``start`` on.

    A request that runs past the end raises :class:`InvalidVideoError` unless
    ``pad`` says how to go on: ``"loop"`` wraps the positions around to frame 0
    (index ``i mod total_frames``), ``"repeat"`` repeats the last frame. With
    ``uniform=True`` a video with fewer than N frames from ``start`` yields each
    of them once, in order, then the padding.
    """
    check_request(frames, stride, start, uniform, None, pad)
    if total_frames < 1:
        raise InvalidVideoError("the video has no frames; check that the file holds a video stream")
    if start >= total_frames:
        raise InvalidVideoError(
            f"start frame {start} is beyond the end: the video has {plural(total_frames, 'frame')} (0..{total_frames - 1})"
        )
    available = total_frames - start
    if frames is None:
        return list(range(start, total_frames, stride))
    if uniform and frames <= available:
        return [start + (available * (2 * k + 1)) // (2 * frames) for k in range(frames)]
    step = 1 if uniform else stride
    wanted = [start + step * k for k in range(frames)]
    if wanted[-1] < total_frames:
        return wanted
    if pad is None:
        spacing = "spread uniformly" if uniform else f"at stride {stride}"
        raise InvalidVideoError(
            f"the video is too short: it has {plural(total_frames, 'frame')}, and {frames} frames {spacing} from frame "
            f"{start} need frame {wanted[-1]}. Ask for fewer frames ({{frames}}) or a smaller {{stride}}, or pad the clip: "
            "{loop} wraps around to the first frame, {repeat} repeats the last one.",
            frames=Wording("frames=", "--frames"), stride=Wording("stride=", "--stride"),
            loop=Wording("pad='loop'", "--pad loop"), repeat=Wording("pad='repeat'", "--pad repeat"))
    if pad == "loop":
        return [index % total_frames for index in wanted]
    return [min(index, total_frames - 1) for index in wanted]


# ---------------------------------------------------------------- decoders


class _Source(Protocol):
    """An open video: its frame count and rate, and a way to decode chosen frames."""

    total_frames: int
    fps: float | None
    integrity_checked: bool

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` for strictly increasing ``indices``."""
        ...


class _BackendCannotRead(VisionRSError):
    """This decoder fails on a file another decoder may read (internal: ``auto`` moves on)."""


@lru_cache(maxsize=None)
def _distribution_version(module: str) -> str:
    """``"<distribution> <version>"`` of the installed package that provides ``module``."""
    for name in {"decord": ("decord2", "decord"), "av": ("av",)}[module]:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{module} {getattr(importlib.import_module(module), '__version__', 'unknown')}"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """The decoders that import here, in the order ``backend="auto"`` tries them."""
    return [name for name, module in zip(BACKENDS, ("decord", "av")) if _importable(module)]


@dataclass
class _PacketTable:
    """What PyAV learns from the packets alone, without decoding: presentation timestamps and keyframes."""

    pts: list[int]
    """Presentation timestamps in presentation order: frame i has ``pts[i]``."""
    keyframes: list[int]
    """Indices of the frames whose packets are keyframes, increasing."""


def _pyav_packet_table(container: object, stream: object, path: Path) -> _PacketTable:
    """Demux every packet of ``stream`` once; refuse files that are truncated or carry no timestamps."""
    stamps: list[tuple[int, bool]] = []
    for packet in container.demux(stream):  # type: ignore[attr-defined]
        if packet.size == 0:  # the flush packet at the end
            continue
        if packet.is_corrupt:
            raise InvalidVideoError(f"{path} is truncated or damaged: a packet is incomplete. Re-encode or re-download it.")
        if packet.pts is None:
            raise _BackendCannotRead(
                f"{path} has frames without timestamps (a raw stream?); remux it into a container such as mp4 "
                "(ffmpeg -i in -c copy out.mp4) or read it with {decord}",
                decord=Wording("backend='decord'", "--backend decord"))
        stamps.append((int(packet.pts), bool(packet.is_keyframe)))
    announced = int(stream.frames or 0)  # type: ignore[attr-defined]
    if announced > len(stamps):
        raise InvalidVideoError(
            f"{path} is truncated: its header announces {announced} frames but only {plural(len(stamps), 'frame')} "
            f"{'is' if len(stamps) == 1 else 'are'} present"
        )
    stamps.sort()
    return _PacketTable(pts=[p for p, _ in stamps], keyframes=[i for i, (_, key) in enumerate(stamps) if key])


def _ffmpeg_error() -> type[Exception]:
    import av

    return av.FFmpegError


class _PyAVSource:
    """PyAV decoding: one seek to the keyframe before a wanted frame when it skips decoding, then forward."""

    name = "pyav"

    def __init__(self, path: Path) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self.path = path
        self.version = _distribution_version("av")
        self.to_rgb = VideoReformatter()  # one converter for all frames: a new one per frame costs ~10x the decoding
        try:
            self.container = av.open(str(path))
        except av.FFmpegError as exc:
            raise _BackendCannotRead(f"PyAV cannot open {path}: {exc}. Is it a complete video file?") from exc
        try:
            if not self.container.streams.video:
                raise InvalidVideoError(f"{path} holds no video stream (an empty video or an audio-only file)")
            self.stream = self.container.streams.video[0]
            self.table = _pyav_packet_table(self.container, self.stream, path)
            rate = self.stream.average_rate or self.stream.guessed_rate
        except av.FFmpegError as exc:
            self.container.close()
            raise _BackendCannotRead(f"PyAV cannot read the packets of {path}: {exc}") from exc
        except BaseException:
            self.container.close()
            raise
        self.total_frames = len(self.table.pts)
        self.fps = float(rate) if rate else None
        self.integrity_checked = True

    def close(self) -> None:
        self.container.close()

    def _keyframe_at_or_before(self, index: int) -> int:
        position = int(np.searchsorted(self.table.keyframes, index, side="right")) - 1
        return self.table.keyframes[position] if position >= 0 else 0

    def read(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return np.stack(list(self._decode(indices)))
        except _ffmpeg_error() as exc:
            raise InvalidVideoError(f"{self.path} cannot be decoded: {exc}. Is the file complete?") from exc

    def _decode(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        index_of = {pts: i for i, pts in enumerate(self.table.pts)}
        decoded = -1  # index of the last frame decoded so far
        frames: Iterator[object] | None = None
        for wanted in indices:
            key = self._keyframe_at_or_before(wanted)
            if frames is None or key > decoded + 1:  # a keyframe lies ahead of the decoder: jump to it
                self.container.seek(self.table.pts[key], stream=self.stream, backward=True, any_frame=False)
                frames = self.container.decode(self.stream)
            for frame in frames:
                decoded = index_of.get(frame.pts, -2)  # type: ignore[attr-defined]
                if decoded == -2:
                    raise InvalidVideoError(f"{self.path}: decoded a frame with an unknown timestamp {frame.pts}")  # type: ignore[attr-defined]
                if decoded == wanted:
                    yield self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
                    break
                if decoded > wanted:
                    raise InvalidVideoError(f"{self.path}: seeking overshot frame {wanted}; re-encode the file with regular keyframes")
            else:
                raise InvalidVideoError(f"{self.path} ended before frame {wanted} could be decoded; the file may be damaged")


class _DecordSource:
    """decord decoding: ``VideoReader.get_batch`` on the wanted indices only."""

    name = "decord"

    def __init__(self, path: Path) -> None:
        import decord

        self.path = path
        self.version = _distribution_version("decord")
        self.integrity_checked = False
        if _importable("av"):  # decord cannot tell a truncated file; PyAV's packet table can
            try:
                _PyAVSource(path).close()
                self.integrity_checked = True
            except _BackendCannotRead as exc:  # a file only decord reads: no check, decord decides
                log.debug("no truncation check for %s: %s", path, exc)
        try:
            with _native_stderr_to_log("decord"):
                self.reader = decord.VideoReader(str(path))
            self.total_frames = len(self.reader)
            rate = self.reader.get_avg_fps()
        except (decord.DECORDError, RuntimeError) as exc:
            raise _BackendCannotRead(
                f"decord cannot open {path}: {str(exc).splitlines()[0]}. Is it a complete video file?"
            ) from exc
        self.fps = float(rate) if rate and np.isfinite(rate) and rate > 0 else None

    def close(self) -> None:
        del self.reader

    def read(self, indices: Sequence[int]) -> np.ndarray:
        import decord

        try:
            with _native_stderr_to_log("decord"):
                batch = self.reader.get_batch(list(indices)).asnumpy()
        except decord.DECORDError as exc:
            if "DECORDArrayCopyFromTo" in str(exc):
                raise _BackendCannotRead(
                    f"decord cannot copy frames of this width out of {self.path} (a known decord bug, dmlc/decord "
                    "issue 336); read it with {pyav}", pyav=Wording("backend='pyav' or 'auto'", "--backend pyav or auto")
                ) from exc
            raise InvalidVideoError(f"{self.path} cannot be decoded: {str(exc).splitlines()[0]}") from exc
        if batch.ndim != 4 or batch.shape[0] != len(indices) or batch.shape[-1] != 3:
            raise _BackendCannotRead(f"decord returned frames of shape {batch.shape} for {self.path}; expected [N, H, W, 3]")
        return batch


_SOURCES = {"decord": _DecordSource, "pyav": _PyAVSource}

NATIVE_LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.(cc|cpp|h):\d+: ")
"""A line of decord's C++ log (``[02:16:54] /project/src/video/video_reader.cc:86: ERROR opening: ...``)."""


@contextmanager
def _native_stderr_to_log(library: str) -> Iterator[None]:
    """Catch what native code writes to the process's stderr meanwhile: ``library``'s own log lines go to the debug
    log (our error says what failed, in our words), anything else is written back to stderr afterwards. The file
    descriptor is the process's, so output of other threads in that window comes a little late, never lost."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:  # also when the library raised: its line is what our error replaces
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if NATIVE_LOG_LINE.match(line):
                    log.debug("%s: %s", library, line)
                else:
                    sys.stderr.write(line + "\n")


@contextmanager
def _open(name: str, path: Path) -> Iterator[_Source]:
    source = _SOURCES[name](path)
    try:
        yield source
    finally:
        source.close()


def _backends_to_try(backend: str) -> list[str]:
    installed = available_backends()
    if backend == "auto":
        if not installed:
            raise InvalidVideoError(
                "no video decoder is installed: pip install decord2 (or decord), or pip install av for PyAV"
            )
        return installed
    if backend not in installed:
        package = "decord2 (or decord)" if backend == "decord" else "av"
        raise InvalidVideoError(f"backend {backend!r} is not installed: pip install {package}, or use {{auto}}",
                                auto=Wording("backend='auto'", "--backend auto"))
    return [backend]


def _existing_file(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidVideoError(f"a video path must be a string or path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise InvalidVideoError(f"video file not found: {path}")
    if not path.is_file():
        raise InvalidVideoError(f"{path} is not a file; pass the path of one video")
    if path.stat().st_size == 0:
        raise InvalidVideoError(f"video file {path} is empty (0 bytes)")
    return path


# ---------------------------------------------------------------- the public functions

_WARNED: set[str] = set()


def _warn_once(message: str, key: str) -> None:
    """A fallback is worth one warning per process and backend; later ones go to the info log (and Clip.note)."""
    log.log(logging.DEBUG if key in _WARNED else logging.WARNING, "%s", message)
    _WARNED.add(key)



def _to_unit_clip(frames: np.ndarray, order: list[int], size: Sequence[int] | None) -> torch.Tensor:
    """uint8 [N, H, W, 3] (distinct frames) → float32 [T, 3, H, W] / 255 in clip ``order``, resized if asked."""
    chosen = np.ascontiguousarray(frames[order].transpose(0, 3, 1, 2))
    clip = torch.from_numpy(chosen).to(torch.float32).div_(255.0)
    if size is not None and tuple(size) != tuple(clip.shape[-2:]):
        clip = F.interpolate(clip, size=tuple(int(v) for v in size), mode="bilinear", align_corners=False, antialias=True)
        clip = clip.clamp_(0.0, 1.0).contiguous()
    return clip


def read_clip_info(
    path: str | os.PathLike,
    frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    uniform: bool = False,
    size: Sequence[int] | None = None,
    pad: str | None = None,
    backend: str = "auto",
) -> Clip:
    """Read frames of a video into a :class:`Clip`: the pixels and what produced them.

    Parameters as :func:`read_clip`. Raises :class:`InvalidParameterError` for
    impossible parameters and :class:`InvalidVideoError` for a missing,
    unreadable, truncated, empty or too short video.
    """
    check_request(frames, stride, start, uniform, size, pad, backend)
    file = _existing_file(path)
    names = _backends_to_try(backend)
    failures: list[Wording] = []
    for name in names:
        try:
            with _open(name, file) as source:
                order = _frames_of(file, source.total_frames, frames, stride, start, uniform, pad)
                distinct = sorted(set(order))
                decoded = source.read(distinct)
                position = {index: i for i, index in enumerate(distinct)}
                pixels = _to_unit_clip(decoded, [position[i] for i in order], size)
                if failures:
                    _warn_once(f"read {file} with {name} after: " + "; ".join(failure.cli for failure in failures), key=name)
                return Clip(
                    pixels=pixels,
                    path=str(file),
                    backend=name,
                    backend_version=source.version,  # type: ignore[attr-defined]
                    indices=tuple(order),
                    total_frames=source.total_frames,
                    fps=source.fps,
                    source_size=(int(decoded.shape[1]), int(decoded.shape[2])),
                    resized_to=tuple(int(v) for v in size) if size is not None else None,  # type: ignore[arg-type]
                    integrity_checked=source.integrity_checked,
                    note="; ".join(failure.python for failure in failures),
                )
        except _BackendCannotRead as exc:
            log.debug("%s", exc)
            failures.append(Wording.of(exc))
    raise InvalidVideoError(f"cannot read {file}: {{failures}}", failures=Wording.joined("; ", failures))


def _frames_of(file: Path, total_frames: int, *request: object) -> list[int]:
    """:func:`frame_indices` of one file, whose errors (too short, start beyond the end) name the file."""
    try:
        return frame_indices(total_frames, *request)  # type: ignore[arg-type]
    except InvalidVideoError as exc:
        raise InvalidVideoError(f"{file}: {{reason}}", reason=Wording.of(exc)) from None


def read_clip(
    path: str | os.PathLike,
    frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    uniform: bool = False,
    size: Sequence[int] | None = None,
    pad: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Read a clip as float32 ``[T, 3, H, W]`` in [0, 1] (uint8 / 255), decoding only the frames it needs.

    ``frames`` frames ``stride`` apart from frame ``start`` (``frames=None``: all
    of them to the end), or with ``uniform=True`` ``frames`` frames spread evenly
    from ``start`` to the end (see :func:`frame_indices`). A video too short for
    the request raises unless ``pad="loop"`` (wrap around) or ``pad="repeat"``
    (repeat the last frame). ``size=(H, W)`` resizes every frame after decoding,
    bilinearly with antialiasing, so both backends resize alike. ``backend``:
    ``"auto"`` (decord, else PyAV), ``"decord"`` or ``"pyav"``. Use
    :func:`read_clip_info` to learn which backend read it and which frames.
    """
    return read_clip_info(path, frames, stride, start, uniform, size, pad, backend).pixels


__all__ = [
    "BACKENDS",
    "PAD_MODES",
    "RESIZE_INTERPOLATION",
    "Clip",
    "available_backends",
    "check_request",
    "frame_indices",
    "read_clip",
    "read_clip_info",
]
