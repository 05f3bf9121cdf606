"""The embedded segmentation default: digit scenes, the segmentation network and its training script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vision_rs.models.adapters import read_input_spec
from vision_rs.models.checkpoints import load_checkpoint_into, read_checkpoint_record
from vision_rs.models.embedded.digits import digits_split
from vision_rs.models.embedded.scenes import (
    BACKGROUND,
    DIGIT_SIZES,
    INK_THRESHOLD,
    SCENE_SIZE,
    DigitScenes,
    digit_ink,
    scaled_ink,
    scene_placements,
    scenes_split,
)
from vision_rs.models.embedded.segnet import (
    EMBEDDED_SEG_MODELS,
    SCENES_MEAN,
    SCENES_STD,
    DigitsSegNet,
    load_embedded_segmentation_model,
    segmentation_weights_path,
)

SCRIPT = Path(__file__).resolve().parents[1] / "demos" / "train_segmentation.py"


@pytest.fixture(scope="module")
def train_segmentation():
    spec = importlib.util.spec_from_file_location("train_segmentation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("split, count", [("train", 2000), ("test", 100)])
def test_scene_shapes_and_classes(split: str, count: int) -> None:
    images, label_maps = scenes_split(split)
    assert images.shape == (count, 3, SCENE_SIZE, SCENE_SIZE) and images.dtype == torch.uint8
    assert label_maps.shape == (count, SCENE_SIZE, SCENE_SIZE) and label_maps.dtype == torch.int64
    assert 0 <= int(label_maps.min()) and int(label_maps.max()) == BACKGROUND
    assert set(torch.unique(label_maps).tolist()) == set(range(11))
    image, label_map = DigitScenes(split)[count - 1]
    assert torch.equal(image, images[-1]) and torch.equal(label_map, label_maps[-1]) and len(DigitScenes(split)) == count


@pytest.mark.parametrize("split", ["train", "test"])
def test_label_maps_agree_with_the_digits_placed(split: str) -> None:
    """Every scene holds 2–4 digits of ITS split in disjoint squares; labels are the class where the scaled ink
    of that digit exceeds the threshold and background everywhere else; outside the squares the scene is plain."""
    images, label_maps = scenes_split(split)
    digits, classes = digits_split(split)
    ink = digit_ink(digits)
    for index in range(0, len(images), 7 if split == "train" else 1):
        placements = scene_placements(split)[index]
        assert 2 <= len(placements) <= 4
        expected = torch.full((SCENE_SIZE, SCENE_SIZE), BACKGROUND)
        outside = torch.ones((SCENE_SIZE, SCENE_SIZE), dtype=torch.bool)
        for p in placements:
            assert DIGIT_SIZES[0] <= p.size <= DIGIT_SIZES[1] and p.label == int(classes[p.digit])
            assert 0 <= p.top <= SCENE_SIZE - p.size and 0 <= p.left <= SCENE_SIZE - p.size
            square = (slice(p.top, p.top + p.size), slice(p.left, p.left + p.size))
            assert outside[square].all(), "squares overlap"
            outside[square] = False
            expected[square][scaled_ink(ink[p.digit], p.size) > INK_THRESHOLD] = p.label
        assert torch.equal(label_maps[index], expected)
        plain = images[index][:, outside]
        assert (plain == plain[:, :1]).all(), "the background outside the digits is one colour"


def test_ink_spans_zero_to_one_with_blank_corners() -> None:
    ink = digit_ink(digits_split("test")[0])
    assert float(ink.min()) == 0.0 and float(ink.amax(dim=(1, 2)).min()) == 1.0  # each digit: background and full ink
    assert float(ink[:, :2, :2].amax()) < 0.1  # the scans' corners are blank


def test_normalisation_constants_are_the_train_scene_statistics() -> None:
    pixels = scenes_split("train")[0].double() / 255.0
    assert pixels.mean(dim=(0, 2, 3)).tolist() == pytest.approx(SCENES_MEAN, abs=5e-4)
    assert pixels.std(dim=(0, 2, 3)).tolist() == pytest.approx(SCENES_STD, abs=5e-4)


def test_segnet_is_small_fully_convolutional_and_timm_described() -> None:
    model = DigitsSegNet().eval()
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 11, 64, 64)
        assert model(torch.zeros(1, 3, 32, 48)).shape == (1, 11, 32, 48)
    spec = read_input_spec(model)
    assert spec.mean == pytest.approx(SCENES_MEAN) and spec.std == pytest.approx(SCENES_STD)
    assert spec.input_size == (3, 64, 64) and model.pretrained_cfg["num_classes"] == 11


@pytest.mark.parametrize("noise, loss", [({"sigma": 0.25}, "mask"),
                                         ({"localized": {"grid": [3, 3], "sigma_min": 0.25, "sigma_max": 1.0}}, "cell")])
def test_same_seed_same_weights(train_segmentation, noise: dict, loss: str) -> None:
    torch.set_num_threads(1)
    first, record = train_segmentation.train_model(noise, epochs=1, seed=3, loss_region=loss, train_scenes=16, batch_size=8)
    again, _ = train_segmentation.train_model(noise, epochs=1, seed=3, loss_region=loss, train_scenes=16, batch_size=8)
    other, _ = train_segmentation.train_model(noise, epochs=1, seed=4, loss_region=loss, train_scenes=16, batch_size=8)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert record["task"] == "segmentation" and record["architecture"]["name"] == "digits_segnet"
    assert record["noise"]["method"] == ("localized" if "localized" in noise else "isotropic")


def test_script_writes_a_checkpoint_with_its_record(train_segmentation, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    train_segmentation.main(["--model", "localized", "--loss", "cell", "--epochs", "1", "--train-scenes", "8",
                             "--test-scenes", "2", "--out", str(tmp_path)])
    assert "noisy_miou" in capsys.readouterr().out
    written = tmp_path / "digits_segnet_localized_grid_3x3_sigma_0.25_1.00" / "model.safetensors"
    record = read_checkpoint_record(written)
    assert record["noise"] == {"method": "localized", "sigma": 0.25,
                               "details": {"grid": [3, 3], "sigma_min": 0.25, "sigma_max": 1.0}}
    assert record["loss"]["region"] == "cell"
    load_checkpoint_into(DigitsSegNet(), written)


@pytest.mark.parametrize("name", sorted(EMBEDDED_SEG_MODELS))
def test_shipped_weights_load_and_match_the_registry(name: str) -> None:
    with safe_open(str(segmentation_weights_path(name)), "pt") as handle:
        noise = json.loads(handle.metadata()["noise"])
    settings = EMBEDDED_SEG_MODELS[name]
    if "sigma" in settings:
        assert noise == {"sigma": settings["sigma"]}
    else:
        localized = dict(settings["localized"], grid=list(settings["localized"]["grid"]))
        assert noise == {"localized": localized}
    model = load_embedded_segmentation_model(name)
    image, label_map = scenes_split("test")[0][:1].float() / 255.0, scenes_split("test")[1][0]
    spec = read_input_spec(model)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        predicted = model((image - mean) / std).argmax(1)[0]
    assert float((predicted == label_map).double().mean()) > 0.9  # clean scene: the model does segment it
    assert np.isin(torch.unique(predicted).numpy(), np.arange(11)).all()
