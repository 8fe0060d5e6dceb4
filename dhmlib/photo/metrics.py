"""The photo-fit protocol of the field (FreiHAND): Procrustes-aligned joint and vertex errors and F-scores.

- PA-MPJPE / PA-MPVPE: mean Euclidean distance (mm) after the similarity transform (rotation, translation,
  one scale: Umeyama) that best aligns the prediction to the truth, joints and vertices aligned separately;
- F@d: the harmonic mean of precision (the fraction of predicted vertices within d mm of a true vertex) and
  recall (the converse), on the aligned vertices (nearest neighbours over the vertex sets).
"""
from __future__ import annotations

import numpy as np


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` (N, 3) after the similarity transform aligning it to ``gt`` (N, 3) best (least squares)."""
    mp, mg = pred.mean(0), gt.mean(0)
    x, y = pred - mp, gt - mg
    U, S, Vt = np.linalg.svd(x.T @ y)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt                           # x @ R ≈ y
    s = float((S * np.diag(D)).sum() / (x * x).sum())
    return s * x @ R + mg


def pa_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean distance (mm) of ``pred`` (N, 3) to ``gt`` (N, 3) after Procrustes alignment."""
    return float(np.linalg.norm(procrustes_align(pred, gt) - gt, axis=-1).mean())


def f_score(pred: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """FreiHAND's F-score at ``threshold`` mm between two point sets (already aligned)."""
    from scipy.spatial import cKDTree

    d_pg = cKDTree(gt).query(pred)[0]
    d_gp = cKDTree(pred).query(gt)[0]
    p, r = float((d_pg < threshold).mean()), float((d_gp < threshold).mean())
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def pose_metrics(pred_joints, gt_joints, pred_vertices, gt_vertices, thresholds=(5.0, 15.0)) -> dict:
    """PA-MPJPE, PA-MPVPE (mm) and F@thresholds of one hand: joints (N, 3) (valid ones only), vertices (V, 3)."""
    aligned = procrustes_align(pred_vertices, gt_vertices)
    out = {"pa_mpjpe_mm": pa_error(pred_joints, gt_joints),
           "pa_mpvpe_mm": float(np.linalg.norm(aligned - gt_vertices, axis=-1).mean())}
    for t in thresholds:
        out[f"f@{t:g}mm"] = f_score(aligned, gt_vertices, t)
    return out
