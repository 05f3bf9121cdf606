"""The training losses against hand computations (numpy, written from the papers' formulas)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vision_rs import InvalidParameterError
from vision_rs.training import Consistency, DenoiserMSE, GaussianAugmentation, Stability, make_loss

LOGITS = np.array([  # m = 2 copies, B = 2 inputs, K = 3 classes
    [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]],
    [[1.0, 1.5, -0.5], [-0.3, 0.9, 0.0]],
])
LABELS = np.array([0, 2])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def by_hand(lam: float, eta: float) -> tuple[float, float, float, float]:
    """(total, cross-entropy, KL, entropy) of Jeong & Shin's loss, term by term."""
    p = softmax(LOGITS)  # [m, B, K]
    m, b = p.shape[:2]
    cross_entropy = np.mean([-np.log(p[i, j, LABELS[j]]) for i in range(m) for j in range(b)])
    mean = p.mean(axis=0)
    kl = np.mean([np.sum(mean[j] * (np.log(mean[j]) - np.log(p[i, j]))) for i in range(m) for j in range(b)])
    entropy = np.mean([-np.sum(mean[j] * np.log(mean[j])) for j in range(b)])
    return cross_entropy + lam * kl + eta * entropy, cross_entropy, kl, entropy


@pytest.mark.parametrize("lam, eta", [(10.0, 0.5), (20.0, 0.0), (0.0, 1.0)])
def test_consistency_is_cross_entropy_plus_lambda_kl_to_the_mean_plus_eta_entropy(lam: float, eta: float) -> None:
    terms = Consistency(copies=2, lam=lam, eta=eta)(torch.tensor(LOGITS), torch.tensor(LABELS))
    total, cross_entropy, kl, entropy = by_hand(lam, eta)
    assert float(terms.total) == pytest.approx(total, rel=1e-6)
    assert float(terms.parts["cross_entropy"]) == pytest.approx(cross_entropy, rel=1e-6)
    assert float(terms.parts["kl"]) == pytest.approx(kl, rel=1e-6)
    assert float(terms.parts["entropy"]) == pytest.approx(entropy, rel=1e-6)
    assert kl > 0.01  # the copies disagree: the test would see a KL term with the wrong direction or weight


def test_consistency_kl_direction_matters() -> None:
    """Power: KL(p_i ‖ p̄) differs from KL(p̄ ‖ p_i) on these logits, so the hand computation pins the direction."""
    p = softmax(LOGITS)
    mean = p.mean(axis=0)
    reverse = np.mean([np.sum(p[i, j] * (np.log(p[i, j]) - np.log(mean[j]))) for i in range(2) for j in range(2)])
    assert abs(reverse - by_hand(1.0, 0.0)[2]) > 1e-4


def test_gaussian_augmentation_is_cross_entropy_over_every_copy_and_pixel() -> None:
    terms = GaussianAugmentation(copies=2)(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert float(terms.total) == pytest.approx(by_hand(0.0, 0.0)[1], rel=1e-6)
    scores = torch.randn(1, 2, 4, 3, 3, generator=torch.Generator().manual_seed(0))  # segmentation [m, B, K, H, W]
    masks = torch.randint(0, 4, (2, 3, 3), generator=torch.Generator().manual_seed(1))
    masks[0, 0, 0] = 255  # not scored
    keep = masks != 255
    log_p = torch.log_softmax(scores[0], dim=1)
    expected = -log_p.permute(0, 2, 3, 1)[keep].gather(1, masks[keep][:, None]).mean()
    assert float(GaussianAugmentation()(scores, masks).total) == pytest.approx(float(expected), rel=1e-6)


def test_denoiser_losses() -> None:
    clean = torch.rand(3, 1, 4, 4)
    denoised = clean[None] + 0.1
    assert float(DenoiserMSE()(denoised, clean).total) == pytest.approx(0.01, rel=1e-5)
    logits = torch.tensor(LOGITS)
    assert float(Stability(copies=2)(logits, torch.tensor(LABELS)).total) == pytest.approx(by_hand(0, 0)[1], rel=1e-6)


def test_bad_loss_settings_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="unknown loss 'smooth'"):
        make_loss("smooth")
    with pytest.raises(InvalidParameterError, match="copies"):
        Consistency(copies=1)
    with pytest.raises(InvalidParameterError, match="lam"):
        Consistency(lam=-1.0)
    with pytest.raises(InvalidParameterError, match="eta"):
        Consistency(eta=float("nan"))
