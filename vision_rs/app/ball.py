"""One perturbation inside the certified ball, to show on the input how large a certified radius is (display only).

It is not an attack and proves nothing: the certificate covers *every* perturbation inside the ball. This one goes
in the direction the base model's gradient suggests lowers the certified class's margin most, with an L2 norm just
below the radius (:data:`SHARE` of it) before the result is clipped to [0, 1] pixels, which can only shrink it. For
hierarchical smoothing the ball is "at most r changed pixels with L2 norm below ε(r)": the perturbation changes the
one pixel (r = 1) whose gradient is largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from ..models.adapters import evaluation_mode
from ..smoothing import SmoothedClassifier, seeded_generator

SHARE = 0.99
"""The perturbation's L2 norm before clipping, as a share of the certified radius."""
GRADIENT_DRAWS = 32
"""Noisy copies the base model's margin gradient is averaged over (one batch)."""


@dataclass(frozen=True)
class BallPoint:
    """The input moved inside the certified ball: ``perturbed`` float [C, H, W] in [0, 1], the L2 norm of the change
    (after clipping) and the radius it stays below; ``pixels``: pixels changed (all of them, or 1 for hierarchical)."""

    perturbed: torch.Tensor
    norm: float
    radius: float
    pixels: int


def margin_gradient(smoothed: SmoothedClassifier, pixels: torch.Tensor, label: int, seed: int,
                    draws: int = GRADIENT_DRAWS) -> torch.Tensor:
    """d/dx of the base model's margin for ``label`` (its probability minus the largest other class's, views
    averaged), averaged over ``draws`` noisy copies of ``pixels`` [C, H, W] drawn with the method's own noise and
    views: the gradient of the smoothed soft classifier, estimated. Float [C, H, W] on the model's device."""
    image = pixels.detach().to(smoothed.device).requires_grad_(True)
    channels = image.shape[0]
    generator, _ = seeded_generator(smoothed.device, seed)
    view = smoothed.smoothing.make_view(tuple(image.shape), smoothed.spec.transform, generator)
    buffer = torch.empty((draws, channels + smoothed.noise.extra_channels, *image.shape[1:]), device=smoothed.device)
    noisy = smoothed.noise.perturb_(buffer, image.detach(), generator)
    shifted = torch.cat([image + (noisy[:, :channels] - image.detach()), noisy[:, channels:]], dim=1)
    with evaluation_mode(smoothed.base), torch.enable_grad():
        logits = rearrange(smoothed.base(view(shifted)), "(b k) classes -> b k classes", k=view.count)
        probabilities = logits.float().softmax(dim=-1).mean(dim=1)
        others = probabilities.clone()
        others[:, label] = -1.0
        margin = (probabilities[:, label] - others.max(dim=1).values).mean()
        (gradient,) = torch.autograd.grad(margin, image)
    return gradient


def inside_ball(pixels: torch.Tensor, gradient: torch.Tensor, radius: float, one_pixel: bool = False,
                share: float = SHARE) -> BallPoint:
    """``pixels`` [C, H, W] in [0, 1] moved against ``gradient`` by ``share`` × ``radius`` (L2), then clipped to
    [0, 1]; with ``one_pixel``, only the pixel whose gradient (over its channels) is largest moves."""
    image = pixels.detach().float().cpu()
    direction = gradient.detach().float().cpu()
    if one_pixel:
        strength = direction.norm(dim=0)
        keep = torch.zeros_like(strength, dtype=torch.bool).flatten()
        keep[int(strength.argmax())] = True
        direction = direction * keep.view_as(strength)
    size = float(direction.norm())
    step = -share * radius * direction / size if size > 0 else torch.zeros_like(direction)
    perturbed = (image + step).clamp(0.0, 1.0)
    changed = int(((perturbed - image).abs().amax(dim=0) > 0).sum())
    return BallPoint(perturbed, float((perturbed - image).norm()), radius, changed)
