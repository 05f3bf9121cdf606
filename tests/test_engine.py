"""The sampling engine: fixed batch shapes, exact sample counts, noise statistics, seeding, progress."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm
from torch.utils._python_dispatch import TorchDispatchMode

import vision_rs
from tests.conftest import FALSE_FAILURE, Recorder, normal_mean_bound, normal_rms_interval
from vision_rs.errors import ModelOutputError
from vision_rs.sampling.engine import EngineConfig, PixelVoteTally, ViewVoteTally, VoteTally, plan_batches, sample
from vision_rs.sampling.noise import GaussianNoise
from vision_rs.sampling.views import WholeImage


@pytest.mark.parametrize(("num", "batch"), [(1000, 256), (1024, 256), (256, 256), (7, 256), (1, 3), (100, 64), (257, 256)])
def test_every_batch_has_one_shape_and_exactly_num_votes_are_counted(num: int, batch: int) -> None:
    model = Recorder()
    counts = sample(model, torch.full((3, 4, 4), 0.5), GaussianNoise(0.3), WholeImage(), VoteTally(), num,
                    torch.Generator().manual_seed(0), EngineConfig(batch_size=batch, progress=False))
    assert int(counts.sum()) == num
    assert len(set(model.shapes)) == 1
    batches = math.ceil(num / min(batch, num))  # the fewest batches within the limit...
    assert len(model.shapes) == batches
    size = model.shapes[0][0]
    assert size <= batch and size * batches - num < batches  # ...of one size, padded by less than a draw per batch
    assert plan_batches(num, 1, batch) == (size, batches)


def test_plan_batches_splits_evenly_within_the_limit() -> None:
    assert plan_batches(100, 4, 256) == (50, 2)  # at most 64 draws of 4 views: 2 × 50, not 2 × 64
    assert plan_batches(100_000, 1, 256) == (256, 391)
    assert plan_batches(5, 10, 4) == (1, 5)  # more views than the batch size: one draw per forward pass
    assert plan_batches(3, 1, 1000) == (3, 1)


def test_noise_is_gaussian_with_std_sigma_around_the_image() -> None:
    model, image, sigma = Recorder(), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)), 0.25
    sample(model, image, GaussianNoise(sigma), WholeImage(), VoteTally(), 4000, torch.Generator().manual_seed(0),
           EngineConfig(batch_size=1000, progress=False))
    noise = (torch.cat(model.inputs) - image).double()
    # i.i.d. N(0, σ²) values: their mean and root mean square, exact laws, false failure ≤ 1e-4 for both together
    assert abs(float(noise.mean())) <= normal_mean_bound(noise.numel(), sigma, tests=2)
    low, high = normal_rms_interval(noise.numel(), sigma, tests=2)
    assert low <= float(noise.pow(2).mean().sqrt()) <= high
    # fresh noise in every batch: the reused buffer is refilled, not re-added
    assert not torch.equal(model.inputs[0], model.inputs[1])


def test_memory_does_not_grow_with_n() -> None:
    """The engine keeps one buffer of batch_size images whatever n is: the model never sees more."""
    model = Recorder()
    sample(model, torch.rand(3, 4, 4), GaussianNoise(0.1), WholeImage(), VoteTally(), 5000,
           torch.Generator().manual_seed(0), EngineConfig(batch_size=100, progress=False))
    assert max(shape[0] for shape in model.shapes) == 100


def test_same_seed_same_certificate_and_different_seeds_differ(linear_setup) -> None:
    model, image = linear_setup
    sigma, n, seeds = 0.5, 300, (4, 5, 6, 7)
    smoothed = vision_rs.smooth(model, sigma=sigma, progress=False)
    first = smoothed.certify(image, n0=20, n=n, alpha=0.01, seed=3)
    again = smoothed.certify(image, n0=20, n=n, alpha=0.01, seed=3)
    others = [smoothed.certify(image, n0=20, n=n, alpha=0.01, seed=seed).counts for seed in seeds]
    assert (first.label, first.radius, first.p_lower, first.counts) == (again.label, again.radius, again.p_lower, again.counts)
    assert first.seed == 3
    # each seed's class-1 count is Binomial(n, p) with p = Φ(d/σ) ≈ 0.67: all of them equal the first with
    # probability Σ_k P(k)^5, which must be ≤ 1e-4 (any one of them may equal it: ≈ 3.5 % each)
    p_one = float(norm.cdf(model.distance(image) / sigma))
    assert float(np.sum(binom.pmf(np.arange(n + 1), n, p_one) ** (len(seeds) + 1))) <= FALSE_FAILURE
    assert any(counts != first.counts for counts in others)


def test_unseeded_runs_record_the_seed_that_reproduces_them() -> None:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)
    image = vision_rs.embedded.digits_split("test")[0][0]
    unseeded = smoothed.certify(image, n0=10, n=100, alpha=0.01)
    replay = smoothed.certify(image, n0=10, n=100, alpha=0.01, seed=unseeded.seed)
    assert replay.counts == unseeded.counts


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu")
    image = vision_rs.embedded.digits_split("test")[0][0]
    smoothed.certify(image, n0=10, n=100, seed=0, progress=False)
    assert capsys.readouterr().err == ""
    smoothed.certify(image, n0=10, n=100, seed=0, progress=True)
    assert "estimate" in capsys.readouterr().err


def test_a_progress_report_gets_each_phase_from_zero_to_its_draws() -> None:
    reports: list[tuple[str, int, int]] = []
    counts = sample(Recorder(), torch.full((3, 4, 4), 0.5), GaussianNoise(0.3), WholeImage(), VoteTally(), 250,
                    torch.Generator().manual_seed(0), EngineConfig(batch_size=100, progress=lambda *r: reports.append(r)))
    assert int(counts.sum()) == 250
    assert reports == [("sampling", 0, 250), ("sampling", 84, 250), ("sampling", 168, 250), ("sampling", 250, 250)]


def test_channels_last_and_bfloat16_autocast_paths_run() -> None:
    plain = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)
    fast = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", channels_last=True,
                            autocast_dtype=torch.bfloat16, progress=False)
    image = vision_rs.embedded.digits_split("test")[0][1]
    label = int(vision_rs.embedded.digits_split("test")[1][1])
    assert plain.certify(image, n0=20, n=200, seed=0).label == label
    assert fast.certify(image, n0=20, n=200, seed=0).label == label


def test_vote_tally_counts_argmax_per_class() -> None:
    tally = VoteTally()
    logits = torch.tensor([[[0.1, 2.0, 0.0]], [[3.0, 0.0, 0.0]], [[0.0, 0.5, 0.1]]])
    tally.update(logits)
    tally.update(logits[:1])
    assert np.array_equal(tally.result(), np.array([1, 3, 0]))


def test_channels_last_feeds_the_model_the_same_noisy_images() -> None:
    """A speed knob must not change what is certified: same seed, same noise on the same pixels."""
    seen = {}
    for channels_last in (False, True):
        model = Recorder()
        sample(model, torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2)), GaussianNoise(0.3), WholeImage(),
               VoteTally(), 300, torch.Generator().manual_seed(0),
               EngineConfig(batch_size=100, channels_last=channels_last, progress=False))
        seen[channels_last] = torch.cat(model.inputs)
    assert seen[True].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(seen[False], seen[True])


def test_non_finite_outputs_are_caught_and_large_finite_ones_are_not() -> None:
    """The tally's one float64 sum per batch must flag any NaN or ±Inf (also +Inf beside −Inf) and never the
    largest finite float32 logits, however many."""
    biggest = torch.finfo(torch.float32).max
    for bad in (float("nan"), float("inf"), -float("inf")):
        tally = VoteTally()
        tally.update(torch.zeros(4, 1, 3))
        logits = torch.zeros(4, 1, 3)
        logits[2, 0, 1] = bad
        tally.update(logits)
        with pytest.raises(ModelOutputError, match="NaN or Inf logits"):
            tally.result()
    cancelling = torch.zeros(2, 1, 3)
    cancelling[0, 0, 0], cancelling[1, 0, 2] = float("inf"), -float("inf")
    for tally, outputs in ((VoteTally(), cancelling), (ViewVoteTally(), cancelling.expand(2, 4, 3)),
                           (PixelVoteTally((1, 1)), cancelling[:, :, :, None, None])):
        tally.update(outputs)
        with pytest.raises(ModelOutputError, match="NaN or Inf logits"):
            tally.result()
    tally = VoteTally()
    for _ in range(3):
        tally.update(torch.full((1000, 1, 3), biggest))
    assert np.array_equal(tally.result(), [3000, 0, 0])


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero")
"""Tensor methods that make the host wait for the device (on CUDA)."""
VIEW_OPS = {"aten.view.default", "aten.reshape.default", "aten.slice.Tensor", "aten.select.int", "aten.split.Tensor",
            "aten.flatten.using_ints", "aten.unflatten.int", "aten._unsafe_view.default", "aten.detach.default",
            "aten.to.dtype", "aten.alias.default", "aten.expand.default", "aten.unsqueeze.default", "aten.t.default"}
"""Ops that only re-describe a tensor (no device work)."""


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops that compute (everything but views) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if str(func) not in VIEW_OPS:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


class _Linear(torch.nn.Module):
    """Three classes from the mean of each channel: one op per batch besides the linear layer's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _work_per_batch(monkeypatch: pytest.MonkeyPatch, tally_type: type) -> tuple[float, float]:
    """(host syncs, computing ops besides the model's) per extra batch: a 1-batch and an 11-batch run compared."""
    syncs = collections.Counter[str]()
    for name in SYNCING:
        method = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _name: str = name, _method=method, **kwargs: object) -> object:
            syncs[_name] += 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model, image = _Linear().eval(), torch.rand(3, 8, 8)
    with _OpCounter() as counter, torch.inference_mode():
        model(torch.rand(10, 3, 8, 8))
    model_ops = sum(counter.ops.values())
    seen = []
    for batches in (1, 11):
        syncs.clear()
        with _OpCounter() as counter:
            sample(model, image, GaussianNoise(0.3), WholeImage(), tally_type(), 10 * batches,
                   torch.Generator().manual_seed(0), EngineConfig(batch_size=10, progress=False))
        seen.append((sum(syncs.values()), sum(counter.ops.values()) - batches * model_ops))
    (syncs_one, ops_one), (syncs_eleven, ops_eleven) = seen
    return (syncs_eleven - syncs_one) / 10, (ops_eleven - ops_one) / 10


def test_a_batch_costs_no_host_sync_and_six_ops_around_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fast GPU the engine is bound by the host's work per batch: no sync (the host runs ahead of the device)
    and six kernels around the model (noise: normal_, add_; tally: argmax, index_add_, sum, add_)."""
    syncs, ops = _work_per_batch(monkeypatch, VoteTally)
    assert syncs == 0
    assert ops <= 6


@pytest.mark.parametrize(("tally", "outputs", "most"), [
    (VoteTally(), torch.randn(8, 1, 10), 4),
    (ViewVoteTally(), torch.randn(8, 4, 10), 5),
    (PixelVoteTally((6, 6), (slice(0, 2), slice(2, 4))), torch.randn(8, 1, 3, 6, 6), 5),
], ids=["votes", "votes per view", "votes per pixel"])
def test_each_tally_counts_a_batch_in_a_few_ops(tally, outputs: torch.Tensor, most: int) -> None:
    """argmax, the cell of each vote where there are several counters, index_add_, the float64 sum and its total;
    what does not change between batches (counters, ones, cell offsets) is made at the first."""
    tally.update(outputs)
    with _OpCounter() as counter:
        tally.update(outputs)
    assert sum(counter.ops.values()) <= most, counter.ops


class _SyncingTally(VoteTally):
    """Checks its logits on the host every batch: the mistake the test above must catch."""

    def update(self, logits: torch.Tensor) -> None:
        if not bool(torch.isfinite(logits).all()):
            raise ModelOutputError("non-finite")
        super().update(logits)


def test_the_work_per_batch_check_sees_a_sync_and_extra_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    syncs, ops = _work_per_batch(monkeypatch, _SyncingTally)
    assert syncs >= 1
    assert ops > 6
