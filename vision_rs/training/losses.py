"""Losses for training with the certification noise, on the outputs of several noisy copies of each input.

Every loss takes ``outputs`` shaped ``[m, B, ...]`` (m noisy copies of each of B inputs, as
:class:`~vision_rs.training.noise.NoisyBaseClassifier` returns them; the class dim follows B: logits [m, B, K],
segmentation scores [m, B, K, H, W]) and targets shaped ``[B, ...]`` (class indices; segmentation pixels
equal to 255 are not scored), and returns :class:`LossTerms`: the total to minimise and its parts (for logs).

* :class:`GaussianAugmentation` — cross-entropy on noisy inputs (Cohen, Rosenfeld & Kolter, ICML 2019).
* :class:`Consistency` — Jeong & Shin (NeurIPS 2020): cross-entropy + λ·KL(p̄ ‖ p_i) + η·H(p̄), p̄ the mean
  softmax of the m copies.
* :class:`DenoiserMSE` and :class:`Stability` — denoised smoothing (Salman et al., NeurIPS 2020): the squared
  error of the denoised image, or the cross-entropy of a frozen classifier on the denoised image against its own
  class on the clean image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import InvalidParameterError
from ..segmentation.results import IGNORE_INDEX


@dataclass(frozen=True)
class LossTerms:
    """The loss to minimise (a scalar tensor) and its named parts (scalar tensors, for logs)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class NoiseLoss(Protocol):
    """What the trainer needs of a loss: its name, how many noisy copies of each input it scores, its settings."""

    name: str
    copies: int

    def describe(self) -> dict[str, Any]: ...

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> LossTerms: ...


def _check_copies(copies: object, least: int) -> None:
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < least:
        raise InvalidParameterError(f"copies (noisy draws per input) must be an integer >= {least}, got {copies!r}")


def _check_weight(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise InvalidParameterError(f"{name} must be a finite number >= 0, got {value!r}")


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every copy, input (and scored pixel) of outputs [m, B, K, ...] against targets [B, ...]."""
    copies = outputs.shape[0]
    flat = outputs.reshape(-1, *outputs.shape[2:]).float()
    repeated = targets.repeat(copies, *([1] * (targets.ndim - 1)))
    return F.cross_entropy(flat, repeated, ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class _OnCopies:
    """A loss over ``copies`` noisy draws of each input, with the settings a training record keeps."""

    copies: int = 1
    name = "?"
    least_copies = 1

    def __post_init__(self) -> None:
        _check_copies(self.copies, self.least_copies)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class GaussianAugmentation(_OnCopies):
    """Cross-entropy on noisy inputs, averaged over ``copies`` draws per input (Cohen et al. 2019 use one).

    Cohen et al. train with the noise σ they certify with, one draw per input and step; the trainer's σ is the
    smoothed model's.
    """

    name = "gaussian"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        loss = _cross_entropy(outputs, targets)
        return LossTerms(loss, {"cross_entropy": loss.detach()})


@dataclass(frozen=True)
class Consistency(_OnCopies):
    """Consistency regularisation (Jeong & Shin, NeurIPS 2020) over ``copies`` = m noisy draws per input:

        L = (1/m) Σ_i CE(p_i, y) + λ · (1/m) Σ_i KL(p̄ ‖ p_i) + η · H(p̄),   p̄ = (1/m) Σ_i p_i,

    p_i the softmax of copy i. KL and entropy are in nats, averaged over inputs (and pixels). The paper's defaults:
    m = 2, η = 0.5, and λ = 10 or 20 on CIFAR-10 (λ = 10 here; the authors raise it with σ), λ = 5 on ImageNet.
    """

    copies: int = 2
    lam: float = 10.0
    eta: float = 0.5
    name = "consistency"
    least_copies = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weight("lam (λ, the weight of the KL term)", self.lam)
        _check_weight("eta (η, the weight of the entropy term)", self.eta)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        if outputs.shape[0] < 2:
            raise InvalidParameterError(f"consistency needs at least 2 noisy copies per input, got {outputs.shape[0]}")
        cross_entropy = _cross_entropy(outputs, targets)
        log_p = F.log_softmax(outputs.float(), dim=2)  # [m, B, K, ...]
        log_mean = torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(outputs.shape[0])))  # log p̄ [B, K, ...]
        mean = log_mean.exp()
        kl = (mean[None] * (log_mean[None] - log_p)).sum(dim=2).mean()  # mean over copies and inputs of KL(p̄ ‖ p_i)
        entropy = -(mean * log_mean).sum(dim=1).mean()
        total = cross_entropy + self.lam * kl + self.eta * entropy
        return LossTerms(total, {"cross_entropy": cross_entropy.detach(), "kl": kl.detach(), "entropy": entropy.detach()})


@dataclass(frozen=True)
class DenoiserMSE(_OnCopies):
    """Mean squared error of the denoised draws [m, B, C, H, W] against the clean images [B, C, H, W] ([0, 1]
    pixel units squared): the denoiser learns to remove the noise for any classifier ("MSE", Salman et al.)."""

    name = "mse"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        loss = F.mse_loss(outputs.float(), targets[None].expand_as(outputs).float())
        return LossTerms(loss, {"mse": loss.detach()})


@dataclass(frozen=True)
class Stability(GaussianAugmentation):
    """Salman et al.'s stability objective for a denoiser D in front of a frozen classifier f: CE(f(D(x + δ)), f(x)),
    the classifier's own class on the clean image as the target (no labels needed). ``outputs`` are f's logits on
    the denoised draws [m, B, K]; ``targets`` its classes on the clean inputs [B]: the cross-entropy of
    :class:`GaussianAugmentation`, with other targets."""

    name = "stability"


CLASSIFIER_LOSSES = {"gaussian": GaussianAugmentation, "consistency": Consistency}
DENOISER_LOSSES = {"mse": DenoiserMSE, "stability": Stability}


def make_loss(name: str, table: dict[str, type] = CLASSIFIER_LOSSES, **settings: Any) -> NoiseLoss:
    """The loss called ``name`` in ``table`` with ``settings``; our error for a name that is not there."""
    if name not in table:
        raise InvalidParameterError(f"unknown loss {name!r}: choose one of {', '.join(sorted(table))}")
    return table[name](**settings)
