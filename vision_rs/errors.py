"""Exception types raised by vision-rs.

Every error the library raises on purpose derives from :class:`VisionRSError`,
so ``except vision_rs.VisionRSError`` catches them all. Messages say what was
wrong and what to do about it.
"""

from __future__ import annotations


class VisionRSError(Exception):
    """Base class of every error vision-rs raises on purpose.

    ``cli`` is the same message for command-line users where the two differ (it names the
    option, e.g. ``--no-pretrained``, instead of the Python argument ``pretrained=False``).
    """

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli if cli is not None else message


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
