"""Data-set runs over several processes (issue 14), on the CPU with gloo: torchrun's command line, sharding,
merging, resume after a killed or failing rank, and another number of processes.

The multi-process runs fork their ranks from the test process (torch is imported once; each rank sets one
torch thread before anything else, as DataLoader workers do); torchrun itself runs once, on the README's line. Rows are compared with a one-process run
on every column but ``time`` (the same seeds ``seed + idx``, one thread on both sides: bit-identical counts).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as torch_mp

import vision_rs
from tests.conftest import options_torchrun_refuses, write_digit_folder
from vision_rs import read_rows
from vision_rs.cli import build_parser, main
from vision_rs.errors import InvalidParameterError, ModelOutputError, OutputPathError
from vision_rs.models.embedded import DigitsDataset
from vision_rs.runs.distributed import Ranks, ranks_from_environment, resolve_ranks
from vision_rs.runs.files import RunFiles, part_path, part_ranks

ROOT = Path(__file__).resolve().parents[1]
MODEL, SIGMA = "digits_cnn.sigma_0.25", 0.25
SETTINGS = dict(n0=10, n=100, alpha=0.01, seed=3, progress=False)
INPUTS = 10
torchrun_parser = pytest.importorskip("torch.distributed.run").get_args_parser
pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


@functools.cache
def digits() -> list:
    dataset = DigitsDataset("test")
    return [dataset[i] for i in range(INPUTS)]


def smoothed() -> vision_rs.SmoothedClassifier:
    return vision_rs.smooth(MODEL, sigma=SIGMA, device="cpu", batch_size=64, progress=False)


def one_thread(function):
    """Run ``function`` with one torch thread, as every rank does (the same thread count: the same float sums)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapped


def columns(path: Path) -> list[tuple]:
    """Every TSV column but ``time``."""
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in read_rows(path)]


def results(path: Path) -> tuple[dict, list[dict]]:
    """(run record, results without their timings) of a run's JSONL."""
    lines = [json.loads(line) for line in path.with_suffix(".jsonl").read_text().splitlines()]
    for line in lines[1:]:
        line["certificate"].pop("seconds")
    return lines[0]["run"], lines[1:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process run every multi-process run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run.tsv"
    one_thread(vision_rs.certify_dataset)(smoothed(), digits(), out, distributed=False, **SETTINGS)
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    assert columns(out) == columns(reference)
    assert [row.idx for row in read_rows(out)] == list(range(INPUTS))  # index order, no row twice
    assert results(out) == results(reference)  # the run record first, then every certificate
    assert part_ranks(out) == [] and not list(out.parent.glob("*.part")) and not list(out.parent.glob("*.tmp"))


# ---------------------------------------------------------------------------- the command line under torchrun


def torchrun_lines(command: str = "certify") -> list[list[str]]:
    """The README's torchrun command lines that run ``vision_rs COMMAND``, as words."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
             if re.match(r"(srun )?torchrun ", line) and f" vision_rs {command} " in line]
    return [shlex.split(line)[1 if line.startswith("srun ") else 0:] for line in lines]


def test_torchrun_accepts_the_readme_lines_and_vision_rs_reads_what_follows_the_module() -> None:
    assert len(torchrun_lines()) >= 3, "the README shows torchrun on one machine, on several, and under Slurm"
    for words in torchrun_lines():
        parsed = torchrun_parser().parse_args(words[1:])
        assert parsed.module and parsed.training_script == "vision_rs"
        ours = build_parser().parse_args(parsed.training_script_args)
        assert ours.command == "certify" and ours.n == 100_000 and ours.out.name == "run.tsv"


def test_every_long_option_passes_torchrun_except_the_short_forms_it_would_take_for_its_own(capsys) -> None:
    """torchrun parses the words after ``-m vision_rs`` too, abbreviations allowed: an option of ours that starts
    two of its options is an error there. ``--n`` (one process only) must fail: the check can fail."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    certifying = [command for command in commands if command.startswith("certify")]
    assert {"certify", "certify-video", "certify-seg"} <= set(certifying)
    refused = options_torchrun_refuses(tuple(certifying))
    assert refused == {*((command, "--n") for command in certifying), ("certify-video", "--start")}
    assert "ambiguous option: --n could match" in capsys.readouterr().err
    for command, short, long in (*((command, "--n", "--num-samples") for command in certifying),
                                 ("certify-video", "--start", "--start-frame")):
        aliases = next(a.option_strings for a in commands[command]._actions if short in a.option_strings)
        assert long in aliases  # the long name that torchrun lets through


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), INPUTS)


def test_the_readme_torchrun_line_certifies_like_one_process(tmp_path: Path, digit_files: Path) -> None:
    """The README's line as written, with 2 processes on the CPU (gloo), the digits, a small n."""
    words = torchrun_lines()[0]
    assert words[:3] == ["torchrun", "--nproc-per-node", "8"]
    replace = {"8": "2", "./val/": str(digit_files), "resnet50": MODEL, "0.5": str(SIGMA), "100000": "100",
               "run.tsv": str(tmp_path / "run.tsv")}
    words = [replace.get(word, word) for word in words]
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    from torch.distributed.elastic.utils.distributed import get_free_port

    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PET_MASTER_PORT": str(get_free_port())}
    done = subprocess.run(command + words[1:], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged 2 part files" in done.stderr and done.stdout.count("wrote ") == 1  # rank 0 speaks

    single = tmp_path / "single.tsv"
    cli = ["certify", str(digit_files), "--model", MODEL, "--sigma", str(SIGMA), "--n", "100", "--no-progress"]
    assert one_thread(main)([*cli, "--out", str(single)]) == 0
    assert columns(tmp_path / "run.tsv") == columns(single)
    assert results(tmp_path / "run.tsv") == results(single)


def test_torchrun_without_out_is_refused_and_errors_reach_torchruns_summary(
        tmp_path: Path, digit_files: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for name, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    assert main(["certify", str(digit_files), "--model", MODEL, "--sigma", "0.25", "--num-samples", "10"]) == 2
    message = "vision-rs[rank 1/2]: error: under torchrun give --out run.tsv"
    assert message in capsys.readouterr().err
    assert "under torchrun give --out" in json.loads(error_file.read_text())["message"]["message"]


def test_an_interrupt_counts_the_rows_in_the_parts_too(tmp_path: Path, reference: Path) -> None:
    from vision_rs.cli import _saved_rows

    out = tmp_path / "run.tsv"
    split_into_parts(reference, out, world_size=2, keep=2)
    args = argparse.Namespace(command="certify", out=out)
    assert _saved_rows(args) == f"4 finished rows are saved ({out}); run the same command again to resume"


# ---------------------------------------------------------------------------- ranks, shares, environment


def test_shares_cover_the_unfinished_inputs_once_and_differ_by_at_most_one() -> None:
    todo = [0, 2, 3, 5, 6, 7, 8, 11, 12, 13]
    for world_size in (1, 2, 3, 4, 7, 12):
        shares = [Ranks(rank, world_size, rank).share(todo) for rank in range(world_size)]
        assert sorted(idx for share in shares for idx in share) == todo
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert Ranks(1, 3, 1).share(todo) == [2, 6, 11]


def test_the_environment_torchrun_sets_decides_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = dict(RANK="2", WORLD_SIZE="4", LOCAL_RANK="0", MASTER_ADDR="head", MASTER_PORT="29500")
    assert ranks_from_environment(variables) == Ranks(2, 4, 0)
    assert ranks_from_environment({**variables, "MASTER_PORT": ""}) is None
    with pytest.raises(InvalidParameterError, match="0 <= RANK < WORLD_SIZE"):
        ranks_from_environment({**variables, "RANK": "4"})
    for name in variables:
        monkeypatch.delenv(name, raising=False)
    assert resolve_ranks(None) is None and resolve_ranks(False) is None
    with pytest.raises(InvalidParameterError, match="distributed=True needs torchrun"):
        resolve_ranks(True)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert resolve_ranks(None) == Ranks(2, 4, 0) and resolve_ranks(False) is None


# ---------------------------------------------------------------------------- merging parts (one process)


def split_into_parts(reference: Path, out: Path, world_size: int, keep: int) -> None:
    """The part files ``world_size`` ranks leave after each finished ``keep`` rows of its share (a crash)."""
    tsv = reference.read_text().splitlines(keepends=True)
    jsonl = reference.with_suffix(".jsonl").read_text().splitlines(keepends=True)
    for rank in range(world_size):
        rows = Ranks(rank, world_size, rank).share(range(INPUTS))[:keep]
        part_path(out, rank, world_size).write_text(tsv[0] + "".join(tsv[1 + idx] for idx in rows))
        part_path(out.with_suffix(".jsonl"), rank, world_size).write_text(jsonl[0] + "".join(jsonl[1 + idx] for idx in rows))


class Counting:
    """Delegates to a smoothed classifier and counts the inputs it certifies."""

    def __init__(self, inner: vision_rs.SmoothedClassifier) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def certify(self, *args, **kwargs):
        self.calls += 1
        return self.inner.certify(*args, **kwargs)


def assert_one_process_finishes(out: Path, reference: Path, done: int) -> None:
    """Resuming in one process certifies only the inputs not ``done`` and gives the reference run."""
    counting = Counting(smoothed())
    one_thread(vision_rs.certify_dataset)(counting, digits(), out, distributed=False, **SETTINGS)
    assert counting.calls == INPUTS - done
    assert_same_run(out, reference)


def test_one_process_resumes_from_the_parts_of_three_without_redoing_a_row(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run.tsv"
    split_into_parts(reference, out, world_size=3, keep=2)  # rows 0-5 done
    with part_path(out, 2, 3).open("a") as handle:
        handle.write("8\t9\t")  # rank 2 killed while writing its third row
    assert_one_process_finishes(out, reference, done=6)


def test_a_merge_killed_between_its_two_renames_loses_and_repeats_nothing(tmp_path: Path, reference: Path) -> None:
    """The JSONL was replaced by the merged one, the TSV not yet, the parts are still there."""
    out = tmp_path / "run.tsv"
    split_into_parts(reference, out, world_size=2, keep=3)  # rows 0-5 done
    jsonl = reference.with_suffix(".jsonl").read_text().splitlines(keepends=True)
    out.with_suffix(".jsonl").write_text("".join(jsonl[:7]))
    out.write_text("".join(reference.read_text().splitlines(keepends=True)[:3]))  # the TSV before: rows 0, 1 (also in parts)
    assert_one_process_finishes(out, reference, done=6)


def test_a_part_with_other_settings_is_refused_naming_the_field(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run.tsv"
    split_into_parts(reference, out, world_size=2, keep=2)
    jsonl = part_path(out.with_suffix(".jsonl"), 1, 2)
    jsonl.write_text(jsonl.read_text().replace('"n": 100,', '"n": 1000,', 1))
    with pytest.raises(OutputPathError, match="n: was 1000, now 100"):
        vision_rs.certify_dataset(smoothed(), digits(), out, distributed=False, **SETTINGS)
    assert not out.exists() and part_ranks(out) == [(0, 2), (1, 2)]  # nothing merged, nothing lost


def test_part_files_are_named_after_the_run_and_found_for_any_world_size(tmp_path: Path) -> None:
    out = tmp_path / "run.tsv"
    assert RunFiles.part(out, 1, 4).tsv.name == "run.tsv.rank1-of-4.part"
    assert RunFiles.part(out, 1, 4).jsonl.name == "run.jsonl.rank1-of-4.part"
    for name in ("run.tsv.rank1-of-4.part", "run.jsonl.rank0-of-2.part", "run.tsv.rank4-of-4.part",
                 "other.tsv.rank0-of-2.part", "run.tsv.rank0-of-2.part.tmp"):
        (tmp_path / name).write_text("")
    assert part_ranks(out) == [(0, 2), (1, 4)]


# ---------------------------------------------------------------------------- several processes (gloo)


class Faulty(Counting):
    """Certifies like ``inner``, but the process dies (``kill``) or raises (``raise``) on reaching input ``at``."""

    def __init__(self, inner: vision_rs.SmoothedClassifier, at: int | None, how: str) -> None:
        super().__init__(inner)
        self.at, self.how = at, how

    def certify(self, *args, seed: int, **kwargs):
        if seed - SETTINGS["seed"] == self.at:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ModelOutputError(f"injected failure at input {self.at}")
        return super().certify(*args, seed=seed, **kwargs)


def rank_main(rank: int, world_size: int, port: int, out: str, fault: tuple[int, int, str] | None,
              changes: dict) -> None:
    """One rank, with the environment torchrun would give it; ``fault``: (rank, input, kill | raise);
    ``changes``: settings that differ from ``SETTINGS``."""
    torch.set_num_threads(1)  # first: a forked child must not use the parent's OpenMP pool (as DataLoader workers)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    at, how = (fault[1], fault[2]) if fault is not None and fault[0] == rank else (None, "")
    certifier = Faulty(smoothed(), at, how)
    try:
        vision_rs.certify_dataset(certifier, digits(), out, **{**SETTINGS, **changes})
    finally:
        Path(f"{out}.calls{rank}").write_text(str(certifier.calls))
    assert not torch.distributed.is_initialized()  # left cleanly


def run_ranks(world_size: int, out: Path, fault: tuple[int, int, str] | None = None, **changes) -> int:
    """Run ``world_size`` ranks to the end; returns how many inputs they certified together."""
    from torch.distributed.elastic.utils.distributed import get_free_port

    for old in out.parent.glob(out.name + ".calls*"):
        old.unlink()
    digits()  # loaded here once; the forked ranks share it
    try:
        torch_mp.start_processes(rank_main, args=(world_size, get_free_port(), str(out), fault, changes), nprocs=world_size,
                                 start_method="fork")
    finally:
        calls = sum(int(path.read_text()) for path in out.parent.glob(out.name + ".calls*"))
    return calls


def rows_in_parts(out: Path) -> list[int]:
    return sorted(row.idx for rank, size in part_ranks(out) if part_path(out, rank, size).exists()
                  for row in read_rows(part_path(out, rank, size)))


def test_a_killed_rank_loses_no_row_and_the_rerun_finishes_like_one_process(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run.tsv"
    with pytest.raises(torch_mp.ProcessExitedException, match="process 1 terminated with signal SIGKILL"):
        run_ranks(2, out, fault=(1, 5, "kill"))  # rank 1 (inputs 1, 3, 5, ...) dies on its third input
    kept = rows_in_parts(out)
    assert {1, 3} <= set(kept) and 5 not in kept and len(kept) == len(set(kept))
    assert run_ranks(2, out) == INPUTS - len(kept)  # the rerun certifies only what was missing
    assert_same_run(out, reference)


def test_a_rank_that_raises_fails_the_run_clearly_and_three_ranks_resume_it(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run.tsv"
    with pytest.raises(torch_mp.ProcessRaisedException, match="ModelOutputError: injected failure at input 4"):
        run_ranks(2, out, fault=(0, 4, "raise"))  # rank 0 (inputs 0, 2, 4, ...) raises on its third input
    kept = rows_in_parts(out)
    assert {0, 2} <= set(kept) and 4 not in kept
    assert run_ranks(3, out) == INPUTS - len(kept)
    assert_same_run(out, reference)


def test_every_rank_refuses_to_resume_a_run_with_other_settings(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run.tsv"
    split_into_parts(reference, out, world_size=2, keep=1)
    before = {path.name: path.read_text() for path in tmp_path.iterdir()}
    with pytest.raises(torch_mp.ProcessRaisedException, match="OutputPathError: .* holds a run with other settings"):
        run_ranks(2, out, n=200)
    assert {path.name: path.read_text() for path in tmp_path.iterdir() if ".calls" not in path.name} == before


def test_each_rank_takes_the_gpu_of_its_local_rank_and_the_backend_follows_the_device(monkeypatch) -> None:
    from vision_rs.runs.distributed import backend_for, rank_device

    ranks = Ranks(5, 8, 1)
    assert rank_device("cpu", ranks) == torch.device("cpu") and rank_device("cuda:0", None) == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("cuda", ranks) == rank_device("cuda:0", ranks) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InvalidParameterError, match="LOCAL_RANK 1 but sees 1 GPU"):
        rank_device("cuda", ranks)
    assert backend_for("cuda:1") == "nccl" and backend_for("cpu") == backend_for(None) == "gloo"


def test_the_command_line_builds_each_ranks_model_on_its_own_gpu(monkeypatch, tmp_path: Path) -> None:
    from vision_rs.cli import rank_device_option

    for name, value in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "run.tsv"
    for given, expected in ((None, "cuda:1"), ("cuda", "cuda:1"), ("cuda:0", "cuda:1"), ("cpu", "cpu")):
        assert rank_device_option(argparse.Namespace(device=given, out=out)) == torch.device(expected)


def test_parts_on_other_gpus_of_the_same_run_are_no_environment_change(tmp_path: Path, caplog) -> None:
    """Rank 1 of a GPU run wrote cuda:1 in its record: no warning on cuda:0, but one when resuming on the CPU."""
    def record(device: str) -> dict:
        return {"kind": "image-classification", "classifier": {"device": device, "sigma": 0.25}, "n": 100}

    part = RunFiles.part(tmp_path / "run.tsv", 1, 2)
    part.finished(record("cuda:1"), [None])
    part.append("0\t1\t1\t0.5\t1\t0.1\n", {"idx": 0, "label": 1, "source": None})
    part.close()
    with caplog.at_level("WARNING", logger="vision_rs"):
        assert RunFiles.part(tmp_path / "run.tsv", 1, 2).finished(record("cuda:0"), [None], per_rank=True) == {0}
        assert not caplog.records
        RunFiles.part(tmp_path / "run.tsv", 1, 2).finished(record("cpu"), [None], per_rank=True)
    assert "classifier.device: was 'cuda:1', now 'cpu'" in caplog.text
