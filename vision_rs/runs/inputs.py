"""Collecting a data set's inputs and their true labels from files and folders.

Labels follow torchvision's ``ImageFolder``: the immediate sub-folders of a folder are the classes,
sorted by name → indices 0, 1, …, and every file below a class folder (at any depth) has that class.
Folders named by non-negative integers (``digits/3/x.png``) keep their integer as the label, as a
model trained on such a layout expects. A ``class_to_idx`` mapping (or a classes file) overrides
both. Files given directly, or lying in the top folder itself, have an unknown label (−1).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import InvalidImageError, InvalidParameterError
from ..wording import plural

UNKNOWN_LABEL = -1
"""Label of an input whose true class is not known."""

PLOT_SOFTWARE = "vision-rs plot"
"""The ``Software`` text of every PNG plot vision-rs writes: no run takes such a file as an input."""

log = logging.getLogger(__name__)


def is_vision_rs_plot(path: Path) -> bool:
    """Whether ``path`` is a PNG plot written by vision-rs (its header's ``Software`` text; nothing is decoded)."""
    if path.suffix.lower() != ".png":
        return False
    try:
        with Image.open(path) as image:
            return str(image.info.get("Software", "")).startswith(PLOT_SOFTWARE)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # reported when the file is read as an input
        return False


def warn_if_inside_inputs(out: str | os.PathLike, sources: Sequence[str | os.PathLike]) -> None:
    """Warn when a run's output lies inside one of its input folders (its own results and plots are never taken as
    inputs, but other files put there would be)."""
    folder = Path(out).resolve().parent
    for source in sources:
        root = Path(source).resolve()
        if root.is_dir() and (folder == root or root in folder.parents):
            log.warning("the output %s lies inside the input folder %s: vision-rs never takes its own results or plots "
                        "as inputs, but any other image written there would be; keep outputs outside the inputs", out,
                        source)
            return


@dataclass(frozen=True)
class LabelledFiles:
    """Input files with their labels, in a fixed order (folders searched recursively, sorted)."""

    files: list[tuple[Path, int]]
    class_to_idx: dict[str, int] | None
    """The class-folder name → label mapping used, or None when no folder had class sub-folders."""

    @property
    def sources(self) -> list[str]:
        return [str(path) for path, _ in self.files]


def read_class_file(path: str | os.PathLike) -> dict[str, int]:
    """A class mapping from a file: JSON ``{"name": index, ...}``, or one class name per line (line i → index i)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"classes file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InvalidParameterError(f"{path} is not a text file: give class names one per line, or a JSON mapping") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"{path} is not valid JSON: {exc}") from exc
        return check_class_to_idx(mapping, str(path))
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return check_class_to_idx({name: index for index, name in enumerate(names)}, str(path))


def check_class_to_idx(mapping: object, source: str = "class_to_idx") -> dict[str, int]:
    """A validated class-name → index mapping: string names, distinct non-negative integer indices."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise InvalidParameterError(f"{source} must map class names to indices, e.g. {{'cat': 0, 'dog': 1}}")
    checked = {}
    for name, index in mapping.items():
        if not isinstance(name, str) or isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise InvalidParameterError(f"{source}: class {name!r} → {index!r}: names must be strings, indices integers >= 0")
        checked[name] = index
    if len(set(checked.values())) != len(checked):
        raise InvalidParameterError(f"{source}: two classes share an index")
    return checked


def folder_classes(root: Path) -> dict[str, int]:
    """The ImageFolder mapping of ``root``'s sub-folders: integer names keep their integer, others are sorted → 0, 1, …"""
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if names and all(name.isdigit() for name in names):
        return {name: int(name) for name in names}
    return {name: index for index, name in enumerate(names)}


def collect_files(
    sources: Sequence[str | os.PathLike],
    suffixes: Sequence[str],
    class_to_idx: Mapping[str, int] | None = None,
    kind: str = "image",
) -> LabelledFiles:
    """Files and folders → sorted (path, label) pairs of files whose suffix is in ``suffixes``.

    See the module docstring for the labels. With ``class_to_idx`` given, a class folder missing from
    it is refused (its files could not be labelled).
    """
    mapping = check_class_to_idx(class_to_idx) if class_to_idx is not None else None
    found: list[tuple[Path, int]] = []
    used: dict[str, int] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            plots = [file for file in files if is_vision_rs_plot(file)]
            if plots:
                log.debug("left out %s that vision-rs wrote under %s (first: %s)", plural(len(plots), "plot"), path, plots[0])
                files = [file for file in files if file not in set(plots)]
            if not files:
                raise InvalidImageError(f"no {kind} files ({', '.join(suffixes)}) under {path}")
            classes = mapping if mapping is not None else folder_classes(path)
            for file in files:
                parts = file.relative_to(path).parts
                if len(parts) == 1:
                    found.append((file, UNKNOWN_LABEL))
                    continue
                if parts[0] not in classes:
                    raise InvalidParameterError(
                        f"{file}: class folder {parts[0]!r} is not in the class mapping; add it or leave the file out"
                    )
                used[parts[0]] = classes[parts[0]]
                found.append((file, classes[parts[0]]))
        elif path.is_file():
            found.append((path, UNKNOWN_LABEL))
        else:
            raise InvalidImageError(f"no such {kind} file or folder: {path}")
    return LabelledFiles(found, dict(sorted(used.items(), key=lambda item: item[1])) if used else None)


def check_labels(labels: Sequence[int], num_classes: int, sources: Sequence[str] | None = None) -> None:
    """Refuse a class index outside [0, num_classes) (an unknown label, −1, passes), naming the first input with one."""
    for index, label in enumerate(labels):
        if int(label) != UNKNOWN_LABEL and not 0 <= int(label) < num_classes:
            what = sources[index] if sources is not None else f"item {index}"
            raise InvalidParameterError(
                f"{what} has label {int(label)}, outside the model's {num_classes} classes (0 to {num_classes - 1}): "
                "give the model as many classes as the data has, or fix the label")
