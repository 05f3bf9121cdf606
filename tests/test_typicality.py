"""The check of inputs against the embedded models' training data: image statistics and a threshold both fitted on
the training split (a photo is unusual, held-out digits are not)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vision_rs.models.embedded import digits_split
from vision_rs.models.embedded.typicality import STATISTICS, TrainingStatistics, image_statistics, training_statistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small checks


def _photo(name: str) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    return torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float() / 255


def _jpeg(image: torch.Tensor, quality: int = 75, scale: int = 8) -> torch.Tensor:
    """``image`` uint8 [3, H, W] scaled up and saved as a JPEG, read back as float [3, H·scale, W·scale]."""
    picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((image.shape[2] * scale, image.shape[1] * scale),
                                                                     Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def test_a_photo_is_unlike_the_digits_and_held_out_digits_are_not() -> None:
    reference = training_statistics("image-classification")
    photo = reference.check(_photo("china.jpg"))
    assert photo.unusual and photo.p_value == pytest.approx(1 / (len(reference.held_back) + 1))
    assert photo.distance > 2 * photo.threshold, "a photo is far outside, not at the edge"
    test_images = digits_split("test")[0]
    offered = [reference.check(image.float() / 255) for image in test_images[:24]]  # the app's embedded examples
    assert not any(check.unusual for check in offered)
    # held-out digits are flagged about as often as the conformal level says (at most 1/(m+1) each, in expectation)
    flagged = sum(reference.check(image.float() / 255).unusual for image in test_images)
    assert flagged <= 6, f"{flagged} of 360 held-out digits flagged"
    assert not reference.check(_jpeg(test_images[0])).unusual, "a JPEG of a digit, scaled up, is still a digit"
    assert reference.check(1 - test_images[0].float() / 255).unusual, "light background, dark ink: unlike the data"


def test_the_threshold_comes_from_held_back_training_images() -> None:
    images = digits_split("train")[0]
    reference = TrainingStatistics.fit(images)
    held_back = images[int(len(images) * 2 / 3):]
    assert len(reference.held_back) == len(held_back) == 479
    # a held-back image sits at or inside the threshold by construction; its p-value counts itself among them
    check = reference.check(held_back[0].float() / 255)
    assert not check.unusual and check.p_value >= 1 / 480
    statistics = image_statistics(images[:4].float() / 255)
    assert statistics.shape == (4, len(STATISTICS)) and statistics.dtype == torch.float64


def test_scenes_and_clips_have_their_own_reference() -> None:
    from vision_rs.models.embedded.clips import digit_clips
    from vision_rs.models.embedded.scenes import scenes_split

    scenes = training_statistics("segmentation")
    assert scenes.size == (64, 64)
    assert not scenes.check(scenes_split("test")[0][0].float() / 255).unusual
    assert scenes.check(_photo("flower.jpg")).unusual
    clips = training_statistics("video-classification")
    assert not clips.check(digit_clips("test")[0][0].float() / 255).unusual
    assert clips.check(_photo("china.jpg")[None].expand(8, -1, -1, -1)).unusual
