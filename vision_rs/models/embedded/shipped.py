"""The weight files shipped with vision-rs, and loading them into the embedded models."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn

from ...errors import CheckpointError
from ..checkpoints import load_checkpoint_into


def shipped_weights(file: str) -> Path:
    """Where a weight file shipped with vision-rs is installed."""
    return Path(str(resources.files(__package__) / "weights" / file))


def with_shipped_weights(model: nn.Module, registry: dict[str, dict[str, object]], name: str, pretrained: bool,
                         script: str) -> nn.Module:
    """``model`` in eval mode with the weights ``registry[name]`` ships (unless ``pretrained=False``).

    ``script`` is the demo script that makes the file, named when it is missing from the install.
    """
    if name not in registry:
        raise KeyError(f"unknown embedded model {name!r}; choose from {sorted(registry)}")
    if pretrained:
        path = shipped_weights(str(registry[name]["file"]))
        if not path.is_file():
            raise CheckpointError(
                f"embedded weights {path} are missing from this install; reinstall vision-rs or recreate them "
                f"with `python {script}`"
            )
        load_checkpoint_into(model, path)
    return model.eval()
