"""Reading clips: frame indices, both decoders against frames written with OpenCV, and every refusal.

Codec tolerance: the test video is a smooth pattern that moves 3 pixels a frame,
written with OpenCV's mp4v encoder (MPEG-4 part 2, 4:2:0 chroma). Decoded
frames differ from the written ones by about 4.6/255 on average (max ≈ 24/255),
so a frame passes when its mean absolute error is below 8/255 *and* the written
frame closest to it is the one asked for (consecutive frames differ by about
50/255, so an off-by-one frame cannot pass).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision_rs.errors import InvalidImageError, InvalidParameterError, InvalidVideoError
from vision_rs.video import frame_indices, io, read_clip, read_clip_info

try:
    import cv2
except ImportError:  # the pure index tests still run
    cv2 = None

HAS = {name: name in io.available_backends() for name in io.BACKENDS}
needs_files = pytest.mark.skipif(
    cv2 is None or not any(HAS.values()),
    reason="writes videos with OpenCV (opencv-python-headless) and reads them with decord2 (or decord) or av",
)
TOLERANCE = 8 / 255
FRAMES, HEIGHT, WIDTH, FPS = 40, 48, 64, 25.0


def backend_param(name: str) -> object:
    package = "decord2 (or decord)" if name == "decord" else "av"
    return pytest.param(name, marks=pytest.mark.skipif(not HAS[name], reason=f"{package} is not installed"))


BOTH = [backend_param("decord"), backend_param("pyav")]
needs_both = pytest.mark.skipif(not all(HAS.values()), reason="compares decord with PyAV: needs decord2 (or decord) and av")


def pattern(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames: sinusoids moving 3 px/frame, a blue level that grows with t."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        out[t, ..., 0] = 128 + 100 * np.sin((xx + 3 * t) / 6.0)
        out[t, ..., 1] = 128 + 100 * np.cos((yy - 2 * t) / 5.0)
        out[t, ..., 2] = (t * 6) % 256
    return out


def write_mp4(path: Path, frames: np.ndarray) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return pattern(FRAMES, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, source: np.ndarray) -> Path:
    return write_mp4(tmp_path_factory.mktemp("video") / "pattern.mp4", source)


def as_source_clip(source: np.ndarray, indices: list[int]) -> torch.Tensor:
    return torch.from_numpy(source[indices]).permute(0, 3, 1, 2).float() / 255


def assert_frames_are(clip: torch.Tensor, source: np.ndarray, indices: list[int]) -> None:
    """Each decoded frame is within codec tolerance of the written frame asked for, and closest to it."""
    everything = as_source_clip(source, list(range(len(source))))
    for position, index in enumerate(indices):
        distances = (everything - clip[position]).abs().mean(dim=(1, 2, 3))
        assert int(distances.argmin()) == index, f"frame {position}: closest written frame {int(distances.argmin())}, asked {index}"
        assert float(distances[index]) < TOLERANCE


# ---------------------------------------------------------------- which frames (pure)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(frames=4), [0, 1, 2, 3]),
        (dict(frames=3, stride=3, start=2), [2, 5, 8]),
        (dict(), list(range(10))),
        (dict(stride=4, start=1), [1, 5, 9]),
        (dict(frames=10), list(range(10))),
        (dict(frames=3, uniform=True), [1, 5, 8]),  # middles of [0,3.33), [3.33,6.67), [6.67,10)
        (dict(frames=4, uniform=True, start=2), [3, 5, 7, 9]),  # middles of 4 segments of frames 2..9
        (dict(frames=1, uniform=True), [5]),
        (dict(frames=10, uniform=True), list(range(10))),
        (dict(frames=5, stride=3, start=6, pad="loop"), [6, 9, 2, 5, 8]),  # 12 → 2, 15 → 5, 18 → 8
        (dict(frames=5, stride=3, start=6, pad="repeat"), [6, 9, 9, 9, 9]),
        (dict(frames=13, pad="loop"), list(range(10)) + [0, 1, 2]),
        (dict(frames=6, uniform=True, start=7, pad="loop"), [7, 8, 9, 0, 1, 2]),
        (dict(frames=6, uniform=True, start=7, pad="repeat"), [7, 8, 9, 9, 9, 9]),
        (dict(frames=3, stride=2, pad="loop"), [0, 2, 4]),  # pad only matters when the video is too short
    ],
)
def test_frame_indices_on_a_ten_frame_video(kwargs: dict, expected: list[int]) -> None:
    assert frame_indices(10, **kwargs) == expected


def test_too_short_without_pad_says_how_to_pad() -> None:
    with pytest.raises(InvalidVideoError, match=r"too short: it has 10 frames.*need frame 12.*pad='loop'"):
        frame_indices(10, frames=5, stride=3)
    with pytest.raises(InvalidVideoError, match="too short"):
        frame_indices(10, frames=11, uniform=True)


def test_start_beyond_the_end_is_refused_even_with_pad() -> None:
    for pad in (None, "loop", "repeat"):
        with pytest.raises(InvalidVideoError, match=r"start frame 10 is beyond the end: the video has 10 frames"):
            frame_indices(10, frames=2, start=10, pad=pad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frames=0), "frames must be"),
        (dict(frames=-3), "frames must be"),
        (dict(frames=2.5), "frames must be"),
        (dict(frames=True), "frames must be"),
        (dict(stride=0), "stride must be"),
        (dict(start=-1), "start must be"),
        (dict(uniform=True), "give frames=N"),
        (dict(frames=4, uniform=True, stride=2), "drop stride=2"),
        (dict(pad="zeros"), "pad must be"),
        (dict(size=(0, 32)), "size must be"),
        (dict(size=(32,)), "size must be"),
        (dict(size="32x32"), "size must be"),
        (dict(size=(32.0, 32)), "size must be"),
        (dict(backend="ffmpeg"), "backend must be"),
    ],
)
def test_impossible_parameters_are_refused_before_the_file_is_opened(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        read_clip(tmp_path / "never-opened.mp4", **kwargs)


# ---------------------------------------------------------------- round trip


@needs_files
@pytest.mark.parametrize("backend", BOTH)
def test_round_trip_reads_back_every_written_frame(backend: str, video: Path, source: np.ndarray) -> None:
    clip = read_clip_info(video, backend=backend)
    assert clip.pixels.shape == (FRAMES, 3, HEIGHT, WIDTH) and clip.pixels.dtype == torch.float32
    assert 0.0 <= float(clip.pixels.min()) and float(clip.pixels.max()) <= 1.0
    assert clip.backend == backend and clip.indices == tuple(range(FRAMES)) and clip.note == ""
    assert clip.total_frames == FRAMES and clip.fps == pytest.approx(FPS) and clip.source_size == (HEIGHT, WIDTH)
    assert clip.backend_version.split()[0] in ({"decord", "decord2"} if backend == "decord" else {"av"})
    assert_frames_are(clip.pixels, source, list(range(FRAMES)))


@needs_files
@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(frames=8, stride=3, start=5),
        dict(frames=7, uniform=True),
        dict(frames=6, stride=9, start=10, pad="loop"),
        dict(frames=5, stride=4, start=30, pad="repeat"),
        dict(stride=13, start=1),
    ],
)
def test_sampled_frames_equal_those_of_a_full_decode(backend: str, kwargs: dict, video: Path, source: np.ndarray) -> None:
    """Seeking and skipping decode exactly the frames a full sequential decode gives at those indices."""
    everything = read_clip(video, backend=backend)
    clip = read_clip_info(video, backend=backend, **kwargs)
    expected = frame_indices(FRAMES, **kwargs)
    assert list(clip.indices) == expected
    assert torch.equal(clip.pixels, everything[expected])
    assert_frames_are(clip.pixels, source, expected)


@needs_files
@needs_both
@pytest.mark.parametrize("kwargs", [dict(), dict(frames=8, stride=3, start=5), dict(frames=7, uniform=True)])
def test_decord_and_pyav_read_the_same_frames(video: Path, kwargs: dict) -> None:
    by_decord = read_clip_info(video, backend="decord", **kwargs)
    by_pyav = read_clip_info(video, backend="pyav", **kwargs)
    assert by_decord.indices == by_pyav.indices and by_decord.total_frames == by_pyav.total_frames
    assert float((by_decord.pixels - by_pyav.pixels).abs().mean()) <= 1 / 255  # same FFmpeg decoder, own builds


@needs_files
@pytest.mark.parametrize("backend", BOTH)
def test_resize_at_read_time_is_antialiased_bilinear(backend: str, video: Path) -> None:
    full = read_clip(video, frames=4, backend=backend)
    clip = read_clip_info(video, frames=4, size=(24, 40), backend=backend)
    expected = F.interpolate(full, size=(24, 40), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    assert clip.pixels.shape == (4, 3, 24, 40) and torch.allclose(clip.pixels, expected, atol=1e-6)
    assert clip.resized_to == (24, 40) and clip.source_size == (HEIGHT, WIDTH)
    assert "bilinear" in clip.record()["resize_interpolation"]


@needs_files
def test_record_is_json_ready(video: Path) -> None:
    record = read_clip_info(video, frames=3, stride=2).record()
    assert json.loads(json.dumps(record)) == record
    assert record["indices"] == [0, 2, 4] and record["backend"] in io.BACKENDS and "pixels" not in record


@needs_files
@pytest.mark.skipif(not HAS["pyav"], reason="av is not installed")
def test_auto_falls_back_to_pyav_when_decord_does_not_import(monkeypatch: pytest.MonkeyPatch, video: Path) -> None:
    monkeypatch.setattr(io, "available_backends", lambda: ["pyav"])
    assert read_clip_info(video, frames=2).backend == "pyav"
    with pytest.raises(InvalidVideoError, match=r"backend 'decord' is not installed: pip install decord2"):
        read_clip(video, backend="decord")


def test_no_decoder_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(io, "available_backends", lambda: [])
    (tmp_path / "some.mp4").write_bytes(b"not decoded")
    with pytest.raises(InvalidVideoError, match="no video decoder is installed: pip install decord2"):
        read_clip(tmp_path / "some.mp4")


@needs_files
@pytest.mark.skipif(not HAS["pyav"], reason="av is not installed")
def test_a_width_decord_cannot_copy_is_read_correctly_by_auto(tmp_path: Path) -> None:
    """decord 0.6.0 and decord2 3.4.0 both fail to copy 48-pixel-wide frames (dmlc/decord issue 336)."""
    source = pattern(6, 32, 48)
    path = write_mp4(tmp_path / "narrow.mp4", source)
    clip = read_clip_info(path)
    assert_frames_are(clip.pixels, source, list(range(6)))
    if clip.backend == "pyav" and HAS["decord"]:
        assert "decord" in clip.note
    if HAS["decord"]:
        try:  # a decord that reads it must read it right; one that cannot must say so in our terms
            assert_frames_are(read_clip(path, backend="decord"), source, list(range(6)))
        except InvalidVideoError as exc:
            assert "decord cannot copy frames of this width" in str(exc)


# ---------------------------------------------------------------- refusals


def ensure_refused(path: Path, match: str, **kwargs: object) -> None:
    """Every installed backend and auto refuse ``path`` with our error, and leave the folder as it was."""
    before = sorted(path.parent.iterdir()) if path.parent.exists() else []
    for backend in ["auto"] + [name for name, present in HAS.items() if present]:
        with pytest.raises(InvalidVideoError, match=match) as caught:
            read_clip(path, backend=backend, **kwargs)
        assert isinstance(caught.value, InvalidImageError)  # InvalidVideoError is an InvalidImageError
    after = sorted(path.parent.iterdir()) if path.parent.exists() else []
    assert before == after


def test_missing_file(tmp_path: Path) -> None:
    ensure_refused(tmp_path / "nowhere.mp4", "video file not found")


def test_a_folder_is_not_a_video(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    ensure_refused(tmp_path / "clips", "is not a file")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    ensure_refused(tmp_path / "zero.mp4", r"is empty \(0 bytes\)")


@needs_files
def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    ensure_refused(tmp_path / "noise.mp4", "cannot (open|read)")


@needs_files
def test_truncated_opencv_mp4(tmp_path: Path, video: Path) -> None:
    """OpenCV writes the index at the end: cutting the file loses it."""
    data = video.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    ensure_refused(tmp_path / "cut.mp4", "cannot (open|read)")


@needs_files
@pytest.mark.skipif(not HAS["pyav"], reason="needs av to move the index to the front and to inspect packets")
def test_truncated_mp4_with_its_index_in_front(tmp_path: Path, video: Path) -> None:
    """The index survives the cut; both decoders would return a garbage last frame. We refuse the file."""
    import av

    whole = tmp_path / "faststart.mp4"
    with av.open(str(video)) as src, av.open(str(whole), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    assert read_clip(whole, frames=2).shape[0] == 2  # the remuxed file is fine before the cut
    data = whole.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.7)])
    ensure_refused(tmp_path / "cut.mp4", "truncated", frames=2)


@needs_files
def test_video_without_frames(tmp_path: Path) -> None:
    writer = cv2.VideoWriter(str(tmp_path / "empty.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    writer.release()
    ensure_refused(tmp_path / "empty.mp4", "no video stream|no frames|cannot (open|read)")


@needs_files
def test_too_short_and_start_beyond_the_end(video: Path) -> None:
    ensure_refused(video, r"too short: it has 40 frames", frames=21, stride=2)
    ensure_refused(video, r"start frame 40 is beyond the end", frames=1, start=40)
    for backend in [name for name, present in HAS.items() if present]:
        assert read_clip(video, frames=21, stride=2, pad="repeat", backend=backend).shape[0] == 21
