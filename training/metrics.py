"""Alpha-matte quality metrics logged by stage 1 (and usable on decoded stage-2 masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import sobel


def alpha_mae(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred.float() - target.float()).abs().mean())


def gradient_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean | |grad pred| - |grad target| | over pixels (Sobel magnitudes)."""
    px, py = sobel(pred)
    tx, ty = sobel(target)
    return float(((px ** 2 + py ** 2).sqrt() - (tx ** 2 + ty ** 2).sqrt()).abs().mean())


def _boundary(binary: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) {0,1} -> pixels whose 3x3 neighbourhood is not uniform."""
    dilated = F.max_pool2d(binary, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-binary, 3, stride=1, padding=1)
    return (dilated - eroded) > 0


def boundary_f_score(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, tolerance: int = 1) -> float:
    """F-measure of boundary pixels of the thresholded mattes, matched within `tolerance` pixels
    (the DAVIS contour measure, all frames pooled). Both empty -> 1."""
    p = (pred.float().transpose(1, 2).flatten(0, 1) > threshold).float()
    t = (target.float().transpose(1, 2).flatten(0, 1) > threshold).float()
    bp, bt = _boundary(p), _boundary(t)
    size = 2 * tolerance + 1
    near_t = F.max_pool2d(bt.float(), size, stride=1, padding=tolerance) > 0
    near_p = F.max_pool2d(bp.float(), size, stride=1, padding=tolerance) > 0
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    precision = float((bp & near_t).sum()) / max(1, n_p)
    recall = float((bt & near_p).sum()) / max(1, n_t)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def alpha_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return {
            "alpha_mae": alpha_mae(pred, target),
            "boundary_f": boundary_f_score(pred, target),
            "grad_error": gradient_error(pred, target),
        }
