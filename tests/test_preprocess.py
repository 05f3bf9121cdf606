"""The model's evaluation resize and crop (issue 10): parity with timm and torchvision, overrides,
feature extractors, input channels.

Parity: for a real photo (scikit-learn's china.jpg, 427×640), the base classifier's tensor
preprocessing of the clean image equals the library's own eval transform on the PIL image within the
interpolation tolerance measured here: PIL resizes uint8 images and rounds (and clips a bicubic
overshoot to 0..255) after the resize, the tensor path does not. Measured on 30 timm and 10
torchvision configurations: mean |difference| 0.0011 (about a third of a grey level: the rounding),
largest single difference 0.005 for bilinear and 0.05 for bicubic (the clipped overshoot at sharp
edges). The bounds below are those, with a small margin. Only the transforms run, not the models.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import create_transform, resolve_data_config
from torch import nn

import vision_rs
from vision_rs import InputSpec, InvalidImageError, InvalidParameterError, ModelOutputError
from vision_rs.models.adapters import spec_from_torchvision_weights
from vision_rs.sampling.preprocess import EvalTransform

MEAN_TOLERANCE = 0.002
MAX_TOLERANCE = {"bilinear": 0.006, "bicubic": 0.06}

TIMM_MODELS = [  # 25 families: every crop_pct from 0.875 to 1.0, center and squash modes, sizes 192 to 384
    "resnet50d", "resnet18", "dm_nfnet_f0", "vit_small_patch16_384", "vit_base_patch16_224", "convnext_tiny",
    "efficientnet_b0", "tf_efficientnet_b3", "mobilenetv3_large_100", "regnety_016", "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "beit_base_patch16_224", "eva02_tiny_patch14_224", "inception_v3", "fastvit_t8",
    "levit_128", "mixer_b16_224", "densenet121", "xception65", "edgenext_small", "poolformer_s12", "cait_xxs24_224",
    "mobilevit_s", "dla34", "maxvit_tiny_tf_384", "efficientnet_b5",
]
TORCHVISION_MODELS = [
    "resnet50", "efficientnet_b0", "vit_b_16", "swin_t", "maxvit_t", "convnext_tiny", "regnet_y_400mf",
    "mobilenet_v3_large", "inception_v3", "efficientnet_v2_s",
]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(load_sample_image("china.jpg"))  # uint8 [427, 640, 3], a writable copy


def unit_batch(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255.0


def unnormalise(normalised: torch.Tensor, mean, std) -> torch.Tensor:
    return normalised * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


def assert_matches(ours: torch.Tensor, reference: torch.Tensor, interpolation: str) -> None:
    assert ours.shape == reference.shape
    difference = (ours - reference).abs()
    assert float(difference.mean()) <= MEAN_TOLERANCE
    assert float(difference.max()) <= MAX_TOLERANCE[interpolation]


def spec_of_timm_config(config: dict) -> InputSpec:
    return InputSpec(mean=tuple(config["mean"]), std=tuple(config["std"]), input_size=tuple(config["input_size"]),
                     crop_pct=config["crop_pct"], crop_mode=config["crop_mode"], interpolation=config["interpolation"])


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_eval_transform_parity(name: str, photo: np.ndarray) -> None:
    config = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    reference = unnormalise(create_transform(**config)(Image.fromarray(photo)), config["mean"], config["std"])
    ours = spec_of_timm_config(config).transform(unit_batch(photo))[0]
    assert_matches(ours, reference, config["interpolation"])


@pytest.mark.parametrize(
    "config",
    [
        {"input_size": (3, 224, 288), "crop_pct": 0.9, "crop_mode": "center"},  # non-square: timm's ResizeKeepRatio
        {"input_size": (3, 200, 160), "crop_pct": 0.95, "crop_mode": "squash"},
        {"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "border"},  # fit the longest side, pad with the mean
        {"input_size": (3, 256, 192), "crop_pct": 0.9, "crop_mode": "border"},
    ],
    ids=["center-nonsquare", "squash-nonsquare", "border", "border-nonsquare"],
)
def test_timm_crop_modes_parity(config: dict, photo: np.ndarray) -> None:
    full = {"interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), **config}
    reference = unnormalise(create_transform(**full)(Image.fromarray(photo)), full["mean"], full["std"])
    ours = spec_of_timm_config(full).transform(unit_batch(photo))[0]
    if config["crop_mode"] == "border":  # timm pads with round(255·mean)/255, we with the mean itself
        reference = reference.clone()
        ours = ours.clone()
    assert_matches(ours, reference, "bilinear")


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_weights_transform_parity(name: str, photo: np.ndarray) -> None:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    preset = weights.transforms()
    reference = unnormalise(preset(Image.fromarray(photo)), preset.mean, preset.std)
    spec = spec_from_torchvision_weights(weights)
    assert spec.interpolation == preset.interpolation.value
    assert_matches(spec.transform(unit_batch(photo))[0], reference, spec.interpolation)


# ------------------------------------------------------------------ the transform itself


def test_a_batch_already_at_the_input_size_is_not_resampled() -> None:
    batch = torch.rand(2, 3, 32, 32)
    assert EvalTransform((32, 32), (32, 32))(batch) is batch
    assert EvalTransform((32, 32), (32, 32)).is_identity(32, 32)
    assert not EvalTransform((32, 32), (36, 36)).is_identity(32, 32)  # crop_pct < 1 crops even at the input size


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_constant_images_stay_constant_and_sizes_are_exact(mode: str, interpolation: str) -> None:
    transform = EvalTransform((32, 24), (36, 27), mode, interpolation, fill=(0.3, 0.3, 0.3))
    for height, width in [(50, 70), (70, 50), (32, 24), (9, 100)]:
        out = transform(torch.full((2, 3, height, width), 0.3))
        assert out.shape == (2, 3, 32, 24)
        torch.testing.assert_close(out, torch.full_like(out, 0.3), atol=1e-5, rtol=0)


def test_resized_size_follows_torchvision_for_a_square_target() -> None:
    from torchvision.transforms.v2.functional import resize

    transform = EvalTransform((224, 224), (256, 256))
    for height, width in [(427, 640), (640, 427), (256, 256), (100, 1000), (333, 334)]:
        expected = resize(torch.zeros(1, height, width), [256]).shape[-2:]
        assert transform.resized_size(height, width) == tuple(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (0, 32), "scale": (32, 32)}, "input size"),
        ({"size": (32, 32), "scale": (32, -1)}, "resize size"),
        ({"size": (32, 32), "scale": (32, 32), "mode": "zoom"}, "crop mode"),
        ({"size": (32, 32), "scale": (32, 32), "interpolation": "lanczos"}, "lanczos"),
    ],
)
def test_impossible_transforms_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        EvalTransform(**kwargs)


@pytest.mark.parametrize("crop_pct", [0.0, -0.5, float("nan")])
def test_impossible_crop_pct_is_refused(crop_pct: float) -> None:
    with pytest.raises(InvalidParameterError, match="crop_pct"):
        vision_rs.smooth(timm.create_model("test_resnet", pretrained=False), sigma=0.25, crop_pct=crop_pct, progress=False)


# ------------------------------------------------------------------ smooth() reads and overrides the config


def test_smooth_reads_crop_pct_interpolation_and_crop_mode_from_timm() -> None:
    model = timm.create_model("dm_nfnet_f0", pretrained=False)
    smoothed = vision_rs.smooth(model, sigma=0.25, progress=False)
    config = resolve_data_config(model=model)
    assert (smoothed.spec.crop_pct, smoothed.spec.crop_mode, smoothed.spec.interpolation) == (
        config["crop_pct"], config["crop_mode"], config["interpolation"])
    assert smoothed.spec.transform == EvalTransform((192, 192), (213, 213), "squash", "bicubic", fill=smoothed.spec.mean)


def test_overrides_and_the_test_input_size() -> None:
    model = timm.create_model("resnet50d", pretrained=False)
    smoothed = vision_rs.smooth(model, sigma=0.25, crop_pct=1.0, interpolation="bilinear", input_size=(160, 160), progress=False)
    assert smoothed.spec.transform == EvalTransform((160, 160), (160, 160), "center", "bilinear", fill=smoothed.spec.mean)
    tested = vision_rs.smooth(model, sigma=0.25, use_test_size=True, progress=False)
    cfg = timm.models.get_pretrained_cfg("resnet50d")
    assert tested.spec.input_size == cfg.test_input_size == (3, 288, 288)
    assert tested.spec.crop_pct == cfg.test_crop_pct


def test_torchvision_name_keeps_the_exact_resize_size() -> None:
    """255 / 240: a resize size that crop / crop_pct would not give back exactly."""
    smoothed = vision_rs.smooth("torchvision:efficientnet_b1", sigma=0.25, pretrained=False, progress=False)
    preset = torchvision.models.EfficientNet_B1_Weights.DEFAULT.transforms()
    assert smoothed.spec.transform.scale == (preset.resize_size[0],) * 2
    assert smoothed.spec.transform.size == (preset.crop_size[0],) * 2
    assert smoothed.spec.interpolation == preset.interpolation.value


# ------------------------------------------------------------------ feature extractors are refused


def test_timm_feature_extractor_is_refused() -> None:
    with pytest.raises(ModelOutputError, match="no classification head"):
        vision_rs.smooth(timm.create_model("resnet18", pretrained=False, num_classes=0), sigma=0.25, progress=False)


def test_eva02_tiny_default_tag_has_no_head_and_is_refused() -> None:
    with pytest.raises(ModelOutputError, match="features"):
        vision_rs.smooth("eva02_tiny_patch14_224", sigma=0.25, pretrained=False, progress=False)


@pytest.mark.parametrize("head", ["fc", "classifier"])
def test_torchvision_identity_head_is_refused(head: str) -> None:
    model = torchvision.models.resnet18() if head == "fc" else torchvision.models.mobilenet_v3_small()
    if head == "fc":
        model.fc = nn.Identity()
    else:
        model.classifier[-1] = nn.Identity()
    with pytest.raises(ModelOutputError, match="Identity"):
        vision_rs.smooth(model, sigma=0.25, mean=(0.5,) * 3, std=(0.5,) * 3, progress=False)


# ------------------------------------------------------------------ models with other than 3 input channels


def test_one_channel_timm_model_takes_grey_images_with_averaged_mean_and_std() -> None:
    model = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=4)
    smoothed = vision_rs.smooth(model, sigma=0.25, progress=False)
    config = resolve_data_config(model=model)
    assert smoothed.spec.channels == 1
    assert smoothed.spec.mean == pytest.approx((sum(config["mean"]) / 3,))
    assert smoothed.spec.std == pytest.approx((sum(config["std"]) / 3,))
    grey = np.random.default_rng(0).integers(0, 256, size=(40, 40), dtype=np.uint8)
    cert = smoothed.certify(grey, n0=4, n=8, alpha=0.1, seed=0, progress=False)
    assert sum(cert.counts.values()) == 8
    with pytest.raises(InvalidImageError, match="3 channels but the model reads 1"):
        smoothed.certify(np.stack([grey] * 3, axis=2), n0=4, n=8, alpha=0.1, seed=0, progress=False)


def test_first_convolution_of_a_torchvision_model_gives_its_channels() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    smoothed = vision_rs.smooth(model, sigma=0.25, weights=torchvision.models.ResNet18_Weights.DEFAULT, progress=False)
    assert smoothed.spec.channels == 1 and len(smoothed.spec.std) == 1
