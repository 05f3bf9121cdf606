"""Which models the app offers, per task: the embedded ones, models whose weights are in the local caches, and
checkpoints from the one folder the server was started with (``vision-rs app --models DIR``).

The browser only ever sends a key of this catalog; a key that is not in it is refused. No path typed in the
browser reaches the file system, and nothing is downloaded: timm and torchvision models are offered only when
their pretrained weights are already on disk (see :func:`vision_rs.models.hub.local_timm_weights`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from ..errors import InvalidParameterError, ModelUnavailableError
from ..models.hub import CHECKPOINT_SUFFIXES, TORCHVISION_PREFIX, hf_hub_cache_dir, torch_hub_checkpoints_dir

log = logging.getLogger(__name__)

IMAGE, VIDEO, SEGMENTATION = "image-classification", "video-classification", "segmentation"
TASKS = (IMAGE, VIDEO, SEGMENTATION)
CHECKPOINT_FILES_LISTED = 200
"""Most checkpoint files listed from ``--models DIR`` (the first, in name order)."""


@dataclass(frozen=True)
class ModelChoice:
    """One model the app offers: ``key`` is what the browser sends, ``label`` what it shows."""

    key: str
    label: str
    task: str
    """The task whose tab offers it (a checkpoint is offered in every tab: its architecture decides)."""
    name: str
    """What :func:`vision_rs.models.hub.create_model_with_source` builds: an embedded, timm or ``torchvision:`` name;
    empty for a checkpoint (its architecture is given with the request)."""
    checkpoint: Path | None = None
    sigma: float | None = None
    """The noise σ the model was trained with, when known (embedded models)."""
    hierarchical_p: float | None = None
    """The hierarchical selection probability it was trained with (embedded hierarchical model)."""
    localized: dict[str, object] | None = None
    """The localized settings it was trained for (embedded localized segmentation model)."""
    framewise: bool = False
    """Video tab: an image classifier run on every frame."""


def _embedded_choices() -> list[ModelChoice]:
    from ..models.embedded import describe_embedded_models, embedded_model_info

    choices = []
    for row in describe_embedded_models():
        name = str(row["name"])
        info = embedded_model_info(name) or {}
        task, sigma, p, localized = str(info["task"]), info.get("sigma"), info.get("p"), info.get("localized")
        trained = (f"localized {localized['grid'][0]}×{localized['grid'][1]}, σ {localized['sigma_min']}–"  # type: ignore[index]
                   f"{localized['sigma_max']}" if localized else f"σ={sigma}") + (f", p={p}" if p is not None else "")  # type: ignore[index]
        common = dict(name=name, sigma=float(sigma) if sigma is not None else None,  # type: ignore[arg-type]
                      hierarchical_p=float(p) if p is not None else None, localized=localized)  # type: ignore[arg-type]
        choices.append(ModelChoice(key=f"embedded:{name}", label=f"{name} (embedded, trained with {trained})",
                                   task=task, **common))  # type: ignore[arg-type]
    return choices


def framewise_twin(choice: ModelChoice) -> ModelChoice:
    """An image model offered in the video tab, run on every frame (logits averaged over frames)."""
    return replace(choice, key=choice.key + "#framewise", label=choice.label + ", frame by frame", task=VIDEO,
                   framewise=True)


def _cached_hf_repos() -> set[str]:
    """Repository ids (``org/name``) with a folder in the Hugging Face hub cache."""
    cache = hf_hub_cache_dir()
    if not cache.is_dir():
        return set()
    return {entry.name[len("models--"):].replace("--", "/") for entry in cache.iterdir() if entry.name.startswith("models--")}


def _torch_hub_files() -> set[str]:
    folder = torch_hub_checkpoints_dir()
    return {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()


def cached_timm_names() -> list[str]:
    """timm pretrained names whose weights are in the local caches (checked with ``local_timm_weights``)."""
    repos, files = _cached_hf_repos(), _torch_hub_files()
    if not any(repo.startswith("timm/") for repo in repos) and not files:
        return []  # nothing cached: skip listing timm's 1,800 pretrained names
    import timm
    from timm.models import get_pretrained_cfg

    from ..models.hub import local_timm_weights

    found = []
    for name in timm.list_pretrained():
        cfg = get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id in repos or (cfg.url and os.path.basename(cfg.url.split("?")[0]) in files)):
            continue
        try:
            local_timm_weights(name)
        except ModelUnavailableError:
            continue
        found.append(name)
    return found


def cached_torchvision_names() -> dict[str, list[str]]:
    """torchvision model names per task whose default weights are in torch hub's checkpoints folder."""
    files = _torch_hub_files()
    if not files:
        return {task: [] for task in TASKS}
    import torchvision.models as tvm

    found: dict[str, list[str]] = {}
    for task, module in ((IMAGE, tvm), (VIDEO, tvm.video), (SEGMENTATION, tvm.segmentation)):
        found[task] = [name for name in tvm.list_models(module=module)
                       if os.path.basename(tvm.get_model_weights(name).DEFAULT.url) in files]
    return found


def checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files directly inside ``folder`` (sorted; at most ``CHECKPOINT_FILES_LISTED``); symbolic links that
    point outside it are left out."""
    root = folder.resolve()
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.suffix in CHECKPOINT_SUFFIXES and entry.is_file() and entry.resolve().parent == root:
            files.append(entry.resolve())
    return files[:CHECKPOINT_FILES_LISTED]


@dataclass
class ModelCatalog:
    """The models the app offers, and a small cache of the loaded ones (shared by every user; read-only use)."""

    choices: dict[str, ModelChoice]
    loaded_limit: int = 4
    """Loaded models kept in memory (least recently used dropped first)."""
    extra_loaders: dict[str, Callable[[], nn.Module]] = field(default_factory=dict)
    """Key → function building the model, for choices that are not built by name (tests, embedding applications)."""
    _loaded: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def scan(cls, models_dir: str | os.PathLike | None = None, *, local_caches: bool = True) -> ModelCatalog:
        """Embedded models, cached timm / torchvision weights (``local_caches``), and the checkpoints in ``models_dir``."""
        choices = _embedded_choices()
        if local_caches:
            choices += [ModelChoice(f"timm:{name}", f"{name} (timm, cached weights)", IMAGE, name)
                        for name in cached_timm_names()]
            for task, names in cached_torchvision_names().items():
                choices += [ModelChoice(f"torchvision:{name}", f"torchvision:{name} (cached weights)", task,
                                        TORCHVISION_PREFIX + name) for name in names]
        if models_dir is not None:
            folder = Path(models_dir)
            if not folder.is_dir():
                raise InvalidParameterError(f"--models {folder}: no such folder")
            for path in checkpoint_files(folder):
                choices += [ModelChoice(f"checkpoint:{path.name}", f"{path.name} (checkpoint from {folder.name}/)", task, "",
                                        checkpoint=path) for task in TASKS]
        choices += [framewise_twin(choice) for choice in choices if choice.task == IMAGE and choice.hierarchical_p is None]
        return cls({f"{choice.key}|{choice.task}": choice for choice in choices})

    def for_task(self, task: str) -> list[ModelChoice]:
        return [choice for choice in self.choices.values() if choice.task == task]

    def get(self, key: str, task: str) -> ModelChoice:
        """The choice with this key in this task's list; our error for anything else (never a path)."""
        choice = self.choices.get(f"{key}|{task}")
        if choice is None:
            raise InvalidParameterError(f"unknown model {key!r}: choose one from the list")
        return choice

    def add(self, choice: ModelChoice, loader: Callable[[], nn.Module] | None = None) -> None:
        """Offer one more model (built by ``loader`` when given, else by name)."""
        self.choices[f"{choice.key}|{choice.task}"] = choice
        if loader is not None:
            self.extra_loaders[choice.key] = loader

    def load(self, choice: ModelChoice, arch: str = "", num_classes: int | None = None) -> nn.Module:
        """The model of ``choice`` (a checkpoint into architecture ``arch``), loaded once and kept while recently used."""
        if choice.checkpoint is not None and not arch.strip():
            raise InvalidParameterError(f"{choice.checkpoint.name} is a checkpoint: give its architecture (a timm name, "
                                        "torchvision:NAME or an embedded name) in the Checkpoint box")
        arch = arch.strip() if choice.checkpoint is not None else ""
        if os.sep in arch or "/" in arch or arch.endswith(CHECKPOINT_SUFFIXES):
            raise InvalidParameterError(f"architecture {arch!r} must be a model name, not a path")
        key = (choice.key, choice.task, arch, num_classes)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        model = self._build(choice, arch, num_classes)
        with self._lock:
            self._loaded[key] = model
            while len(self._loaded) > self.loaded_limit:
                self._loaded.popitem(last=False)
        return model

    def _build(self, choice: ModelChoice, arch: str, num_classes: int | None) -> nn.Module:
        from ..models.hub import create_model_with_source

        if choice.key in self.extra_loaders:
            return self.extra_loaders[choice.key]()
        task = IMAGE if choice.framewise else choice.task
        if choice.checkpoint is not None:
            model, _ = create_model_with_source(str(choice.checkpoint), arch=arch, num_classes=num_classes, task=task)
        else:
            model, _ = create_model_with_source(choice.name, num_classes=num_classes, task=task)
        log.info("loaded %s for %s", choice.label, choice.task)
        return model.eval()
