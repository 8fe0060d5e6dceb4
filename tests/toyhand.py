"""A quick, non-watertight hand model for kinematics and decoder tests.

Official 22 joints; vertices scattered around the bones, weights by distance.
It is independent of the procedural hand so that the core maths is tested on
its own.
"""
from __future__ import annotations

import numpy as np

from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.skeleton import OFFICIAL_JOINT_NAMES, Skeleton, short_name


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def toy_hand(num_vertices: int = 2000, seed: int = 0) -> HandModel:
    rng = np.random.default_rng(seed)
    names = OFFICIAL_JOINT_NAMES
    idx = {short_name(n): i for i, n in enumerate(names)}
    parents = [-1] * len(names)
    for f in ("thumb", "index", "middle", "ring", "pinky"):
        chain = ["thumb0", "thumb1", "thumb2", "thumb3", "thumb_null"] if f == "thumb" else \
            [f + "1", f + "2", f + "3", f + "_null"]
        parents[idx[chain[0]]] = idx["wrist"]
        for a, b in zip(chain[:-1], chain[1:]):
            parents[idx[b]] = idx[a]
    G = np.tile(np.eye(4), (len(names), 1, 1))
    base = {"thumb": (20.0, 25.0, 0.6), "index": (95.0, 25.0, 0.1), "middle": (98.0, 7.0, 0.0),
            "ring": (93.0, -11.0, -0.08), "pinky": (84.0, -28.0, -0.16)}
    for f, (x0, z0, ang) in base.items():
        chain = ["thumb0", "thumb1", "thumb2", "thumb3", "thumb_null"] if f == "thumb" else \
            [f + "1", f + "2", f + "3", f + "_null"]
        Rf = np.array([[np.cos(ang), 0, -np.sin(ang)], [0, 1, 0], [np.sin(ang), 0, np.cos(ang)]])
        p = np.array([x0, 0.0, z0])
        for k, j in enumerate(chain):
            G[idx[j], :3, :3] = Rf @ _rot_z(0.05 * k)
            G[idx[j], :3, 3] = p
            p = p + G[idx[j], :3, :3] @ np.array([30.0 - 4 * k, 0, 0])
    local = np.empty_like(G)
    for j, p in enumerate(parents):
        local[j] = G[j] if p < 0 else np.linalg.inv(G[p]) @ G[j]
    # re-derive global from local so that global == FK(local) to rounding
    sk = Skeleton(tuple(names), tuple(parents))
    for level in sk.levels:
        for j in level:
            G[j] = local[j] if parents[j] < 0 else G[parents[j]] @ local[j]
    # vertices around bone segments (joint → child)
    bones = [(j, c) for c, j in enumerate(parents) if j >= 0]
    pick = rng.integers(len(bones), size=num_vertices)
    t = rng.random(num_vertices)
    a = G[[bones[i][0] for i in pick], :3, 3]
    b = G[[bones[i][1] for i in pick], :3, 3]
    verts = a + t[:, None] * (b - a) + rng.normal(scale=6.0, size=(num_vertices, 3))
    pos = G[:, :3, 3]
    d = np.linalg.norm(verts[:, None] - pos[None], axis=-1)
    W = np.exp(-(d / 15.0) ** 2)
    W[:, [idx[n] for n in ("thumb_null", "index_null", "middle_null", "ring_null", "pinky_null")]] = 0
    W[W < 1e-3 * W.max(1, keepdims=True)] = 0
    W /= W.sum(1, keepdims=True)
    faces = rng.integers(num_vertices, size=(num_vertices, 3))
    return HandModel(verts, faces, rng.random((num_vertices, 2)), faces.copy(), sk, W, local, G,
                     np.linalg.inv(G))
