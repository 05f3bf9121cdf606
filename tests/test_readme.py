"""The README's Python blocks run as printed: in order, in one namespace, in a fresh working folder.

Two honest departures, both visible here:

* **Sample sizes.** Every ``n=`` and ``n0=`` is capped (:data:`CAPS`), so that the whole README runs in seconds on a
  CPU; every other character runs as printed.
* **What no offline machine has.** A statement whose line says ``# needs: <what>`` runs with that one thing stubbed
  (:data:`STUBS`), and only that statement: "pretrained weights" become random weights (timm's ``pretrained=True``,
  torchvision's ``weights=``, vision-rs's lookup of a hub model's cached weights); "a DDPM pipeline folder" is a tiny
  random diffusers UNet and scheduler saved where the block reads them. A marker without a stub fails the test.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CAPS = {"n0": 1, "n": 3}
"""The most draws a README call makes here (the README prints realistic sizes)."""
NEEDS = re.compile(r"#\s*needs:\s*(.+?)\s*$")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def capped(source: str) -> str:
    """``source`` with every ``n=`` / ``n0=`` above its cap lowered to the cap."""
    def lower(match: re.Match[str]) -> str:
        key, value = match.group(1), int(match.group(2).replace("_", ""))
        return f"{key}={min(value, CAPS[key])}"

    return re.sub(r"\b(n0|n)=(\d[\d_]*)\b", lower, source)


@contextlib.contextmanager
def random_weights(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretrained weights of hub models, which no offline machine has: random weights of the same architecture."""
    import timm
    from torch import nn
    from torchvision.models._api import WeightsEnum

    import vision_rs.smoothing
    from vision_rs.models.embedded import embedded_model_info

    create_timm = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: create_timm(name, pretrained=False, **kw))

    class NotDownloaded(dict):
        """What torchvision's weights= would download: nothing, so the model keeps its random initialisation."""

    load = nn.Module.load_state_dict
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *args, **kwargs: NotDownloaded())
    monkeypatch.setattr(nn.Module, "load_state_dict",
                        lambda self, state, *args, **kw: None if isinstance(state, NotDownloaded) else load(self, state, *args, **kw))
    create_named = vision_rs.smoothing.create_model_with_source
    monkeypatch.setattr(vision_rs.smoothing, "create_model_with_source", lambda name, *, pretrained, **kw: create_named(
        name, pretrained=pretrained and embedded_model_info(name) is not None, **kw))
    yield


@contextlib.contextmanager
def ddpm_pipeline_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A DDPM pipeline saved in ./ddpm-cifar10-32 (a trained one cannot be downloaded here): a tiny random one."""
    import diffusers
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained("ddpm-cifar10-32/unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained("ddpm-cifar10-32/scheduler")
    yield


STUBS: dict[str, Callable[[pytest.MonkeyPatch], contextlib.AbstractContextManager[None]]] = {
    "pretrained weights": random_weights,
    "a DDPM pipeline folder": ddpm_pipeline_folder,
}


def run_block(source: str, namespace: dict, monkeypatch: pytest.MonkeyPatch, stubbed: list[str]) -> None:
    """Run ``source`` statement by statement; a statement with a ``# needs:`` line runs inside its stub."""
    lines = source.splitlines()
    for statement in ast.parse(source).body:
        needs = [found.group(1) for line in lines[statement.lineno - 1 : statement.end_lineno]
                 if (found := NEEDS.search(line))]
        assert all(need in STUBS for need in needs), f"no stub for {needs}: add one to STUBS or drop the marker"
        code = compile(ast.Module(body=[statement], type_ignores=[]), "README.md", "exec")
        with monkeypatch.context() as patch, contextlib.ExitStack() as stack:  # the stubs end with the statement
            for need in needs:
                stack.enter_context(STUBS[need](patch))
            exec(code, namespace)  # noqa: S102
        stubbed += needs


def test_the_readme_python_blocks_run_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    stubbed: list[str] = []
    for index, block in enumerate(blocks):
        try:
            run_block(capped(block), namespace, monkeypatch, stubbed)
        except Exception as exc:
            raise AssertionError(f"README Python block {index + 1} fails:\n{block}") from exc
    print("stubbed for offline:", ", ".join(stubbed))
    assert set(stubbed) == set(STUBS)  # every stub is used, so none hides a block that would run as printed


def test_the_caps_only_lower_sample_sizes() -> None:
    assert capped("certify(image, n0=100, n=100_000, alpha=0.001, batch_size=256)") == \
        "certify(image, n0=1, n=3, alpha=0.001, batch_size=256)"
    assert capped("predict(image, n=2)") == "predict(image, n=2)" and capped("frames=8, n_used") == "frames=8, n_used"
