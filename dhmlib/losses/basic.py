"""Joint and depth losses of DeepHandMesh (masked L1 on joints, masked smooth-L1 on depth maps).

Both return a scalar and are reduced the way the original trainer reduces them: the original loss modules
return per-element losses and its training loop takes ``.mean()`` of each term before summing, so masked-out
elements are zeros that still count in the denominator. ``normalize="valid"`` divides by the number of
valid elements instead (a deliberate, opt-in difference: the term's scale then no longer depends on how many
joints are annotated or how much of the image the hand covers).
"""
from __future__ import annotations

import torch
from torch import Tensor

from dhmlib.losses.depth_cpu import compiled_depth_loss_available, depth_loss_cpu

_NORMALIZE = ("all", "valid")


def _check_normalize(normalize: str) -> None:
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")


def joint_loss(pred: Tensor, target: Tensor, valid: Tensor, normalize: str = "all") -> Tensor:
    """Masked L1 between predicted and ground-truth joints.

    pred, target: (B, J, 3) mm; valid: (B, J) or (B, J, 1), 1 for annotated joints, 0 otherwise (bool or
    float; float values act as weights, as in the original).

    Returns the scalar ``sum(|pred - target| * valid) / N`` in mm with
    - ``normalize="all"`` (default, the original): N = B·J·3, masked entries count as zeros;
    - ``normalize="valid"``: N = 3 · (number of valid joints), 0 when no joint is valid.
    Entries where ``valid`` is 0 contribute neither value nor gradient, even when they hold NaN or inf.
    """
    _check_normalize(normalize)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"joint_loss: pred and target must both be (B, J, 3), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if valid.ndim == 2:
        valid = valid[..., None]
    if valid.shape != pred.shape[:2] + (1,):
        raise ValueError(f"joint_loss: valid must be (B, J) or (B, J, 1) for pred {tuple(pred.shape)}, "
                         f"got {tuple(valid.shape)}")
    w = valid.to(pred.dtype)
    keep = (w != 0).expand_as(pred)
    diff = torch.where(keep, pred - target, torch.zeros((), dtype=pred.dtype, device=pred.device))
    total = (diff.abs() * w).sum()
    if normalize == "all":
        return total / pred.numel()
    return total / (3 * (w != 0).sum()).clamp(min=1).to(pred.dtype)


def depth_loss(rendered: Tensor, target: Tensor, beta: float = 1.0, normalize: str = "all") -> Tensor:
    """Smooth-L1 between rendered and target depth, only where both maps are non-zero.

    rendered, target: (B, K, H, W) mm, 0 = no surface (background). ``beta`` (mm) is the smooth-L1
    threshold: 0.5·d²/β below β, |d| − 0.5·β above (PyTorch's definition; the original uses its default
    β = 1).

    The mask ``(rendered != 0) & (target != 0)`` is not differentiable: like the original renderer, the
    loss pulls depth values only and never moves the silhouette. Pixels outside the mask contribute neither
    value nor gradient (also when they hold NaN or inf).

    Reduction, a scalar in mm:
    - ``normalize="all"`` (default, the original): mean over all B·K·H·W pixels, masked pixels counting as
      zeros (the original averages its K per-view maps, then takes the mean over B·H·W);
    - ``normalize="valid"``: sum over valid pixels divided by their number.
    With no valid pixel at all both give 0, connected to ``rendered`` (its gradient is zero, never NaN).
    """
    _check_normalize(normalize)
    if rendered.shape != target.shape or rendered.ndim != 4:
        raise ValueError(f"depth_loss: rendered and target must both be (B, K, H, W), got "
                         f"{tuple(rendered.shape)} and {tuple(target.shape)}")
    if not beta > 0:
        raise ValueError(f"depth_loss: beta must be > 0 mm, got {beta}")
    if compiled_depth_loss_available(rendered, target):    # the same gradient in one pass each way
        return depth_loss_cpu(rendered, target, beta, normalize)
    target = target.to(rendered.dtype)
    mask = (rendered != 0) & (target != 0)
    d = torch.where(mask, rendered - target, torch.zeros((), dtype=rendered.dtype, device=rendered.device))
    a = d.abs()
    per_pixel = torch.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)
    per_pixel = torch.where(mask, per_pixel, torch.zeros((), dtype=rendered.dtype, device=rendered.device))
    total = per_pixel.sum()
    if normalize == "all":
        return total / rendered.numel()
    return total / mask.sum().clamp(min=1).to(rendered.dtype)
