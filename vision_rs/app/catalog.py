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
    trained_on: str = ""
    """What the model was trained on, in words (shown beside the model)."""
    reference: str | None = None
    """The task whose embedded training data inputs are checked against (:mod:`vision_rs.models.embedded.typicality`);
    None: no check (the app does not have the model's training data)."""

    @property
    def hierarchical(self) -> bool:
        """Trained for hierarchical smoothing (it reads the indicator channel)."""
        return self.hierarchical_p is not None

    @property
    def embedded(self) -> bool:
        return self.key.startswith("embedded:")


def _noise_words(sigma: object, p: object, localized: dict | None) -> str:
    if localized:
        return (f"localized noise on a {localized['grid'][0]}×{localized['grid'][1]} grid, σ from "
                f"{localized['sigma_min']} to {localized['sigma_max']}")
    if p is not None:
        return f"hierarchical noise (p = {p}, σ = {sigma}, indicator channel)"
    return "no noise (for denoised smoothing)" if sigma == 0 else f"Gaussian noise σ = {sigma}"


def _embedded_choices() -> list[ModelChoice]:
    from ..models.embedded import describe_embedded_models, embedded_model_info
    from ..models.embedded.typicality import TRAINING_DATA

    choices = []
    for row in describe_embedded_models():
        name = str(row["name"])
        info = embedded_model_info(name) or {}
        task, sigma, p, localized = str(info["task"]), info.get("sigma"), info.get("p"), info.get("localized")
        trained = (f"localized {localized['grid'][0]}×{localized['grid'][1]}, σ {localized['sigma_min']}–"  # type: ignore[index]
                   f"{localized['sigma_max']}" if localized else f"σ={sigma}") + (f", p={p}" if p is not None else "")  # type: ignore[index]
        common = dict(name=name, sigma=float(sigma) if sigma is not None else None,  # type: ignore[arg-type]
                      hierarchical_p=float(p) if p is not None else None, localized=localized,  # type: ignore[arg-type]
                      trained_on=f"{TRAINING_DATA[task]}, with {_noise_words(sigma, p, localized)}",  # type: ignore[arg-type]
                      reference=task)
        choices.append(ModelChoice(key=f"embedded:{name}", label=f"{name} (embedded, trained with {trained})",
                                   task=task, **common))  # type: ignore[arg-type]
    return choices


def framewise_twin(choice: ModelChoice) -> ModelChoice:
    """An image model offered in the video tab, run on every frame (logits averaged over frames); embedded ones check
    inputs against the embedded clips, which are made of their training digits."""
    return replace(choice, key=choice.key + "#framewise", label=choice.label + ", frame by frame", task=VIDEO,
                   framewise=True, trained_on=choice.trained_on + "; run on every frame",
                   reference=VIDEO if choice.reference else None)


def model_card(choice: ModelChoice | None, note: str = "") -> str:
    """What the page says beside a model: what it was trained on (and ``note``, e.g. why it was switched to)."""
    if choice is None:
        return note
    trained = f"**Trained on** {choice.trained_on}." if choice.trained_on else ""
    return " ".join(part for part in (trained, note) if part)


@dataclass(frozen=True)
class ImageSettings:
    """What the image tab's settings become after the user picks a model or a method (None: leave it as it is)."""

    model: str | None = None
    sigma: float | None = None
    method: str | None = None
    p: float | None = None
    indicator: bool | None = None
    card: str = ""
    """The model card to show (see :func:`model_card`)."""


def _trained_settings(choice: ModelChoice, note: str = "", **changes: object) -> ImageSettings:
    """The σ (and for a hierarchical model, method, p and indicator) ``choice`` was trained with."""
    if choice.hierarchical:
        changes.update(method="Hierarchical", p=choice.hierarchical_p, indicator=True)
    if choice.sigma:
        changes["sigma"] = choice.sigma
    return ImageSettings(card=model_card(choice, note), **changes)  # type: ignore[arg-type]


def _method_fit(catalog: ModelCatalog, choice: ModelChoice, method: str) -> ImageSettings | None:
    """A model switch (or the indicator turned off) that makes ``choice`` work with ``method``; None when it does."""
    switch = catalog.for_method(choice.task, choice.key, method)
    if switch is not None:
        why = ("it was trained for hierarchical smoothing and reads its indicator channel" if method == "Hierarchical"
               else f"{choice.name} reads a 4th, indicator channel that only hierarchical smoothing feeds")
        return _trained_settings(switch, f"Switched the model to {switch.name}: {why}.", model=switch.key, method=method)
    if method == "Hierarchical" and not choice.hierarchical:
        return ImageSettings(indicator=False, card=model_card(choice, (
            f"{choice.name or choice.label} reads the image's own channels, so the indicator channel is off (a model "
            "trained with hierarchical noise and the indicator certifies more).")))
    return None


def after_model_choice(catalog: ModelCatalog, key: str, method: str) -> ImageSettings:
    """The image tab's settings once the user picks model ``key`` while ``method`` is chosen: the σ it was trained
    with, and a method it works with (a hierarchical model brings hierarchical smoothing; an embedded model trained
    without it brings Gaussian smoothing in its place; any other model keeps the method, without the indicator)."""
    choice = catalog.choices.get(f"{key}|{IMAGE}")
    if choice is None:
        return ImageSettings()
    if method != "Hierarchical" or choice.hierarchical:
        return _trained_settings(choice)
    if choice.embedded:
        return _trained_settings(choice, f"Method set to Gaussian: {choice.name} was trained without "
                                 "hierarchical noise.", method="Gaussian")
    return _method_fit(catalog, choice, method) or ImageSettings(card=model_card(choice))


def after_method_choice(catalog: ModelCatalog, key: str, method: str) -> ImageSettings:
    """The image tab's settings once the user picks ``method`` while model ``key`` is chosen: a compatible model
    (see :meth:`ModelCatalog.for_method`), or the indicator turned off for a model that reads only the image."""
    choice = catalog.choices.get(f"{key}|{IMAGE}")
    if choice is None:
        return ImageSettings()
    return _method_fit(catalog, choice, method) or ImageSettings(card=model_card(choice))


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


def _torchvision_data(name: str) -> str:
    import torchvision.models as tvm

    return f"the data of torchvision's default weights ({tvm.get_model_weights(name).DEFAULT})"


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
            choices += [ModelChoice(f"timm:{name}", f"{name} (timm, cached weights)", IMAGE, name,
                                    trained_on=f"the data its timm weights were trained on (the tag after the dot: "
                                               f"{name.partition('.')[2] or 'default'})")
                        for name in cached_timm_names()]
            for task, names in cached_torchvision_names().items():
                choices += [ModelChoice(f"torchvision:{name}", f"torchvision:{name} (cached weights)", task,
                                        TORCHVISION_PREFIX + name, trained_on=_torchvision_data(name))
                            for name in names]
        if models_dir is not None:
            folder = Path(models_dir)
            if not folder.is_dir():
                raise InvalidParameterError(f"--models {folder}: no such folder")
            for path in checkpoint_files(folder):
                choices += [ModelChoice(f"checkpoint:{path.name}", f"{path.name} (checkpoint from {folder.name}/)", task, "",
                                        checkpoint=path, trained_on="whatever its checkpoint was trained on (the app "
                                        "cannot tell)") for task in TASKS]
        choices += [framewise_twin(choice) for choice in choices if choice.task == IMAGE and choice.hierarchical_p is None]
        return cls({f"{choice.key}|{choice.task}": choice for choice in choices})

    def for_method(self, task: str, key: str, method: str) -> ModelChoice | None:
        """The model to switch to when ``method`` is chosen while model ``key`` is: an embedded hierarchical model
        for "Hierarchical" in place of an embedded one trained without it (the same σ when there is one), an embedded
        model trained with Gaussian noise (same σ) in place of a hierarchical one for any other method; None: keep it
        (it is compatible, or the catalog has nothing better to offer)."""
        current = self.choices.get(f"{key}|{task}")
        wants_hierarchical = method == "Hierarchical"
        if current is None or current.hierarchical == wants_hierarchical or not current.embedded:
            return None
        fits = [choice for choice in self.for_task(task) if choice.embedded and choice.hierarchical == wants_hierarchical
                and not choice.framewise and choice.sigma]
        fits.sort(key=lambda choice: choice.sigma != current.sigma)  # the same σ first; stable otherwise
        return fits[0] if fits else None

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
