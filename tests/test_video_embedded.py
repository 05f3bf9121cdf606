"""The embedded moving-digit clips, their mp4 files, the 3D CNN and its training script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from vision_rs import video
from vision_rs.errors import InvalidParameterError, OutputPathError
from vision_rs.models.embedded import digits_split
from vision_rs.models.embedded.clips import (
    CLIP_FRAMES,
    MAX_SHIFT,
    MovingDigitsDataset,
    bounce_path,
    clip_file,
    digit_clips,
    moving_clip,
    write_clips,
)
from vision_rs.models.embedded.videonet import (
    EMBEDDED_VIDEO_MODELS,
    DigitsC3D,
    video_weights_path,
)
from vision_rs.video import available_backends

SCRIPT = Path(__file__).resolve().parents[1] / "demos" / "train_video.py"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train_video():
    spec = importlib.util.spec_from_file_location("train_video", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- clips


def test_clips_of_each_split_come_from_the_digits_of_that_split() -> None:
    for split, count in (("train", 1437), ("test", 360)):
        clips, labels = digit_clips(split)
        images, digit_labels = digits_split(split)
        assert clips.shape == (count, CLIP_FRAMES, 3, 32, 32) and clips.dtype == torch.uint8
        assert torch.equal(labels, digit_labels)
        for index in (0, count // 2, count - 1):  # undo the shift: the digit image itself is under the clip
            dy, dx = bounce_path(CLIP_FRAMES, (_seed(split), index))[0]
            inside = clips[index, 0, :, max(dy, 0) : 32 + min(dy, 0), max(dx, 0) : 32 + min(dx, 0)]
            assert torch.equal(inside, images[index, :, max(-dy, 0) : 32 + min(-dy, 0), max(-dx, 0) : 32 + min(-dx, 0)])


def _seed(split: str) -> int:
    from vision_rs.models.embedded import clips

    return clips._MOTION_SEEDS[split]


def test_clips_are_deterministic_and_independent_of_each_other() -> None:
    clips, _ = digit_clips("test")
    images, _ = digits_split("test")
    again = moving_clip(images[7].numpy(), bounce_path(CLIP_FRAMES, (_seed("test"), 7)))
    assert np.array_equal(again, clips[7].numpy())
    assert not torch.equal(clips[7], clips[8])


def test_the_digit_moves_and_bounces_inside_the_canvas() -> None:
    paths = np.stack([bounce_path(CLIP_FRAMES, (_seed("train"), i)) for i in range(200)])
    assert np.abs(paths).max() <= MAX_SHIFT
    steps = np.abs(np.diff(paths, axis=1))
    assert steps.max() <= 2 and (steps.sum(axis=(1, 2)) > 0).all()  # every clip moves
    turned = (np.sign(np.diff(paths, axis=1))[:, 1:] * np.sign(np.diff(paths, axis=1))[:, :-1] < 0).any(axis=(1, 2))
    assert turned.mean() > 0.5  # most clips bounce off a wall within 16 frames


def test_dataset_items() -> None:
    dataset = MovingDigitsDataset("test")
    clip, label = dataset[3]
    assert len(dataset) == 360 and clip.shape == (CLIP_FRAMES, 3, 32, 32) and label == int(digits_split("test")[1][3])


# ---------------------------------------------------------------- mp4 files


@pytest.mark.skipif("pyav" not in available_backends(),
                    reason="reading 32-pixel-wide clips needs av: decord2 cannot copy frames of that width")
def test_written_clips_read_back_within_codec_tolerance(tmp_path: Path) -> None:
    """mp4v with 4:2:0 chroma: measured mean error ≈ 3.3/255 over the test clips (worst clip 5.2/255)."""
    pytest.importorskip("cv2", reason="writing clips needs opencv-python-headless")
    from vision_rs.video import read_clip_info

    paths = write_clips(tmp_path, "test", limit=6)
    clips, labels = digit_clips("test")
    assert paths == [clip_file(tmp_path, int(labels[i]), i) for i in range(6)]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted({str(int(labels[i])) for i in range(6)} | {p.name for p in paths})
    for index, path in enumerate(paths):
        read = read_clip_info(path)
        assert read.pixels.shape == (CLIP_FRAMES, 3, 32, 32) and read.total_frames == CLIP_FRAMES
        error = (read.pixels - clips[index].float() / 255).abs()
        assert float(error.mean()) < 8 / 255


def test_write_clips_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    pytest.importorskip("cv2", reason="writing clips needs opencv-python-headless")
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(OutputPathError, match="cannot create the clip folder"):
        write_clips(tmp_path / "file", "test", limit=1)
    with pytest.raises(InvalidParameterError, match="limit must be"):
        write_clips(tmp_path, "test", limit=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------- the 3D CNN


def test_digits_c3d_shape_size_and_config() -> None:
    model = DigitsC3D().eval()
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with torch.inference_mode():
        assert model(torch.rand(2, 3, CLIP_FRAMES, 32, 32)).shape == (2, 10)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_frames"] == 16 and cfg["num_classes"] == 10 and cfg["crop_pct"] == 1.0
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and min(cfg["std"]) > 0


def test_same_seed_same_weights(train_video) -> None:
    first, record = train_video.train_model(0.25, epochs=1, seed=3, limit=24, batch_size=8)
    again, _ = train_video.train_model(0.25, epochs=1, seed=3, limit=24, batch_size=8)
    other, _ = train_video.train_model(0.25, epochs=1, seed=4, limit=24, batch_size=8)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert record["task"] == "video-classification" and record["architecture"]["name"] == "digits_c3d"


@pytest.mark.skipif(not video_weights_path("digits_c3d.sigma_0.25").is_file(), reason="weights not trained yet")
def test_shipped_weights_classify_noisy_test_clips(train_video) -> None:
    """60 test clips, one noise draw at the training σ; chance is 1/10.

    With the measured noisy accuracy of 0.9 or more, fewer than 40 correct has probability
    binom.cdf(39, 60, 0.9) < 1e-4 (false failure); a model at chance passes with probability
    binom.sf(39, 60, 0.1) < 1e-20.
    """
    needed = 40
    assert binom.cdf(needed - 1, 60, 0.9) < 1e-4
    sigma = float(EMBEDDED_VIDEO_MODELS["digits_c3d.sigma_0.25"]["sigma"])
    classifier = video.smooth("digits_c3d.sigma_0.25", sigma, device="cpu", progress=False).base
    clips, labels = digit_clips("test")
    pixels = clips[:60].float() / 255.0
    noise = sigma * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    correct = round(train_video.accuracy(classifier.eval(), pixels, labels[:60], noise) * 60)
    assert correct >= needed
