"""Validation of the numeric parameters shared by every method."""

from __future__ import annotations

import math
import numbers

from .errors import InvalidParameterError
from .wording import Wording


def check_sigma(sigma: float) -> float:
    """Return σ as a float; σ is the noise std in [0, 1] pixel units and must be finite and > 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise InvalidParameterError(f"sigma must be a number, got {type(sigma).__name__}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise InvalidParameterError(
            f"sigma must be finite and > 0 (noise std in [0,1] pixel units, e.g. 0.25), got {sigma}"
        )
    return float(sigma)


def check_alpha(alpha: float) -> float:
    """Return α as a float; α is the failure probability of a certificate, in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise InvalidParameterError(
            f"alpha must lie strictly between 0 and 1 (e.g. 0.001), got {alpha!r}"
        )
    return float(alpha)


def check_count(name: str, value: int) -> int:
    """Return a sample count (n0, n, batch size) that must be an integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_flag(name: str, value: bool) -> bool:
    """Return ``value`` if it is True or False (not 1, "yes" or None)."""
    if not isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(seed: int | None) -> int | None:
    """Return a noise seed: a non-negative integer, or None for a fresh random one."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def check_changed_pixels(r: int) -> int:
    """Return r, the number of pixels an adversary may change (hierarchical smoothing): an integer >= 1."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InvalidParameterError(f"r (number of changed pixels) must be an integer >= 1, got {r!r}")
    return int(r)


def check_selection_probability(p: float) -> float:
    """Return the hierarchical selection probability p, which must lie in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0:
        raise InvalidParameterError(f"the selection probability {{p}} must lie in (0, 1] (e.g. 0.85), got {p!r}",
                                    p=Wording("p", "--hierarchical-p"))
    return float(p)
