"""The engine's CUDA-graph path (``cuda_graphs=True``), its logic on the CPU.

A recorded graph runs nothing when recorded and one full batch per replay, drawing from a twin of the caller's
generator that each replay advances; the twin's state goes back to the caller's generator at the end. Here
``record_batch`` is replaced by the same thing without CUDA (replay = run the step with the twin), so these tests
check what the engine does around it: which batches replay, which run eagerly, and that the noise — hence every
count and certificate — is exactly the eager run's, across phases and with a stopping rule. Power checks: a replay
that does not advance the noise, or a twin never handed back, must change the counts. ``tests/test_cuda.py`` runs
the real recording on a GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import vision_rs
from vision_rs.sampling import engine
from vision_rs.sampling.engine import EngineConfig, VoteTally, sample
from vision_rs.sampling.graphs import MIN_REPLAYS, GraphedBatch, record_batch, twin_of
from vision_rs.sampling.noise import GaussianNoise
from vision_rs.sampling.views import WholeImage


class FakeGraphs:
    """``record_batch`` without CUDA; counts recordings and replays. ``frozen``: every replay redraws the noise of
    the first (an RNG that does not advance); ``keep_twin``: the twin's state is never handed back."""

    def __init__(self, frozen: bool = False, keep_twin: bool = False) -> None:
        self.frozen, self.keep_twin = frozen, keep_twin
        self.recorded = self.replays = 0

    def __call__(self, step, generator: torch.Generator, device: torch.device) -> GraphedBatch:
        self.recorded += 1
        twin = twin_of(generator)
        start = twin.get_state()

        def replay() -> None:
            self.replays += 1
            if self.frozen:
                twin.set_state(start)
            step(twin)

        graphed = GraphedBatch(replay, twin)
        if self.keep_twin:
            object.__setattr__(graphed, "hand_back", lambda generator: None)
        return graphed


def linear_counts(monkeypatch: pytest.MonkeyPatch, graphs: FakeGraphs | None, num: int, batch: int,
                  generator: torch.Generator | None = None) -> np.ndarray:
    if graphs is not None:
        monkeypatch.setattr(engine, "record_batch", graphs)
    weight = torch.randn(48, generator=torch.Generator().manual_seed(2))
    model = lambda x: torch.stack([torch.zeros(x.shape[0]), x.flatten(1) @ weight], dim=1)
    image = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    config = EngineConfig(batch_size=batch, progress=False, cuda_graphs=graphs is not None)
    return sample(model, image, GaussianNoise(0.5), WholeImage(), VoteTally(), num,
                  generator or torch.Generator().manual_seed(0), config)


@pytest.mark.parametrize(("num", "batch"), [(64 * 20, 64), (64 * 20 + 17, 64), (1000, 7)])
def test_replayed_batches_count_exactly_what_eager_batches_count(monkeypatch: pytest.MonkeyPatch, num: int,
                                                                 batch: int) -> None:
    eager = linear_counts(monkeypatch, None, num, batch)
    graphs = FakeGraphs()
    replayed = linear_counts(monkeypatch, graphs, num, batch)
    assert np.array_equal(eager, replayed)
    draws = -(-num // -(-num // batch))  # plan_batches: the fewest equal batches
    assert graphs.recorded == 1
    assert graphs.replays == num // draws - 1  # every full batch after the first, none of a shorter last one


def test_the_next_phase_draws_on_where_the_replays_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    phases = {}
    for graphs in (None, FakeGraphs()):
        generator = torch.Generator().manual_seed(0)
        first = linear_counts(monkeypatch, graphs, 640, 32, generator)
        second = linear_counts(monkeypatch, None, 640, 32, generator)  # an eager phase after it, same generator
        phases[graphs is None] = (first, second)
    assert all(np.array_equal(a, b) for a, b in zip(phases[True], phases[False]))


def test_a_replay_that_repeats_its_noise_or_a_twin_never_handed_back_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    eager = linear_counts(monkeypatch, None, 640, 32)
    frozen = linear_counts(monkeypatch, FakeGraphs(frozen=True), 640, 32)
    assert not np.array_equal(eager, frozen)
    generator = torch.Generator().manual_seed(0)
    linear_counts(monkeypatch, FakeGraphs(keep_twin=True), 640, 32, generator)
    after_kept = linear_counts(monkeypatch, None, 640, 32, generator)
    generator = torch.Generator().manual_seed(0)
    linear_counts(monkeypatch, None, 640, 32, generator)
    after_eager = linear_counts(monkeypatch, None, 640, 32, generator)
    assert not np.array_equal(after_kept, after_eager)


def test_short_phases_are_not_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    graphs = FakeGraphs()
    linear_counts(monkeypatch, graphs, 64 * MIN_REPLAYS, 64)  # the first batch leaves MIN_REPLAYS - 1 full ones
    assert graphs.recorded == 0
    linear_counts(monkeypatch, graphs, 64 * (MIN_REPLAYS + 1), 64)
    assert graphs.recorded == 1


def test_certificates_and_sequential_stops_match_with_graphs(monkeypatch: pytest.MonkeyPatch, linear_setup) -> None:
    model, image = linear_setup
    results = {}
    for graphs in (False, True):
        if graphs:
            monkeypatch.setattr(engine, "record_batch", FakeGraphs())
        smoothed = vision_rs.smooth(model, 0.5, batch_size=50, cuda_graphs=graphs, progress=False)
        fixed = smoothed.certify(image, n0=100, n=2000, alpha=0.001, seed=3)
        stopped = smoothed.certify(image, n0=100, n=20_000, alpha=0.001, seed=3, sequential=True)
        results[graphs] = [(c.label, c.radius, c.counts, c.n_used) for c in (fixed, stopped)]
        assert smoothed.describe()["cuda_graphs"] is graphs
    assert results[False] == results[True]


def test_on_the_cpu_recording_is_declined_once_and_batches_run_as_usual(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vision_rs.sampling.graphs"):
        assert record_batch(lambda twin: None, torch.Generator(), torch.device("cpu")) is None
        counts = sample(lambda x: torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], dim=1), torch.rand(3, 4, 4),
                        GaussianNoise(0.5), WholeImage(), VoteTally(), 640, torch.Generator().manual_seed(0),
                        EngineConfig(batch_size=32, progress=False, cuda_graphs=True))
    assert counts.sum() == 640
    assert [r.getMessage() for r in caplog.records].count("cuda_graphs has no effect on cpu: batches run as usual") <= 1
