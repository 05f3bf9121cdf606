"""Exception types raised by vision-rs.

Every error the library raises on purpose derives from :class:`VisionRSError`,
so ``except vision_rs.VisionRSError`` catches them all. Messages say what was
wrong and what to do about it, in the words of whoever called: ``str(error)``
names Python keywords, ``error.cli_message`` the command-line flags.
"""

from __future__ import annotations

import re

from .wording import Wording


class VisionRSError(Exception):
    """Base class of every error vision-rs raises on purpose.

    ``message`` is written once; where Python and the command line name a setting differently it names a
    ``{part}``, given as a :class:`~vision_rs.wording.Wording`: ``str(error)`` fills in the Python wording
    (``pad='loop'``), :attr:`cli_message` the command-line one (``--pad loop``). The command line prints
    :attr:`cli_message`; everything else reads ``str(error)``.
    """

    def __init__(self, message: str, **parts: Wording) -> None:
        super().__init__(_fill(message, {name: part.python for name, part in parts.items()}))
        self.cli_message = _fill(message, {name: part.cli for name, part in parts.items()})
        """The message for command-line users (flags instead of keywords)."""

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled with both wordings (errors travel between the ranks of a torchrun run)."""
        return _rebuild, (type(self), str(self), self.cli_message)


def _fill(message: str, words: dict[str, str]) -> str:
    """``message`` with each ``{name}`` of ``words`` replaced; every other brace stays as it is (paths, values)."""
    return re.sub(r"\{(\w+)\}", lambda match: words.get(match.group(1), match.group(0)), message) if words else message


def _rebuild(kind: type[VisionRSError], python: str, cli: str) -> VisionRSError:
    return kind("{text}", text=Wording(python, cli))


class InvalidParameterError(VisionRSError, ValueError):
    """A parameter is impossible (σ ≤ 0, α outside (0, 1), n < 1, ...)."""


class InvalidImageError(VisionRSError, ValueError):
    """An image is unreadable, truncated, of the wrong shape, dtype or range."""


class InvalidVideoError(InvalidImageError):
    """A video file is missing, unreadable, truncated, empty or too short for the frames asked of it."""


class ModelOutputError(VisionRSError, RuntimeError):
    """The wrapped model returned something other than logits ``[B, num_classes]``."""


class CheckpointError(VisionRSError):
    """A checkpoint is missing, unsafe to load, or does not fit the model."""


class ModelUnavailableError(VisionRSError):
    """Pretrained weights for a model name are not on this machine."""


class OutputPathError(VisionRSError):
    """An output file cannot be written, or an existing run does not match."""


class MissingDependencyError(VisionRSError, ImportError):
    """An optional package needed for this feature is not installed (the message says which extra has it)."""


class TrainingError(VisionRSError, RuntimeError):
    """Training cannot go on: the loss became NaN or infinite, memory ran out, or a process of the run failed.
    The checkpoint of the last finished epoch is kept."""
