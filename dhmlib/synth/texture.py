"""Per-vertex skin colour of the virtual capture's images: tone, mottling, creases and nails.

Colours live on the template vertices, so the texture moves with the skin.
Everything is computed in the hand model's frame (fingers +x, palm +y) and in
the joints' bind frames (x along the bone, y toward the palm).
"""
from __future__ import annotations

import numpy as np

from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.skeleton import FINGERS, short_name
from dhmlib.mesh.normals import vertex_normals

#: light → dark skin tones (linear RGB in [0, 1]); an identity picks a point between two neighbours
SKIN_TONES = np.array([[0.94, 0.78, 0.67], [0.88, 0.68, 0.55], [0.76, 0.55, 0.42], [0.56, 0.38, 0.27]])
NAIL_RGB = np.array([0.96, 0.80, 0.78])


def _waves(points: np.ndarray, rng: np.random.Generator, wavelength: tuple[float, float], count: int = 12):
    """Smooth random field (V,) of standard deviation ≈ 1 (a sum of random plane waves)."""
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(*wavelength, size=(count, 1)))
    return np.sin(points @ k.T + rng.uniform(0, 2 * np.pi, count)).sum(1) * np.sqrt(2.0 / count)


def skin_colors(hand: HandModel, seed: int) -> np.ndarray:
    """(V, 3) float32 RGB in [0, 1] for the hand's template vertices; deterministic in ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x534B494E]))  # 'SKIN'
    v, sk = hand.vertices, hand.skeleton
    n = vertex_normals(v, hand.faces)
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    base = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[i + 1] * (t - i)
    rgb = np.tile(base, (len(v), 1))
    palm = np.clip(n[:, 1], 0, 1)[:, None] ** 2                      # palm side: lighter, pinker
    rgb = rgb * (1 - 0.18 * palm) + 0.18 * palm * np.minimum(base * [1.08, 1.0, 1.02] + 0.05, 1.0)
    rgb *= (1 + 0.05 * _waves(v, rng, (12.0, 40.0)))[:, None]       # mottling
    rgb[:, 0] *= 1 + 0.03 * _waves(v, rng, (20.0, 60.0))              # redness
    v_h = np.concatenate([v, np.ones((len(v), 1))], 1)
    shade = np.ones(len(v))
    for j, name in enumerate(sk.names):
        s = short_name(name)
        if s.endswith("_null") or s == "wrist" or s == "thumb0":
            continue
        local = v_h @ hand.global_pose_inv[j].T
        x, y, z = local[:, 0], local[:, 1], local[:, 2]
        side = y / np.maximum(np.hypot(y, z), 1e-6)
        near = np.hypot(y, z) < 16.0
        crease = np.exp(-0.5 * (x / 1.6) ** 2) * np.clip(side, 0, 1) * near      # palm-side flexion crease
        knuckle = np.exp(-0.5 * (x / 3.0) ** 2) * np.clip(-side, 0, 1) * near    # dorsal wrinkles
        shade *= (1 - 0.28 * crease) * (1 - 0.08 * knuckle)
    # two palm lines across the palm (model frame: x along the hand, z across, palm +y)
    for x0, slope in ((62.0, 0.25), (48.0, -0.18)):
        d = v[:, 0] - (x0 + slope * v[:, 2])
        shade *= 1 - 0.22 * np.exp(-0.5 * (d / 1.5) ** 2) * (n[:, 1] > 0.5) * (np.abs(v[:, 2]) < 35)
    rgb *= shade[:, None]
    # nails: the back of each distal phalanx, toward the tip
    for f in FINGERS:
        j3, tip = sk.index(f + "3"), sk.index(f + "_null")
        local = v_h @ hand.global_pose_inv[j3].T
        length = np.linalg.norm(hand.global_pose[tip, :3, 3] - hand.global_pose[j3, :3, 3])
        side = local[:, 1] / np.maximum(np.hypot(local[:, 1], local[:, 2]), 1e-6)
        nail = np.clip((local[:, 0] / length - 0.35) * 6, 0, 1) * np.clip((-side - 0.45) * 4, 0, 1)
        nail *= np.hypot(local[:, 1], local[:, 2]) < 14.0
        rgb = rgb * (1 - 0.6 * nail[:, None]) + 0.6 * nail[:, None] * NAIL_RGB
    return np.clip(rgb, 0, 1).astype(np.float32)
