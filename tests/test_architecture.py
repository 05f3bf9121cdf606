"""The package's folders are its architecture: every import runs down the layers, and there is no cycle.

Layers, bottom to top (the README's "Architecture"):

0. foundation: ``errors``, ``params``, ``wording``, ``images`` (and clip reading, ``video.io`` / ``video.tensors``)
1. ``sampling/``: noise, views, engine, statistics, certificates (and segmentation's pure certificates)
2. ``models/``: hub, adapters, checkpoints, denoisers, embedded defaults
3. ``smoothing``: the one-line ``smooth`` for images, clips and masks
4. ``runs/``: data-set runs
5. ``training/``: training with the certification noise
6. ``app/``, ``cli``, ``demo``: the entry points

Imports inside functions count: a lazy import upward is still an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"vision_rs": ROOT / "vision_rs", "vision_rs.video": ROOT / "video",
                "vision_rs.segmentation": ROOT / "segmentation"}

FOUNDATION, SAMPLING, MODELS, SMOOTHING, RUNS, TRAINING, ENTRY = range(7)
LAYER_OF_PREFIX = {  # the longest matching prefix decides
    "vision_rs.errors": FOUNDATION, "vision_rs.params": FOUNDATION, "vision_rs.wording": FOUNDATION,
    "vision_rs.images": FOUNDATION,
    "vision_rs.video.io": FOUNDATION, "vision_rs.video.tensors": FOUNDATION,
    "vision_rs.sampling": SAMPLING, "vision_rs.video.views": SAMPLING,
    "vision_rs.segmentation.localized": SAMPLING, "vision_rs.segmentation.certificates": SAMPLING,
    "vision_rs.segmentation.results": SAMPLING,
    "vision_rs.models": MODELS, "vision_rs.video.models": MODELS, "vision_rs.segmentation.models": MODELS,
    "vision_rs.smoothing": SMOOTHING, "vision_rs.video.smoothing": SMOOTHING, "vision_rs.segmentation.smoothing": SMOOTHING,
    "vision_rs.runs": RUNS, "vision_rs.video.datasets": RUNS, "vision_rs.segmentation.datasets": RUNS,
    "vision_rs.training": TRAINING,
    "vision_rs.app": ENTRY, "vision_rs.cli": ENTRY, "vision_rs.demo": ENTRY, "vision_rs.__main__": ENTRY,
}
FACADES = {"vision_rs", "vision_rs.video", "vision_rs.segmentation"}
"""Package ``__init__`` files that re-export their public names: importable from the entry points only."""


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The vision-rs modules ``name`` imports (at any depth of the file), resolved to module names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target and target not in known:  # `from .x import name`: the module is x, not x.name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


def layer(name: str) -> int:
    prefixes = [prefix for prefix in LAYER_OF_PREFIX if name == prefix or name.startswith(prefix + ".")]
    assert prefixes, f"{name} belongs to no layer: add it to LAYER_OF_PREFIX (and to the README's Architecture)"
    return LAYER_OF_PREFIX[max(prefixes, key=len)]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer, or of a package facade from below the entry points."""
    upward = []
    for name, targets in graph.items():
        if name in FACADES:
            continue
        for target in targets:
            if target in FACADES and layer(name) < ENTRY:
                upward.append(f"{name} imports the package facade {target}")
            elif target not in FACADES and layer(target) > layer(name):
                upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    return sorted(upward)


def test_every_import_runs_down_the_layers(graph: dict[str, set[str]]) -> None:
    upward = upward_imports(graph)
    assert not upward, "\n".join(upward)


def test_the_layer_check_catches_an_upward_import(graph: dict[str, set[str]], tmp_path: Path) -> None:
    """Power: the check fails once the engine imports from the models wing, even inside a function."""
    engine = tmp_path / "engine.py"
    engine.write_text(modules()["vision_rs.sampling.engine"].read_text()
                      + "\n\ndef _probe():\n    from ..models.hub import create_model\n")
    probed = dict(graph, **{"vision_rs.sampling.engine": imports_of("vision_rs.sampling.engine", engine, set(graph))})
    assert upward_imports(probed) == ["vision_rs.sampling.engine (layer 1) imports vision_rs.models.hub (layer 2)"]


def test_there_is_no_import_cycle(graph: dict[str, set[str]]) -> None:
    edges = {name: {t for t in targets if t not in FACADES} for name, targets in graph.items() if name not in FACADES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_importing_vision_rs_loads_no_app_plot_or_diffusion_library() -> None:
    code = ("import sys, vision_rs; vision_rs.smooth; vision_rs.certify_dataset; vision_rs.Patches; "
            "vision_rs.Hierarchical; vision_rs.DiffusionDenoiser; import vision_rs.video, vision_rs.segmentation; "
            "heavy = [m for m in ('gradio', 'matplotlib', 'diffusers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
