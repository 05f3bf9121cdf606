"""Checkpoints (safetensors / weights-only torch files) and model names resolved from the local caches only."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models import ResNet18_Weights

import vision_rs
from vision_rs import CheckpointError, InvalidParameterError, ModelUnavailableError
from vision_rs.models.checkpoints import load_checkpoint_into, load_state_dict_file
from vision_rs.models.embedded import (
    DIGITS_MEAN,
    DIGITS_STD,
    EMBEDDED_MODELS,
    DigitsCNN,
    digits_split,
    load_embedded_model,
)
from vision_rs.models.hub import create_model

EMBEDDED = "digits_cnn.sigma_0.25"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Point the Hugging Face and torch hub caches at empty folders; stay offline."""
    hf_cache, torch_home = tmp_path / "hf-cache", tmp_path / "torch-home"
    hf_cache.mkdir()
    torch_home.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_cache, torch_home


def digits_state(seed: int = 0, num_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = DigitsCNN(num_classes=num_classes)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def resnet18_state(fill: float, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.bias"].fill_(fill)
    return state


# ------------------------------------------------------------------ loading checkpoints


def test_safetensors_round_trip_with_embedded_arch(tmp_path, empty_caches) -> None:
    saved = digits_state(seed=1)
    path = tmp_path / "digits.safetensors"
    save_file(saved, str(path))
    smoothed = vision_rs.smooth(str(path), sigma=0.25, arch=EMBEDDED, progress=False)
    assert isinstance(smoothed.base.model, DigitsCNN)
    assert_state_equal(smoothed.base.model, saved)
    assert smoothed.spec.mean == pytest.approx(DIGITS_MEAN) and smoothed.spec.input_size == (3, 32, 32)


def test_safetensors_round_trip_with_timm_arch(tmp_path, empty_caches) -> None:
    saved = resnet18_state(fill=0.77, num_classes=10)
    path = tmp_path / "resnet18-digits.safetensors"
    save_file(saved, str(path))
    # pretrained=True is the default, but a checkpoint replaces the pretrained weights: the empty cache is never read
    smoothed = vision_rs.smooth(path, sigma=0.25, arch="resnet18", num_classes=10, device="cpu", progress=False)
    assert smoothed.base.model.fc.out_features == 10
    assert_state_equal(smoothed.base.model, saved)
    assert smoothed.spec.input_size == (3, 224, 224)


def test_checkpoint_path_needs_arch(tmp_path) -> None:
    path = tmp_path / "digits.safetensors"
    save_file(digits_state(), str(path))
    with pytest.raises(InvalidParameterError, match=r"arch=\.\.\.") as caught:
        vision_rs.smooth(str(path), sigma=0.25, progress=False)
    assert "--arch" in caught.value.cli_message


def test_torch_file_with_plain_state_dict_loads_weights_only(tmp_path) -> None:
    saved = digits_state(seed=2)
    path = tmp_path / "digits.pt"
    torch.save(saved, path)
    state = load_state_dict_file(path)
    assert set(state) == set(saved)
    model = DigitsCNN()
    smoothed = vision_rs.smooth(model, sigma=0.25, checkpoint=path, progress=False)  # checkpoint= on a module
    assert smoothed.base.model is model
    assert_state_equal(model, saved)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_wrapped_and_prefixed_state_dicts_load(tmp_path, prefix, wrapper) -> None:
    saved = digits_state(seed=3)
    state = {prefix + key: value for key, value in saved.items()}
    content = state if wrapper is None else {wrapper: state, "epoch": 12, "optimizer": {"lr": 0.1}}
    path = tmp_path / "digits.pth"
    torch.save(content, path)
    assert_state_equal(load_checkpoint_into(DigitsCNN(), path), saved)


# ------------------------------------------------------------------ unsafe and broken files


def _record_execution(flag: str) -> dict:
    """What the malicious pickle would run: leave a trace."""
    Path(flag).write_text("executed")
    return {}


class Payload:
    """An object whose unpickling runs code (as any malicious checkpoint would)."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (_record_execution, (self.flag,))


def test_pickle_needing_code_is_refused_and_nothing_runs(tmp_path) -> None:
    flag = tmp_path / "executed.txt"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload(str(flag))}, path)
    with pytest.raises(CheckpointError, match="arbitrary"):
        load_state_dict_file(path)
    with pytest.raises(CheckpointError, match="arbitrary"):
        vision_rs.smooth(DigitsCNN(), sigma=0.25, checkpoint=path, progress=False)
    assert not flag.exists()
    # the file really does run code when loaded unsafely (so the check above means something)
    torch.load(path, weights_only=False)
    assert flag.read_text() == "executed"


def test_whole_pickled_module_is_refused(tmp_path) -> None:
    path = tmp_path / "whole-model.pth"
    torch.save(DigitsCNN(), path)
    with pytest.raises(CheckpointError, match="arbitrary"):
        vision_rs.smooth(str(path), sigma=0.25, arch=EMBEDDED, progress=False)


def test_missing_checkpoint(tmp_path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(CheckpointError, match="not found"):
        vision_rs.smooth(str(missing), sigma=0.25, arch=EMBEDDED, progress=False)
    with pytest.raises(CheckpointError, match="not found"):
        vision_rs.smooth(DigitsCNN(), sigma=0.25, checkpoint=tmp_path / "nowhere.pt", progress=False)


def test_checkpoint_that_does_not_fit_the_arch(tmp_path) -> None:
    path = tmp_path / "seven-classes.safetensors"
    save_file(digits_state(num_classes=7), str(path))
    with pytest.raises(CheckpointError) as info:
        vision_rs.smooth(str(path), sigma=0.25, arch=EMBEDDED, progress=False)
    assert f"{path} holds another architecture than {EMBEDDED}: 2 tensors of both differ in shape" in str(info.value)
    assert "arch= and num_classes=" in str(info.value) and "--arch and --num-classes" in info.value.cli_message
    assert "head.3.weight" not in str(info.value)  # the keys only in the debug log (--verbose)
    timm_path = tmp_path / "resnet18-10.safetensors"
    save_file(resnet18_state(0.0, num_classes=10), str(timm_path), metadata={"vision_rs": '{"architecture": {"name": "resnet18"}}'})
    with pytest.raises(CheckpointError, match=r"than resnet34 \(its record says it holds resnet18\)") as info:
        vision_rs.smooth(str(timm_path), sigma=0.25, arch="resnet34", progress=False)
    assert "num_classes=" in str(info.value) and "--num-classes" in info.value.cli_message


@pytest.mark.parametrize(
    "name, content",
    [
        ("random.safetensors", os.urandom(4096)),
        ("empty.safetensors", b""),
        ("random.pt", os.urandom(4096)),
        ("text.pt", b"hello, this is not a checkpoint"),
        ("empty.pth", b""),
    ],
)
def test_corrupt_checkpoint_files(tmp_path, name, content) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint_into(DigitsCNN(), path)


def test_truncated_torch_checkpoint(tmp_path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(digits_state(), whole)
    data = whole.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half.pt"):
        load_checkpoint_into(DigitsCNN(), path)


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3}, {"weights": {"a": 1}}, {}])
def test_file_without_a_state_dict(tmp_path, content) -> None:
    path = tmp_path / "not-weights.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_state_dict_file(path)


# ------------------------------------------------------------------ pretrained weights from the local caches


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_pretrained_weights_absent_fail_fast_without_network(empty_caches, name) -> None:
    hf_cache, torch_home = empty_caches
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        vision_rs.smooth(name, sigma=0.25, progress=False)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "checkpoint=" in message and "--checkpoint" in info.value.cli_message
    assert str(torch_home / "hub" / "checkpoints") in message
    if not name.startswith("torchvision:"):
        assert str(hf_cache) in message and "timm/resnet18.a1_in1k" in message
    else:
        assert os.path.basename(ResNet18_Weights.DEFAULT.url) in message
    assert not any(hf_cache.iterdir()), "nothing may be downloaded into the cache"


def _fake_hf_snapshot(hf_cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """The layout huggingface_hub writes: models--org--name/refs/main and snapshots/<commit>/model.safetensors."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_timm_pretrained_weights_from_a_warm_hf_cache(empty_caches) -> None:
    from huggingface_hub import try_to_load_from_cache

    hf_cache, _ = empty_caches
    repo_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    assert repo_id == "timm/resnet18.a1_in1k"
    file = _fake_hf_snapshot(hf_cache, repo_id, resnet18_state(fill=0.123))
    assert try_to_load_from_cache(repo_id, "model.safetensors", cache_dir=str(hf_cache)) == str(file)

    model = create_model("resnet18", pretrained=True)
    torch.testing.assert_close(model.fc.bias, torch.full((1000,), 0.123), rtol=0, atol=0)
    smoothed = vision_rs.smooth("resnet18", sigma=0.25, device="cpu", progress=False)
    torch.testing.assert_close(smoothed.base.model.fc.bias, torch.full((1000,), 0.123), rtol=0, atol=0)
    assert smoothed.spec.mean == pytest.approx((0.485, 0.456, 0.406))


def test_timm_pretrained_weights_from_torch_hub_url_cache(empty_caches) -> None:
    _, torch_home = empty_caches
    url = timm.models.get_pretrained_cfg("resnet18").url
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(resnet18_state(fill=-0.25), checkpoints / os.path.basename(url))
    model = create_model("resnet18", pretrained=True)
    torch.testing.assert_close(model.fc.bias, torch.full((1000,), -0.25), rtol=0, atol=0)


def test_corrupt_cached_timm_weights_raise_checkpoint_error(empty_caches) -> None:
    hf_cache, _ = empty_caches
    file = _fake_hf_snapshot(hf_cache, "timm/resnet18.a1_in1k", {"x": torch.zeros(1)})
    file.write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        create_model("resnet18", pretrained=True)


def test_torchvision_pretrained_weights_from_a_warm_torch_hub_cache(empty_caches) -> None:
    _, torch_home = empty_caches
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["fc.bias"].fill_(0.321)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / os.path.basename(ResNet18_Weights.DEFAULT.url))
    model = create_model("torchvision:resnet18", pretrained=True)
    assert isinstance(model, torchvision.models.ResNet)
    torch.testing.assert_close(model.fc.bias, torch.full((1000,), 0.321), rtol=0, atol=0)
    smoothed = vision_rs.smooth("torchvision:resnet18", sigma=0.25, device="cpu", progress=False)
    assert smoothed.spec.mean == pytest.approx(tuple(ResNet18_Weights.DEFAULT.transforms().mean))
    assert smoothed.spec.input_size == (3, 224, 224)


@pytest.mark.parametrize("name", ["no_such_model_xyz", "torchvision:no_such_model_xyz"])
@pytest.mark.parametrize("pretrained", [True, False])
def test_unknown_model_names(empty_caches, name, pretrained) -> None:
    with pytest.raises(InvalidParameterError, match="unknown"):
        vision_rs.smooth(name, sigma=0.25, pretrained=pretrained, progress=False)


# ------------------------------------------------------------------ embedded models


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_embedded_model_ships_weights_that_classify_the_test_split(name) -> None:
    model = load_embedded_model(name)
    assert not model.training
    images, labels = digits_split("test")
    assert images.shape == (360, 3, 32, 32)
    pixels = images.float() / 255.0
    extra = int(EMBEDDED_MODELS[name].get("in_chans", 3)) - 3  # the hierarchical model's indicator channel
    pixels = torch.cat([pixels, torch.zeros(360, extra, 32, 32)], dim=1)  # clean image: no pixel noised
    mean, std = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1), torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        normalised = torch.cat([(pixels[:, :3] - mean) / std, pixels[:, 3:]], dim=1)
        accuracy = (model(normalised).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95
    # the smoothed wrapper applies that same normalisation, to the colour channels only
    p = EMBEDDED_MODELS[name].get("p")
    hierarchical = vision_rs.Hierarchical(p=float(p), indicator=True) if p is not None else None
    sigma = float(EMBEDDED_MODELS[name]["sigma"]) or 0.25  # digits_cnn.clean was trained without noise (σ = 0)
    smoothed = vision_rs.smooth(name, sigma=sigma, hierarchical=hierarchical, device="cpu", progress=False)
    with torch.no_grad():
        wrapped = (smoothed.base.eval()(pixels).argmax(1) == labels).float().mean().item()
    assert wrapped == accuracy


def test_an_atomic_write_that_fails_raises_our_error_and_leaves_the_old_file(tmp_path: Path) -> None:
    from vision_rs.errors import OutputPathError
    from vision_rs.models.checkpoints import write_atomically

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def half_then_full_disk(handle) -> None:
        handle.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputPathError, match="cannot write .*model.safetensors: No space left on device; it is left"):
        write_atomically(target, half_then_full_disk)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with pytest.raises(OutputPathError, match="cannot write"):
        write_atomically(tmp_path / "no such folder" / "x.pt", lambda handle: handle.write(b"x"))
