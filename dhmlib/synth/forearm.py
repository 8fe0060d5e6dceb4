"""The forearm of the virtual capture's colour images.

A hand model ends at the wrist, and a hand cut off there is not what a detector trained on real photos has
seen: on the default capture's held-out images MediaPipe Hands found the hand in 212 of 256 without a forearm
and in 245 with one, and the 4-view photo fit's PA-MPJPE fell from 13.5 to 10.0 mm (README, "Your own hand").
So the images show a forearm: an elliptic tube that starts inside the wrist and runs 26 cm along the arm,
widening a little toward the elbow, coloured like the skin at the wrist, rigid with the root joint.

Only the colour images show it. The depth maps, keypoints, scans and true meshes stay the hand's: they are
the supervision and the truth of a hand model.
"""
from __future__ import annotations

import numpy as np

from dhmlib.hand.handmodel import HandModel

FOREARM_LENGTH_MM = 260.0
#: the tube's widening from the wrist to its far end (× the wrist's half extents)
FOREARM_WIDENING = 0.20
#: the part of the template (mm from its wrist end) whose cross-section sizes the tube
WRIST_BAND_MM = 20.0


def _wrist_band(vertices: np.ndarray) -> np.ndarray:
    """(V,) bool: the template vertices within :data:`WRIST_BAND_MM` of its wrist end (smallest x)."""
    return vertices[:, 0] < vertices[:, 0].min() + WRIST_BAND_MM


def forearm_mesh(hand: HandModel, length: float = FOREARM_LENGTH_MM, segments: int = 32,
                 rings: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """The tube in the hand model's frame (fingers +x, palm +y): (A, 3) vertices mm and (2·segments·(rings − 1), 3)
    faces, wound outward. It starts 10 mm inside the template's wrist end and runs ``length`` mm along −x."""
    v = np.asarray(hand.vertices, dtype=np.float64)
    x0 = v[:, 0].min()
    band = v[_wrist_band(v)]
    cy, cz = band[:, 1].mean(), band[:, 2].mean()
    ry = 0.97 * (band[:, 1].max() - band[:, 1].min()) / 2
    rz = 0.97 * (band[:, 2].max() - band[:, 2].min()) / 2
    x = np.linspace(x0 + 10.0, x0 - length, rings)
    grow = 1 + FOREARM_WIDENING * np.clip((x0 - x) / length, 0, 1)
    th = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring_y = cy + (ry * grow)[:, None] * np.sin(th)[None]                  # (rings, segments)
    ring_z = cz + (rz * grow)[:, None] * np.cos(th)[None]
    verts = np.stack([np.repeat(x, segments), ring_y.ravel(), ring_z.ravel()], -1)
    r, s = np.meshgrid(np.arange(rings - 1), np.arange(segments), indexing="ij")
    a = r * segments + s
    b = r * segments + (s + 1) % segments
    # (a, b, a+seg) and (b, b+seg, a+seg): counter-clockwise seen from outside (x falls from ring to ring,
    # θ turns from +z toward +y)
    faces = np.concatenate([np.stack([a, b, a + segments], -1).reshape(-1, 3),
                            np.stack([b, b + segments, a + segments], -1).reshape(-1, 3)])
    return verts, faces.astype(np.int64)


def forearm_colors(hand: HandModel, skin: np.ndarray, num_vertices: int) -> np.ndarray:
    """(num_vertices, 3) RGB in [0, 1]: the mean of the skin colours ``skin`` (V, 3) over the wrist band."""
    band = _wrist_band(np.asarray(hand.vertices))
    return np.tile(np.asarray(skin, dtype=np.float32)[band].mean(0), (num_vertices, 1))


def forearm_in_world(hand: HandModel, vertices: np.ndarray, root: np.ndarray) -> np.ndarray:
    """The tube (A, 3) of :func:`forearm_mesh` moved rigidly with the root joint placed at ``root`` (4, 4),
    model → world mm (as ``poses.npz``'s ``root``): ``root · global_pose⁻¹[root joint] · v``."""
    T = np.asarray(root, dtype=np.float64) @ hand.global_pose_inv[hand.skeleton.root]
    return vertices @ T[:3, :3].T + T[:3, 3]
