"""The slow, obviously correct twin of :func:`dhmlib.render.rasterize` (tests only).

Same call shape and conventions (see :mod:`dhmlib.render.rasterize`). Loops over
images, pixels and faces in Python: use it on tiny images (≲ 16², ≲ 50 faces).
"""
from __future__ import annotations

import torch

from dhmlib.render.rasterize import RasterOutput


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def rasterize_reference(height: int, width: int, face_vertices_z: torch.Tensor, face_vertices_image: torch.Tensor,
                        face_features: torch.Tensor, valid_faces: torch.Tensor | None = None,
                        perspective_correct: bool = True) -> RasterOutput:
    """Per pixel: test every face, keep the nearest, interpolate its features.

    Args / returns: as :func:`dhmlib.render.rasterize` (features (B, F, 3, D) only).
    A pixel centre is covered when all three barycentrics are ≥ 0. The nearest face
    (ties: the larger face index, as the fast backend) has the smallest depth ``−z``: exact perspective depth ``1 / Σ w_k / (−z_k)`` when
    ``perspective_correct``, else the screen-space interpolated ``z`` (largest wins).
    """
    B, F = face_vertices_z.shape[:2]
    D = face_features.shape[-1]
    rows = []
    idx = torch.full((B, height, width), -1, dtype=torch.long)
    for b in range(B):
        for i in range(height):
            for j in range(width):
                px = (2 * j + 1) / width - 1
                py = 1 - (2 * i + 1) / height
                best, best_val, best_w = -1, None, None
                for f in range(F):
                    if valid_faces is not None and not bool(valid_faces[b, f]):
                        continue
                    z = face_vertices_z[b, f]
                    if perspective_correct and not bool((z < 0).all()):
                        continue
                    v = face_vertices_image[b, f]
                    area = _cross(v[1, 0] - v[0, 0], v[1, 1] - v[0, 1], v[2, 0] - v[0, 0], v[2, 1] - v[0, 1])
                    if float(area.detach()) == 0:
                        continue
                    w = torch.stack([
                        _cross(v[1, 0] - px, v[1, 1] - py, v[2, 0] - px, v[2, 1] - py),
                        _cross(v[2, 0] - px, v[2, 1] - py, v[0, 0] - px, v[0, 1] - py),
                        _cross(v[0, 0] - px, v[0, 1] - py, v[1, 0] - px, v[1, 1] - py),
                    ]) / area
                    if not bool((w >= 0).all()):
                        continue
                    if perspective_correct:
                        val = -1.0 / (w / (-z)).sum()  # −depth: larger is nearer
                    else:
                        val = (w * z).sum()
                    if best_val is None or float(val.detach()) >= float(best_val.detach()):  # ties: larger f
                        best, best_val, best_w = f, val, w
                if best < 0:
                    rows.append(torch.zeros(D, dtype=face_features.dtype))
                    continue
                idx[b, i, j] = best
                w = best_w
                if perspective_correct:
                    w = w / (-face_vertices_z[b, best])
                    w = w / w.sum()
                rows.append((w.unsqueeze(-1) * face_features[b, best]).sum(0))
    return RasterOutput(torch.stack(rows).reshape(B, height, width, D), idx)
