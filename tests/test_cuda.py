"""The CUDA paths of the engine: streams, device-side counting, autocast and channels_last.

Skipped on machines without a CUDA device (CI has none). On one, run them with
``pytest tests/test_cuda.py``. They check that the speed knobs change nothing
that is certified: the same seed gives the same counts with one stream or several,
and that crops, resizes and certificates on the GPU match the CPU's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vision_rs
from tests.conftest import LinearTwoClass, Recorder
from vision_rs import Patches
from vision_rs.models.embedded import digits_split
from vision_rs.sampling.engine import EngineConfig, ViewVoteTally, VoteTally, sample
from vision_rs.sampling.noise import GaussianNoise, HierarchicalNoise
from vision_rs.sampling.preprocess import EvalTransform
from vision_rs.sampling.views import WholeImage

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def linear_model(pixels: int, seed: int) -> LinearTwoClass:
    """A linear two-class model in float64 on the GPU: its votes do not depend on kernel choice or stream timing."""
    weight = torch.randn(pixels, generator=torch.Generator().manual_seed(seed))
    return LinearTwoClass(weight / weight.norm(), bias=0.0).to(CUDA)


def counts_with(streams: int, view, tally, noise, model, image: torch.Tensor, num: int, batch: int) -> np.ndarray:
    config = EngineConfig(batch_size=batch, progress=False, streams=streams)
    generator = torch.Generator(device=CUDA).manual_seed(0)
    return sample(model, image.to(CUDA), noise, view, tally, num, generator, config)


@pytest.mark.parametrize("streams", [2, 3])
@pytest.mark.parametrize("num", [5000, 777])
def test_several_streams_count_exactly_what_one_stream_counts(streams: int, num: int) -> None:
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    view = Patches(size=24, stride=8).view_for((32, 32), None, torch.Generator())
    model = linear_model(3 * 24 * 24, seed=2)
    for make_tally in (lambda: VoteTally("mean"), ViewVoteTally):
        one = counts_with(1, view, make_tally(), GaussianNoise(0.5), model, image, num, batch=200)
        many = counts_with(streams, view, make_tally(), GaussianNoise(0.5), model, image, num, batch=200)
        assert one.sum() == num * (view.count if one.ndim == 2 else 1)
        assert np.array_equal(one, many)


def test_several_streams_feed_the_model_the_same_noisy_images() -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    seen = {}
    for streams in (1, 2):
        model = Recorder()
        counts_with(streams, WholeImage(), VoteTally(), GaussianNoise(0.3), model, image, 1000, batch=128)
        seen[streams] = torch.cat(model.inputs).cpu()
    assert torch.equal(seen[1], seen[2])
    noise = seen[1] - image
    assert float(noise.std()) == pytest.approx(0.3, rel=0.02)


def test_hierarchical_noise_on_streams_matches_one_stream() -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    model = linear_model(4 * 16 * 16, seed=4)
    noise = HierarchicalNoise(0.25, 0.8, indicator=True)
    one = counts_with(1, WholeImage(), VoteTally(), noise, model, image, 3000, batch=256)
    two = counts_with(2, WholeImage(), VoteTally(), noise, model, image, 3000, batch=256)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("streams", [1, 2])
def test_certify_on_the_gpu_agrees_with_the_cpu_on_the_embedded_model(streams: int) -> None:
    """Different random streams on each device, so labels and radii agree, not counts."""
    images, labels = digits_split("test")
    cpu = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)
    gpu = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cuda", channels_last=True,
                           autocast_dtype=torch.bfloat16, streams=streams, progress=False)
    for index in range(5):
        on_cpu = cpu.certify(images[index], n0=100, n=2000, alpha=0.001, seed=0)
        on_gpu = gpu.certify(images[index], n0=100, n=2000, alpha=0.001, seed=0)
        assert on_gpu.label == on_cpu.label == int(labels[index])
        assert on_gpu.radius == pytest.approx(on_cpu.radius, abs=0.1)


@pytest.mark.parametrize("out_size", [(32, 32), (12, 12)], ids=["upsample", "downsample"])
def test_patch_crops_and_resize_on_the_gpu_match_the_cpu(out_size) -> None:
    noisy = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for patches in (Patches(size=24, stride=8), Patches(size=20, count=5)):
        view = patches.view_for((32, 32), EvalTransform(out_size, out_size), torch.Generator().manual_seed(1))
        assert torch.allclose(view(noisy.to(CUDA)).cpu(), view(noisy), atol=1e-5)


def test_patch_certify_on_the_gpu_runs_with_resize_and_streams() -> None:
    image = digits_split("test")[0][0]
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cuda", channels_last=True,
                                patches=Patches(size=24, stride=8), reduce="mean", mode="vote", progress=False)
    cert = smoothed.certify(image, n0=100, n=1000, alpha=0.001, seed=0)
    assert cert.views == 4 and sum(cert.counts.values()) == 1000


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_training_on_the_gpu_with_amp_writes_a_checkpoint_that_certifies(tmp_path, amp) -> None:
    """Training on CUDA (noise drawn on the GPU, AMP with the fp16 gradient scaler) ends with finite weights whose
    checkpoint certifies with nothing else; the loss falls from the first epoch to the second."""
    from torch.utils.data import Subset

    from vision_rs.models.embedded import DigitsCNN, DigitsDataset
    from vision_rs.training import TrainConfig, train

    torch.manual_seed(0)
    smoothed = vision_rs.smooth(DigitsCNN(), sigma=0.25, device="cuda", progress=False)
    data = Subset(DigitsDataset("train"), range(512))
    result = train(smoothed, data, tmp_path, config=TrainConfig(epochs=2, batch_size=64, lr=2e-3, amp=amp,
                                                                progress=False))
    assert result.history[1]["loss"] < result.history[0]["loss"]
    certified = vision_rs.smooth(str(result.checkpoint), sigma=0.25, device="cuda", progress=False)
    cert = certified.certify(digits_split("test")[0][0], n0=50, n=500, seed=0)
    assert cert.n == 500 and certified.device.type == "cuda"


class _CountedOutsideTheCheck(VoteTally):
    """Its one host sync (``result``) runs with the sync check off: only the batches are checked."""

    def result(self) -> np.ndarray:
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return super().result()
        finally:
            torch.cuda.set_sync_debug_mode(mode)


@pytest.mark.parametrize("streams", [1, 2])
def test_no_batch_waits_for_the_gpu(streams: int) -> None:
    """The host queues batch after batch without waiting for the device (torch raises on any sync in between)."""
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5)).to(CUDA)  # copied before the check
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10)).to(CUDA).eval()
    counts_with(streams, WholeImage(), VoteTally(), GaussianNoise(0.25), model, image, 256, batch=64)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        counts = counts_with(streams, WholeImage(), _CountedOutsideTheCheck(), GaussianNoise(0.25), model, image, 2000,
                             batch=64)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert counts.sum() == 2000


def graph_counts(cuda_graphs: bool, view, tally, noise, model, image: torch.Tensor, num: int, batch: int,
                 generator: torch.Generator | None = None) -> np.ndarray:
    config = EngineConfig(batch_size=batch, progress=False, cuda_graphs=cuda_graphs)
    generator = generator or torch.Generator(device=CUDA).manual_seed(0)
    return sample(model, image.to(CUDA), noise, view, tally, num, generator, config)


@pytest.mark.parametrize("num", [4000, 4000 + 37])
def test_cuda_graph_replays_count_exactly_what_eager_batches_count(num: int) -> None:
    """Same seed, same noise: torch advances the registered twin generator by each replay (a replay that reused its
    noise would change the counts); a second phase on the same generator continues where the replays stopped."""
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(6))
    patches = Patches(size=12, stride=4).view_for((16, 16), None, torch.Generator())
    cases = [(WholeImage(), VoteTally, GaussianNoise(0.5), linear_model(3 * 16 * 16, seed=7)),
             (WholeImage(), VoteTally, HierarchicalNoise(0.25, 0.8, indicator=True), linear_model(4 * 16 * 16, seed=8)),
             (patches, ViewVoteTally, GaussianNoise(0.5), linear_model(3 * 12 * 12, seed=9))]
    for view, make_tally, noise, model in cases:
        runs = []
        for cuda_graphs in (False, True):
            generator = torch.Generator(device=CUDA).manual_seed(0)
            first = graph_counts(cuda_graphs, view, make_tally(), noise, model, image, num, 100, generator)
            second = graph_counts(False, view, make_tally(), noise, model, image, 1000, 100, generator)
            runs.append((first, second))
        assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


def test_a_model_that_cannot_be_recorded_runs_eagerly_with_the_same_counts(caplog: pytest.LogCaptureFixture) -> None:
    class Syncing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = linear_model(3 * 8 * 8, seed=10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.mean()) > 1e9:  # waits for the device: cannot be recorded
                raise AssertionError
            return self.linear(x)

    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(11))
    eager = graph_counts(False, WholeImage(), VoteTally(), GaussianNoise(0.5), Syncing(), image, 3000, 100)
    with caplog.at_level("WARNING", logger="vision_rs.sampling.graphs"):
        graphed = graph_counts(True, WholeImage(), VoteTally(), GaussianNoise(0.5), Syncing(), image, 3000, 100)
    assert np.array_equal(eager, graphed)
    assert "cannot record a batch as a CUDA graph" in caplog.text
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


def test_certify_with_cuda_graphs_autocast_and_channels_last_matches_without_graphs() -> None:
    image = digits_split("test")[0][0]
    options = {"device": "cuda", "channels_last": True, "autocast_dtype": torch.bfloat16, "progress": False}
    plain = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, **options)
    graphed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, cuda_graphs=True, **options)
    for cert in (plain, graphed):
        cert.certify(image, n0=100, n=5000, seed=0)  # warm-up
    a, b = (s.certify(image, n0=100, n=20_000, seed=0) for s in (plain, graphed))
    assert (a.label, a.counts) == (b.label, b.counts)
