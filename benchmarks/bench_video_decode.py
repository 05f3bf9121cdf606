"""Decode time per clip through ``vision_rs.video.io.read_clip_info``: decord against PyAV.

    python benchmarks/bench_video_decode.py [--repeats 7] [--clips 24]

Cases (every file written here with OpenCV, fourcc mp4v, into a temporary folder):

* ``embedded``: the first ``--clips`` embedded test clips (16 frames, 32×32),
  all frames of each;
* ``long``: one synthetic 300-frame 112×112 video at 25 fps (keyframe every 12
  frames, OpenCV's default), read ``--clips`` times as 32 frames at stride 2
  from frame 0; 32 frames at stride 2 from frame 200 (the reader seeks); and
  32 frames spread uniformly over the whole video.

Methods: ``read_clip_info`` with ``backend="decord"``, ``"pyav"`` and
``"auto"``; and the PyAV packet scan alone (open + demux, no decoding), which
the decord backend runs first as its truncation check whenever PyAV is
installed, so its cost is part of the decord column. A backend that cannot
read a case (decord2 cannot copy 32-pixel-wide frames) shows ``n/a`` and why.
Each timed run reads every clip of its case once; methods are interleaved per
round; the table shows the median milliseconds per clip and the ratio
pyav / decord of the medians from this one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from _measure import Measurements, contention_note, environment, log, positive_int, print_environment, time_interleaved
from vision_rs.errors import InvalidVideoError
from vision_rs.models.embedded.clips import write_clips
from vision_rs.video import io


def write_long_video(path: Path, frames: int = 300, size: int = 112) -> Path:
    """A 25 fps mp4v video of moving sinusoids, ``frames`` frames of ``size``×``size``."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size, size))
    for t in range(frames):
        red = 128 + 100 * np.sin((xx + 3 * t) / 6.0)
        green = 128 + 100 * np.cos((yy - 2 * t) / 5.0)
        blue = np.full_like(red, (t * 6) % 256)
        writer.write(np.stack([blue, green, red], axis=-1).astype(np.uint8))  # OpenCV wants BGR
    writer.release()
    return path


def packet_scan(path: Path) -> None:
    """What the truncation check costs: open with PyAV and read the packet table, no decoding."""
    io._PyAVSource(path).close()


def reader(paths: list[Path], read: Callable[[Path], object]) -> Callable[[], float]:
    """A runner that reads every path once and returns the seconds it took."""

    def run() -> float:
        import time

        start = time.perf_counter()
        for path in paths:
            read(path)
        return time.perf_counter() - start

    return run


def runners_for(paths: list[Path], request: dict[str, object]) -> tuple[dict[str, Callable[[], float]], dict[str, str]]:
    """Timed runners of every installed method that can read ``paths``; and why the others cannot."""
    runners: dict[str, Callable[[], float]] = {}
    missing: dict[str, str] = {}
    installed = io.available_backends()
    for backend in ("decord", "pyav", "auto"):
        if backend != "auto" and backend not in installed:
            missing[backend] = "not installed"
            continue
        try:
            clip = io.read_clip_info(paths[0], backend=backend, **request)  # type: ignore[arg-type]
        except InvalidVideoError as exc:
            missing[backend] = str(exc).split(": ", 1)[-1].replace(str(paths[0]), paths[0].name)[:110]
            continue
        label = backend if backend != "auto" else f"auto ({clip.backend})"
        runners[label] = reader(paths, lambda p, b=backend: io.read_clip_info(p, backend=b, **request))  # type: ignore[arg-type]
    if "pyav" in installed:
        runners["packet scan"] = reader(paths, packet_scan)
    return runners, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=7, help="interleaved rounds per case")
    parser.add_argument("--clips", type=positive_int, default=24, help="clips read per timed run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print_environment(environment(torch.device("cpu")))
    print("decoders: " + ", ".join(io._distribution_version("decord" if b == "decord" else "av") for b in io.available_backends()))
    with tempfile.TemporaryDirectory() as folder:
        embedded = write_clips(Path(folder) / "clips", "test", limit=args.clips)
        long = [write_long_video(Path(folder) / "long.mp4")] * args.clips
        cases = [
            ("embedded 16×32×32, all 16 frames", embedded, {}),
            ("long 300×112×112, 32 at stride 2 from 0", long, {"frames": 32, "stride": 2}),
            ("long 300×112×112, 32 at stride 2 from 200", long, {"frames": 32, "stride": 2, "start": 200}),
            ("long 300×112×112, 32 uniform", long, {"frames": 32, "uniform": True}),
        ]
        rows = []
        measured = []
        for name, paths, request in cases:
            log(f"{name}:")
            runners, missing = runners_for(paths, request)
            results = Measurements(units=len(paths))
            for run in runners.values():
                run()  # warm-up: imports, file cache
            time_interleaved(results, runners, args.repeats, "clips", label=f"{name[:8]} ")
            measured.append(results)
            rows.append((name, {method: 1000.0 / rate for method, rate in results.median.items()}, missing))
    print()
    print(f"median milliseconds per clip over {args.repeats} rounds of {args.clips} clips each")
    header = f"{'case':44s} {'decord':>8s} {'pyav':>8s} {'auto':>16s} {'packet scan':>12s} {'pyav/decord':>12s}"
    print(header)
    print("-" * len(header))
    notes = []
    for name, ms, missing in rows:
        auto = next(((k, v) for k, v in ms.items() if k.startswith("auto")), None)
        ratio = f"{ms['pyav'] / ms['decord']:.2f}" if "pyav" in ms and "decord" in ms else "-"
        cells = [f"{ms[m]:8.2f}" if m in ms else f"{'n/a':>8s}" for m in ("decord", "pyav")]
        auto_cell = f"{auto[1]:6.2f} {auto[0][6:-1]:>9s}" if auto else "n/a"
        scan = f"{ms['packet scan']:12.2f}" if "packet scan" in ms else f"{'n/a':>12s}"
        print(f"{name:44s} {cells[0]} {cells[1]} {auto_cell:>16s} {scan} {ratio:>12s}")
        notes += [f"  {name}: {backend} n/a: {why}" for backend, why in missing.items()]
    if notes:
        print("\n".join(["not measured:"] + notes))
    print(contention_note(measured))


if __name__ == "__main__":
    main()
