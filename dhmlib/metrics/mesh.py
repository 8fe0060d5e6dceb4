"""Mesh metrics of the evaluation: error near flexed joints, interpenetration of parts, smoothness.

All lengths mm, angles degrees unless said otherwise. Used by :func:`dhmlib.evaluation.result.evaluate` (flat
summary keys) and on their own for poses without observations (:func:`penetration_at_poses`).

**Near flexed joints** (:func:`near_joint_regions`, :func:`near_flexed_mask`). A joint ``j``'s flexion
in a frame is the rotation angle of its local rotation ``R(euler_j)`` away from the bind pose,
``arccos((tr R − 1) / 2)`` (:func:`joint_flexion_deg`; for the 1-DoF ``*2``/``*3`` joints this is
``|flex|``; the root has no angles). Joint ``j`` is *flexed* when that angle exceeds
:data:`FLEXED_DEG` (30°). The region *around* joint ``j`` is fixed on the template: the vertices whose
skinning weight to ``j`` or to its parent exceeds :data:`NEAR_WEIGHT` (0.3) **and** that lie within
:data:`NEAR_JOINT_MM` (15 mm) of ``j``'s bind position (the skin on both sides of the joint, where
skinning blends and where the flexion bulges and folds sit). A vertex is *near a flexed joint* in a
frame when it lies in the region of at least one joint flexed in that frame. The angles are the
virtual capture's true ones.

**Penetration between non-adjacent parts** (:func:`penetration`). The mesh is cut into parts by
dominant skinning joint (:attr:`~dhmlib.hand.handmodel.HandModel.segmentation`). Two parts are adjacent
when a mesh edge joins them or their joints are parent and child (and a part is adjacent to itself);
``N(A)`` are the parts not adjacent to ``A`` and ``S(A)`` the faces whose three vertices all lie in
``N(A)``: the closed hand surface with a hole where ``A`` and its neighbours are. A vertex ``x`` of part
``A`` *penetrates* when it lies behind ``S(A)``: with ``q`` the nearest point of ``S(A)`` and ``d = |x − q|``,
``(x − q)·n < 0`` for the pseudonormal ``n`` at ``q`` (the face normal; the sum of the two face normals
on an edge, of the fan's normals at a vertex: the sign test of a signed distance, exact for a closed
surface); its *depth* is ``d``. Where ``q`` lies on a face touching the hole's rim the side is undefined
and the vertex is not counted. Self-intersection of adjacent parts (the fold inside a strongly flexed
joint) is not counted. Only candidates are tested: a vertex outside the bounding box (+1 mm) of every
part of ``N(A)`` is outside. :func:`winding_numbers` (generalized winding number of ``S(A)`` > 0.5:
1 inside a closed surface, 0 outside) is the slower independent reference the tests compare with.

**Smoothness** (:func:`laplacian_norm`): mean over vertices of ``‖(L x)_i‖`` with ``L`` the uniform
Laplacian (:class:`dhmlib.losses.laplacian.MeshLaplacian`, ``x_i`` minus the mean of its
neighbours), mm; its ratio to the true mesh's (1.0: as smooth as the truth, > 1 rougher).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
import torch

from dhmlib.hand.anatomy import GESTURES, gesture_euler, natural_range, random_plausible_pose
from dhmlib.hand.kinematics import euler_to_matrix
from dhmlib.hand.skeleton import FINGERS, official_skeleton
from dhmlib.losses.laplacian import MeshLaplacian
from dhmlib.mesh.distance import point_triangle_distance

#: a joint is flexed above this angle from the bind pose, degrees
FLEXED_DEG = 30.0
#: skinning weight (to the joint or its parent) that puts a vertex in a joint's region
NEAR_WEIGHT = 0.3
#: radius of a joint's region around its bind position, mm
NEAR_JOINT_MM = 15.0
#: winding number above which a vertex is inside the other parts
INSIDE_WINDING = 0.5
#: faces (nearest centroids) examined per point by :func:`signed_to_surface`
SIGN_K = 16
#: padding of the parts' bounding boxes in the cheap candidate test, mm
BOX_PAD_MM = 1.0
#: point × face pairs per chunk of the winding number
CHUNK_PAIRS = 2_000_000


def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------- near flexed joints
def joint_flexion_deg(euler) -> np.ndarray:
    """(B, J) rotation angle of each joint's local rotation from the bind pose, degrees.

    ``euler`` (B, J, 3) radians (``R = Rz·Ry·Rx``); the angle is ``arccos((tr R − 1)/2)``.
    """
    e = torch.as_tensor(_np(euler))
    if e.ndim != 3 or e.shape[-1] != 3:
        raise ValueError(f"joint_flexion_deg: euler must be (B, J, 3) radians, got {tuple(e.shape)}")
    R = euler_to_matrix(e)
    c = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return np.degrees(torch.arccos(c).numpy())


def near_joint_regions(hand, weight: float = NEAR_WEIGHT, radius_mm: float = NEAR_JOINT_MM) -> np.ndarray:
    """(J, V) bool: the template vertices around each joint (see the module docstring); the root's row is empty.

    ``hand``: a :class:`~dhmlib.hand.handmodel.HandModel` (skinning weights, skeleton, bind joints).
    """
    w = np.asarray(hand.skinning_weights)
    v = np.asarray(hand.vertices)
    joints = np.asarray(hand.bind_joints)
    parents = hand.skeleton.parents
    out = np.zeros((len(parents), len(v)), dtype=bool)
    for j, p in enumerate(parents):
        if p < 0:
            continue
        close = np.linalg.norm(v - joints[j], axis=1) < radius_mm
        out[j] = close & ((w[:, j] > weight) | (w[:, p] > weight))
    return out


def near_flexed_mask(euler, regions: np.ndarray, threshold_deg: float = FLEXED_DEG) -> np.ndarray:
    """(B, V) bool: vertices in the region (``regions`` (J, V)) of a joint flexed above ``threshold_deg``.

    ``euler`` (B, J, 3) radians, the frames' (true) angles.
    """
    flexed = joint_flexion_deg(euler) > threshold_deg                    # (B, J)
    if flexed.shape[1] != regions.shape[0]:
        raise ValueError(f"near_flexed_mask: {flexed.shape[1]} joints in euler but {regions.shape[0]} regions")
    return (flexed.astype(np.float32) @ regions.astype(np.float32)) > 0


def near_flexed_error(error, mask, percentile: float = 95.0) -> dict:
    """Per-vertex error statistics on the masked vertices and on the others.

    Args:
        error: (B, V) per-vertex error, mm.  mask: (B, V) bool (:func:`near_flexed_mask`).
    Returns:
        ``near_flexed_mean``, ``near_flexed_p95`` (mm, over all masked (frame, vertex) pairs; None when none),
        ``near_flexed_count`` (masked pairs), ``near_flexed_fraction`` (of all pairs) and
        ``not_near_flexed_mean`` (mm, the rest).
    """
    e, m = _np(error), np.asarray(mask, dtype=bool)
    if e.shape != m.shape:
        raise ValueError(f"near_flexed_error: error {e.shape} and mask {m.shape} differ")
    tag = f"p{percentile:g}"
    near, far = e[m], e[~m]
    return {"near_flexed_mean": float(near.mean()) if near.size else None,
            f"near_flexed_{tag}": float(np.percentile(near, percentile)) if near.size else None,
            "near_flexed_count": int(m.sum()), "near_flexed_fraction": float(m.mean()) if m.size else 0.0,
            "not_near_flexed_mean": float(far.mean()) if far.size else None}


# --------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Parts:
    """A cut of a mesh into parts.

    Attributes:
        labels: (V,) part of each vertex (0 … P−1).
        adjacent: (P, P) bool, symmetric, True on the diagonal.
        faces: (F, 3) the mesh's faces.
    """

    labels: np.ndarray
    adjacent: np.ndarray
    faces: np.ndarray

    @property
    def num_parts(self) -> int:
        return len(self.adjacent)

    def other_faces(self, part: int) -> np.ndarray:
        """(F,) bool: faces whose three vertices lie in parts not adjacent to ``part`` (``S(A)``)."""
        far = ~self.adjacent[part]
        return far[self.labels[self.faces]].all(1)


def mesh_parts(labels, faces, num_parts: int | None = None, extra_pairs=()) -> Parts:
    """Parts with the mesh adjacency: parts joined by an edge (and ``extra_pairs``) are adjacent."""
    labels = np.asarray(labels, dtype=np.int64)
    faces = np.asarray(faces, dtype=np.int64)
    P = int(num_parts if num_parts is not None else labels.max() + 1)
    adj = np.eye(P, dtype=bool)
    lf = labels[faces]
    for a, b in ((0, 1), (1, 2), (2, 0)):
        adj[lf[:, a], lf[:, b]] = True
    for a, b in extra_pairs:
        adj[a, b] = True
    adj |= adj.T
    return Parts(labels, adj, faces)


def hand_parts(hand) -> Parts:
    """The hand's parts: dominant skinning joint; adjacent = joined by a mesh edge or parent/child joints."""
    pairs = [(j, p) for j, p in enumerate(hand.skeleton.parents) if p >= 0]
    return mesh_parts(hand.segmentation, hand.faces, hand.num_joints, pairs)


# --------------------------------------------------------------------------- penetration
def winding_numbers(points, triangles, chunk_pairs: int = CHUNK_PAIRS) -> torch.Tensor:
    """Generalized winding number of a triangle soup at points: Σ solid angles / 4π.

    Args:
        points: (N, 3).  triangles: (F, 3, 3), counter-clockwise seen from outside.
    Returns:
        (N,) float64: 1 inside a closed outward-oriented surface, 0 outside, 0.5 on it.
    """
    p = torch.as_tensor(_np(points)).reshape(-1, 3)
    t = torch.as_tensor(_np(triangles)).reshape(-1, 3, 3)
    out = torch.zeros(len(p), dtype=torch.float64)
    if len(t) == 0 or len(p) == 0:
        return out
    step = max(1, chunk_pairs // len(t))
    for s in range(0, len(p), step):
        d = t[None] - p[s:s + step, None, None]                    # (n, F, 3, 3)
        a, b, c = d.unbind(2)
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (a * c).sum(-1) * lb + (b * c).sum(-1) * la
        out[s:s + step] = torch.atan2(det, den).sum(-1) / (2 * np.pi)   # Ω = 2 atan2(...), w = Σ Ω / 4π
    return out


def _rim(faces: np.ndarray) -> np.ndarray:
    """(F,) bool: faces touching a boundary vertex (a vertex of an edge used by one face only)."""
    if len(faces) == 0:
        return np.zeros(0, dtype=bool)
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    n = int(faces.max()) + 1
    uniq, count = np.unique(e[:, 0] * n + e[:, 1], return_counts=True)
    border = np.zeros(n, dtype=bool)
    once = uniq[count == 1]
    border[once // n] = True
    border[once % n] = True
    return border[faces].any(1)


def signed_to_surface(points, vertices, faces, k: int = SIGN_K, rim=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance to a triangle surface, which side of it, and whether the nearest point is at its rim.

    The nearest of the ``k`` faces whose centroids are nearest (exact point-triangle distances) gives the
    distance ``d``; the faces within ``d (1 + 1e-6)`` of the point share the nearest point ``q`` (one face,
    the faces of an edge or of a vertex), and ``Σ n̂_f · (x − a_f)`` over them (``a_f`` a corner, which equals
    ``(x − q)·Σ n̂_f`` because ``q`` lies in each plane) is the side: negative = behind the surface
    (inside a closed outward surface). With the edge pseudonormal this is exact for edges; for vertices it
    uses the unweighted normal sum (exact for symmetric fans).

    Args:
        points: (N, 3).  vertices: (V, 3).  faces: (F, 3) counter-clockwise seen from outside.
    Returns:
        distance (N,) mm, inside (N,) bool, at_rim (N,) bool (the nearest face touches the open surface's
        boundary, where the side is not defined).  ``rim``: (F,) precomputed :func:`_rim` of ``faces``.
    """
    p = _np(points).reshape(-1, 3)
    tri = _np(vertices)[faces]                                             # (F, 3, 3)
    k = min(k, len(tri))
    _, idx = cKDTree(tri.mean(1)).query(p, k=k)
    idx = idx.reshape(len(p), k)
    t = tri[idx]                                                           # (N, k, 3, 3)
    d = point_triangle_distance(p[:, None], t[..., 0, :], t[..., 1, :], t[..., 2, :])     # (N, k)
    best = d.min(1)
    tie = d <= best[:, None] * (1 + 1e-6) + 1e-9
    n = np.cross(t[..., 1, :] - t[..., 0, :], t[..., 2, :] - t[..., 0, :])
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-300)
    side = np.where(tie, (n * (p[:, None] - t[..., 0, :])).sum(-1), 0.0).sum(1)
    rim = ((_rim(np.asarray(faces)) if rim is None else rim)[idx] & tie).any(1)
    return best, side < 0, rim


def penetration_depths(vertices, parts: Parts) -> np.ndarray:
    """(B, V) penetration depth of each vertex into the non-adjacent parts, mm (0: not penetrating).

    See the module docstring for the definition. ``vertices`` (B, V, 3) or (V, 3) mm.
    """
    verts = _np(vertices)
    squeeze = verts.ndim == 2
    if squeeze:
        verts = verts[None]
    B, V, _ = verts.shape
    if V != len(parts.labels):
        raise ValueError(f"penetration: {V} vertices but the parts label {len(parts.labels)}")
    faces = parts.faces
    present = np.unique(parts.labels)
    groups = {a: np.nonzero(parts.labels == a)[0] for a in present}
    other_faces = {a: faces[parts.other_faces(a)] for a in present}
    rims = {a: _rim(f) for a, f in other_faces.items()}
    far = ~parts.adjacent[parts.labels][:, present]                         # (V, P') other part not adjacent
    out = np.zeros((B, V))
    for b in range(B):
        v = verts[b]
        # cheap bounding test: a vertex can only be inside a non-adjacent part whose box (+1 mm) holds it
        lo = np.stack([v[groups[a]].min(0) for a in present]) - BOX_PAD_MM     # (P', 3)
        hi = np.stack([v[groups[a]].max(0) for a in present]) + BOX_PAD_MM
        inbox = ((v[:, None] >= lo) & (v[:, None] <= hi)).all(-1)               # (V, P')
        cand = (inbox & far).any(1)
        for a in present:
            f_n = other_faces[a]
            idx = groups[a][cand[groups[a]]]
            if len(f_n) == 0 or len(idx) == 0:
                continue
            d, inside, rim = signed_to_surface(v[idx], v, f_n, rim=rims[a])
            out[b, idx] = np.where(inside & ~rim, d, 0.0)
    return out[0] if squeeze else out


def penetration_summary(depth) -> dict:
    """``penetration_depth_mean`` (mm, over penetrating vertices; 0 when none), ``penetration_depth_max``
    (mm), ``penetration_fraction`` (penetrating (frame, vertex) pairs / all) and ``penetration_count``."""
    d = _np(depth)
    pen = d[d > 0]
    return {"penetration_depth_mean": float(pen.mean()) if pen.size else 0.0,
            "penetration_depth_max": float(pen.max()) if pen.size else 0.0,
            "penetration_fraction": float(pen.size / d.size) if d.size else 0.0,
            "penetration_count": int(pen.size)}


def penetration(vertices, parts: Parts) -> dict:
    """:func:`penetration_summary` of :func:`penetration_depths`, plus ``per_frame`` depth means and fractions."""
    d = penetration_depths(vertices, parts)
    d = d[None] if d.ndim == 1 else d
    s = penetration_summary(d)
    cnt = (d > 0).sum(1)
    s["per_frame"] = {"penetration_depth_mean": [float(d[i][d[i] > 0].mean()) if cnt[i] else 0.0 for i in range(len(d))],
                      "penetration_fraction": [float(c / d.shape[1]) for c in cnt]}
    return s


# --------------------------------------------------------------------------- smoothness
def laplacian_norm(vertices, faces) -> np.ndarray:
    """(B,) mean over vertices of ‖(L x)_i‖, mm (uniform Laplacian of :mod:`dhmlib.losses.laplacian`)."""
    v = torch.as_tensor(_np(vertices))
    v = v[None] if v.ndim == 2 else v
    L = MeshLaplacian(torch.as_tensor(np.asarray(faces, dtype=np.int64)), v.shape[1], torch.float64)
    return L(v).norm(dim=-1).mean(1).numpy()


def smoothness(pred, faces, gt=None, gt_faces=None) -> dict:
    """``smoothness_laplacian`` (mm, mean over frames of :func:`laplacian_norm` of ``pred``) and, with the true
    meshes ``gt``, ``smoothness_laplacian_gt`` (mm) and ``smoothness_ratio`` (pred / gt, 1.0 = as smooth)."""
    lp = laplacian_norm(pred, faces)
    out = {"smoothness_laplacian": float(lp.mean())}
    per = {"smoothness_laplacian": lp.tolist()}
    if gt is not None:
        lg = laplacian_norm(gt, faces if gt_faces is None else gt_faces)
        out["smoothness_laplacian_gt"] = float(lg.mean())
        out["smoothness_ratio"] = float(lp.mean() / lg.mean()) if lg.mean() > 0 else None
        per["smoothness_ratio"] = (lp / np.maximum(lg, 1e-12)).tolist()
    out["per_frame"] = per
    return out


# --------------------------------------------------------------------------- poses without observations
def fist_like_poses(n: int = 16, seed: int = 0, skeleton=None) -> np.ndarray:
    """(n, J, 3) radians: the fist-type gestures, then strongly flexed random plausible poses.

    The gestures of :data:`dhmlib.hand.anatomy.GESTURES` whose four fingers are all flexed ≥ 60° at the MCP
    (``fist``, ``point`` has the index straight so it is not, ``thumbs_up``) come first; the rest are
    :func:`~dhmlib.hand.anatomy.random_plausible_pose` draws (``seed``) with every finger's and the thumb's flexion
    (z) redrawn in the upper 60–100 % of its natural range (DIP following PIP as in the capture).
    """
    sk = skeleton or official_skeleton()
    fingers = FINGERS[1:]
    fist = []
    for name in GESTURES:
        e = gesture_euler(name, sk)
        if all(np.degrees(e[sk.index(f + "1"), 2]) >= 60 for f in fingers):
            fist.append(e)
    rng = np.random.default_rng(seed)
    lo, hi = natural_range(sk)
    flex = [sk.index(f + s) for f in fingers for s in ("1", "2", "3")] + \
           [sk.index(t) for t in ("thumb1", "thumb2", "thumb3")]
    out = fist[:n]
    while len(out) < n:
        e = random_plausible_pose(sk, rng)
        u = rng.uniform(0.6, 1.0, size=len(flex))
        e[flex, 2] = lo[flex, 2] + u * (hi[flex, 2] - lo[flex, 2])
        out.append(e)
    return np.stack(out[:n]).astype(np.float64)


def penetration_at_poses(model, euler, root=None, parts: Parts | None = None, correctives=None) -> dict:
    """Penetration statistics of a model's meshes at given poses (no observations needed).

    Args:
        model: a :class:`~dhmlib.network.model.DeepHandMesh` (decoded with its configured correctives, or ``correctives``).
        euler: (P, J, 3) radians (e.g. :func:`fist_like_poses`).  root: (P, 4, 4) or (4, 4) mm, or None.
        parts: default :func:`hand_parts` of the model's hand model.
    Returns:
        :func:`penetration` of the decoded meshes (``penetration_depth_mean``, ``penetration_depth_max``,
        ``penetration_fraction``, ``penetration_count``, ``per_frame``) plus ``poses`` = P.
    """
    hand = model.hand
    dtype, dev = hand.template.dtype, hand.template.device
    e = torch.as_tensor(_np(euler), dtype=dtype, device=dev)
    r = None if root is None else torch.as_tensor(_np(root), dtype=dtype, device=dev)
    with torch.no_grad():
        v = model.decode(e, r, correctives=correctives).vertices
    if parts is None:
        parts = _parts_of(model)
    s = penetration(v, parts)
    s["poses"] = int(len(e))
    return s


def _parts_of(model) -> Parts:
    """:func:`hand_parts` of the model's hand model (``model.hand.hand_model``)."""
    return hand_parts(model.hand.hand_model)
