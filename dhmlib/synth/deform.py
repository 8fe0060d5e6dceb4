"""Ground-truth deformation of the virtual capture: more than the hand model can express.

The captured ("true") surface of a subject in a pose is

0. the template's skeleton with **per-identity bone lengths**: each bone (from a
   joint's parent to the joint, tips excepted) scaled by ``1 ± bone_length_jitter``
   (a per-finger factor plus a per-bone part, from the identity seed), i.e.
   offsets of the local bind translations — exactly what the network's skeleton
   corrective can express, so it has something to learn; the skin follows the
   bones through the skinning below;
1. the template plus a **per-identity surface shape**: a smooth, low-frequency
   offset along the rest normals, ``δ_id(v) = a · (1 + tanh g(v)) / 2`` with
   ``g`` a sum of random plane waves (wavelengths 30–70 mm) drawn from the
   identity seed. It is non-negative (flesh is added, never carved) so joints
   stay inside the skin;
2. plus **flexion bulges**, in the rest pose along the rest normals: for each
   flexing joint ``j`` with flexion ``θ_j > 0`` (its Euler z),
   ``δ_flex(v) = Σ_j θ_j · loc_j(v) · (b_in · relu(s)² + b_out · relu(−s)²)``
   where ``s = y/ρ`` is the side of the bone in the joint's bind frame (+1 palm
   side, where flexion folds the skin; −1 the knuckle) and ``loc_j`` is a
   Gaussian band around the joint along the bone, limited to the finger's
   cylinder and weighted by the skinning weights of ``j`` and its parent;
3. posed by **dual-quaternion skinning** (Kavan et al.) with the hand model's
   own bind poses and weights, i.e. the same joints as the model's FK.

At the bind pose (all angles 0) with the identity shape and bone lengths off, this is exactly
the template: DQS equals LBS for equal transforms and the bulges vanish. In any
flexed pose LBS of the template cannot match it, which is what the correctives
of the network have to learn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from ..handmodel import HandModel
from ..kinematics import linear_blend_skinning
from ..model import HandLayer
from .meshops import vertex_normals


@dataclass(frozen=True)
class DeformParams:
    """Strength of the effects LBS cannot express (mm; per radian of flexion for the bulges)."""

    identity_amplitude_mm: float = 1.6
    identity_wavelength_mm: tuple[float, float] = (30.0, 70.0)
    identity_waves: int = 16
    bulge_inside_mm_per_rad: float = 3.0
    bulge_outside_mm_per_rad: float = 1.2
    bulge_band: float = 0.7          # σ of the band along the bone, in finger radii
    bone_length_jitter: float = 0.04  # relative, per identity (tips excepted)
    dual_quaternion: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identity_wavelength_mm"] = list(self.identity_wavelength_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DeformParams":
        """Inverse of :meth:`to_dict`. A pose effect whose fields are all missing (a capture written
        before the effect existed) is switched off (its fields 0), not given today's defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"deform params: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
        out = dict(d)
        for names in POSE_EFFECTS.values():
            if not any(n in d for n in names):
                out.update({n: 0.0 for n in names})
        if "identity_wavelength_mm" in out:
            out["identity_wavelength_mm"] = tuple(out["identity_wavelength_mm"])
        return cls(**out)

    def without(self, *effects: str) -> "DeformParams":
        """These params with pose effects (keys of :data:`POSE_EFFECTS`) switched off (their fields 0)."""
        bad = [e for e in effects if e not in POSE_EFFECTS]
        if bad:
            raise KeyError(f"unknown pose effect(s) {bad}; expected some of {list(POSE_EFFECTS)}")
        return replace(self, **{n: 0.0 for e in effects for n in POSE_EFFECTS[e]})


#: The pose-dependent effects of the ground truth and the :class:`DeformParams` fields that scale
#: each (all 0: the effect is off). Each adds a rest-frame offset before skinning that is zero at
#: the bind pose.
POSE_EFFECTS: dict[str, tuple[str, ...]] = {
    "flexion_bulge": ("bulge_inside_mm_per_rad", "bulge_outside_mm_per_rad"),
}


# --------------------------------------------------------------------------- quaternions
def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) → unit quaternions (..., 4) ``(w, x, y, z)`` (Shepperd's method)."""
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    t = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    a, b, c = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    d, e, f = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    cand = torch.stack([
        torch.stack([t[..., 0], a, b, c], -1),
        torch.stack([a, t[..., 1], d, e], -1),
        torch.stack([b, d, t[..., 2], f], -1),
        torch.stack([c, e, f, t[..., 3]], -1),
    ], -2)  # (..., 4 candidates, 4); candidate k is 2·sqrt(t_k)·q
    k = t.argmax(-1, keepdim=True)
    q = torch.gather(cand, -2, k.unsqueeze(-1).expand(k.shape[:-1] + (1, 4))).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0)


def quaternion_multiply(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (..., 4) ``(w, x, y, z)`` quaternions."""
    pw, pv = p[..., :1], p[..., 1:]
    qw, qv = q[..., :1], q[..., 1:]
    w = pw * qw - (pv * qv).sum(-1, keepdim=True)
    v = pw * qv + qw * pv + torch.linalg.cross(pv, qv, dim=-1)
    return torch.cat([w, v], -1)


def dual_quaternion_skinning(vertices: torch.Tensor, weight_index: torch.Tensor, weight_value: torch.Tensor,
                             transforms: torch.Tensor) -> torch.Tensor:
    """Dual-quaternion skinning with sparse weights.

    Args:
        vertices: (V, 3) or (B, V, 3) rest vertices, mm.
        weight_index: (V, K) joint indices, the largest weight first (the sign pivot).
        weight_value: (V, K) weights (rows sum to 1).
        transforms: (B, J, 3, 4) rigid bind-relative transforms ``G @ G_bind⁻¹`` (mm).
    Returns:
        (B, V, 3) posed vertices, mm.
    """
    R, t = transforms[..., :3], transforms[..., 3]
    qr = matrix_to_quaternion(R)                                                  # (B, J, 4)
    qd = 0.5 * quaternion_multiply(torch.cat([torch.zeros_like(t[..., :1]), t], -1), qr)
    gr, gd = qr[:, weight_index], qd[:, weight_index]                             # (B, V, K, 4)
    sign = torch.where((gr * gr[:, :, :1]).sum(-1) < 0, -1.0, 1.0).to(gr.dtype)    # antipodality
    w = (weight_value.to(gr.dtype) * sign).unsqueeze(-1)
    br, bd = (w * gr).sum(2), (w * gd).sum(2)                                     # (B, V, 4)
    n = br.norm(dim=-1, keepdim=True)
    br, bd = br / n, bd / n
    rw, rv = br[..., :1], br[..., 1:]
    dw, dv = bd[..., :1], bd[..., 1:]
    v = vertices if vertices.dim() == 3 else vertices.unsqueeze(0)
    rotated = v + 2 * torch.linalg.cross(rv, torch.linalg.cross(rv, v, dim=-1) + rw * v, dim=-1)
    trans = 2 * (rw * dv - dw * rv + torch.linalg.cross(rv, dv, dim=-1))
    return rotated + trans


# --------------------------------------------------------------------------- static fields
def identity_offsets(vertices: np.ndarray, normals: np.ndarray, seed: int, params: DeformParams) -> np.ndarray:
    """Per-identity surface shape: (V, 3) offsets along the rest normals, in ``[0, amplitude]`` mm."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x53484150]))  # 'SHAP'
    K = params.identity_waves
    d = rng.normal(size=(K, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(*params.identity_wavelength_mm, size=(K, 1)))
    g = np.sin(vertices @ k.T + rng.uniform(0, 2 * np.pi, size=K)).sum(1) * np.sqrt(2.0 / K)  # std ≈ 1
    return (params.identity_amplitude_mm * 0.5 * (1 + np.tanh(1.2 * g)))[:, None] * normals


def identity_bone_offsets(hand: HandModel, seed: int, params: DeformParams) -> np.ndarray:
    """Per-identity bone lengths as (J, 3) offsets of the local bind translations, mm.

    Bone ``parent → j`` is scaled by ``1 + a·clip(0.7·u_finger + 0.3·u_bone, −1, 1)`` with
    ``a = bone_length_jitter`` and ``u`` uniform in [−1, 1]; the root and the ``_null``
    (tip) joints keep theirs, so the tips stay inside the skin.
    """
    sk = hand.skeleton
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x424F4E45]))  # 'BONE'
    fingers = sorted({sk.finger_of(j) or "" for j in range(sk.num_joints)})
    u_finger = dict(zip(fingers, rng.uniform(-1, 1, size=len(fingers))))
    u_bone = rng.uniform(-1, 1, size=sk.num_joints)
    scale = np.array([0.0 if sk.parents[j] < 0 or sk.short_names[j].endswith("_null") else
                      params.bone_length_jitter * np.clip(0.7 * u_finger[sk.finger_of(j) or ""] + 0.3 * u_bone[j], -1, 1)
                      for j in range(sk.num_joints)])
    return scale[:, None] * hand.local_pose[:, :3, 3]


def flexion_fields(hand: HandModel, normals: np.ndarray, params: DeformParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint bulge directions at unit flexion.

    The band of joint ``j`` is limited to vertices skinned to ``j`` or its parent, so a bulge
    never spills onto a neighbouring finger.

    Returns:
        joints: (Jf,) indices of the flexing joints (those with a z DoF).
        fields: (Jf, V, 3) rest-pose offset per radian of flexion, mm/rad.
    """
    sk = hand.skeleton
    W = hand.skinning_weights
    v_h = np.concatenate([hand.vertices, np.ones((hand.num_vertices, 1))], 1)
    joints, fields = [], []
    seg = np.argmax(W, 1)
    for j in np.nonzero(sk.dof_mask()[:, 2])[0]:
        p = sk.parents[j]
        local = v_h @ hand.global_pose_inv[j].T                                   # (V, 4) in the bind frame
        x, y, z = local[:, 0], local[:, 1], local[:, 2]
        rho = np.sqrt(y * y + z * z)
        own = (seg == j) & (np.abs(x) < 15.0)
        r = float(np.median(rho[own])) if own.sum() >= 8 else 8.0                 # finger radius here, mm
        member = np.clip(W[:, j] + (W[:, p] if p >= 0 else 0.0), 0.0, 1.0)        # this finger only
        loc = member * np.exp(-0.5 * (x / (params.bulge_band * r)) ** 2) \
            * np.exp(-0.5 * (np.maximum(rho - 1.25 * r, 0.0) / (0.4 * r)) ** 2)
        s = y / np.maximum(rho, 1e-6)
        mag = loc * (params.bulge_inside_mm_per_rad * np.maximum(s, 0) ** 2
                     + params.bulge_outside_mm_per_rad * np.maximum(-s, 0) ** 2)
        joints.append(j)
        fields.append(mag[:, None] * normals)
    return np.array(joints, dtype=np.int64), np.stack(fields)


# --------------------------------------------------------------------------- the deformer
@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Posed ground truth of T frames.

    Attributes:
        vertices: (T, V, 3) world mm (same faces as the hand model).
        joints: (T, J, 3) world mm (FK of the hand model's skeleton).
        transforms: (T, J, 4, 4) global joint transforms, world.
    """

    vertices: np.ndarray
    joints: np.ndarray
    transforms: np.ndarray


class GroundTruthDeformer:
    """Poses one subject's true surface: identity shape + flexion bulges + dual-quaternion skinning.

    Args:
        hand: the subject's hand model (the template the network starts from).
        identity_seed: seed of the per-identity surface shape.
        params: strengths; ``DeformParams(identity_amplitude_mm=0, bulge_*=0, bone_length_jitter=0,
            dual_quaternion=False)`` reduces the ground truth to the hand model's own LBS.
    """

    def __init__(self, hand: HandModel, identity_seed: int, params: DeformParams | None = None):
        self.hand, self.params = hand, params or DeformParams()
        self.layer = HandLayer(hand, dtype=torch.float64)
        normals = vertex_normals(hand.vertices, hand.faces)
        self.identity_offset = identity_offsets(hand.vertices, normals, identity_seed, self.params)  # (V, 3)
        self.flex_joints, flex_fields = flexion_fields(hand, normals, self.params)
        self._flex_fields = torch.as_tensor(flex_fields)                            # (Jf, V, 3)
        W = hand.skinning_weights
        K = min(4, W.shape[1])
        idx = np.argsort(-W, axis=1)[:, :K]
        val = np.take_along_axis(W, idx, 1)
        self._w_index = torch.as_tensor(idx)
        self._w_value = torch.as_tensor(val / val.sum(1, keepdims=True))
        self._rest = torch.as_tensor(hand.vertices + self.identity_offset)
        self.bone_offset = identity_bone_offsets(hand, identity_seed, self.params)               # (J, 3)
        self._bone_offset = torch.as_tensor(self.bone_offset)

    def pose_offsets(self, euler: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rest-frame offsets of each pose effect (:data:`POSE_EFFECTS`): ``{name: (T, V, 3)}`` mm.

        Args:
            euler: (T, J, 3) DoF-masked radians.
        """
        theta = euler[:, self.flex_joints, 2].clamp_min(0)                         # (T, Jf)
        return {"flexion_bulge": torch.einsum("tj,jvc->tvc", theta, self._flex_fields)}

    def rest_surface(self, euler: torch.Tensor) -> torch.Tensor:
        """(T, V, 3) rest-pose surface with identity shape and the pose effects of ``euler`` (T, J, 3) rad."""
        return self._rest + sum(self.pose_offsets(euler).values())

    def skin(self, rest: torch.Tensor, transforms: torch.Tensor, dual_quaternion: bool | None = None) -> torch.Tensor:
        """Skin rest surfaces (V, 3) or (B, V, 3) with bind-relative ``transforms`` (B, J, 3, 4) → (B, V, 3).

        ``dual_quaternion``: DQS (the ground truth's) or LBS (the hand model's); default ``params.dual_quaternion``.
        """
        dq = self.params.dual_quaternion if dual_quaternion is None else dual_quaternion
        if dq:
            return dual_quaternion_skinning(rest, self._w_index, self._w_value, transforms)
        return linear_blend_skinning(rest, self.layer.skin_weights, transforms)

    def pose(self, euler: torch.Tensor, root: torch.Tensor, bones: bool = True):
        """FK of the hand model's skeleton (with the identity's bone lengths unless ``bones=False``).

        Returns:
            the :class:`~dhmlib.model.HandLayer` output and its bind-relative transforms (B, J, 3, 4).
        """
        pose = self.layer(euler, joint_offsets=self._bone_offset if bones else None, root_transform=root)
        return pose, pose.transforms[..., :3, :] @ self.layer.global_bind_inv

    def __call__(self, euler: np.ndarray, root: np.ndarray, chunk: int = 32) -> GroundTruth:
        """Pose T frames.

        Args:
            euler: (T, J, 3) radians (DoF-masked by the hand model).
            root: (T, 4, 4) wrist placement, model frame → world, mm.
        Returns:
            :class:`GroundTruth` in float64 numpy.
        """
        euler, root = self.check_inputs(euler, root)
        verts, joints, trans = [], [], []
        with torch.no_grad():
            for s in range(0, euler.shape[0], chunk):
                pose, A = self.pose(euler[s:s + chunk], root[s:s + chunk])
                verts.append(self.skin(self.rest_surface(pose.euler), A))
                joints.append(pose.joints)
                trans.append(pose.transforms)
        return GroundTruth(torch.cat(verts).numpy(), torch.cat(joints).numpy(), torch.cat(trans).numpy())

    def check_inputs(self, euler, root) -> tuple[torch.Tensor, torch.Tensor]:
        """``euler`` (T, J, 3) rad and ``root`` (T, 4, 4) as float64 tensors; ValueError naming a bad shape."""
        euler = torch.as_tensor(np.asarray(euler, dtype=np.float64))
        root = torch.as_tensor(np.asarray(root, dtype=np.float64))
        if euler.dim() != 3 or euler.shape[1:] != (self.hand.num_joints, 3):
            raise ValueError(f"euler: expected (T, {self.hand.num_joints}, 3) radians, got {tuple(euler.shape)}")
        if root.shape != (euler.shape[0], 4, 4):
            raise ValueError(f"root: expected ({euler.shape[0]}, 4, 4), got {tuple(root.shape)}")
        return euler, root


# --------------------------------------------------------------------------- what LBS cannot express
def fit_lbs(hand: HandModel, target: np.ndarray, euler0: np.ndarray, root0: np.ndarray,
            steps: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best LBS-only explanation of ground-truth meshes: fit Euler angles and a rigid root (L-BFGS).

    Minimises the mean squared per-vertex distance between ``HandLayer(hand)`` (template, no
    correctives) and ``target`` over the DoF-masked Euler angles and a rigid correction of the
    root, starting from ``euler0`` / ``root0`` (e.g. the true pose); never worse than the start.

    Args:
        target: (T, V, 3) world mm.  euler0: (T, J, 3) rad.  root0: (T, 4, 4) model → world.
        steps: L-BFGS iterations (0: evaluate the start).
    Returns:
        euler (T, J, 3) rad, root (T, 4, 4), error (T, V) per-vertex distance after the fit, mm.
    """
    from ..kinematics import euler_to_matrix

    layer = HandLayer(hand, dtype=torch.float64)
    tgt = torch.as_tensor(np.asarray(target, dtype=np.float64))
    r0 = torch.as_tensor(np.asarray(root0, dtype=np.float64))
    T = len(tgt)
    euler = torch.tensor(np.asarray(euler0, dtype=np.float64), requires_grad=True)
    rot = torch.zeros(T, 3, dtype=torch.float64, requires_grad=True)      # root correction, rad
    shift = torch.zeros(T, 3, dtype=torch.float64, requires_grad=True)    # root correction, cm
    bottom = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64).expand(T, 1, 4)

    def root():
        corr = torch.cat([torch.cat([euler_to_matrix(rot), 10.0 * shift.unsqueeze(-1)], -1), bottom], -2)
        return r0 @ corr

    def loss_fn():
        return ((layer(euler, root_transform=root()).vertices - tgt) ** 2).sum(-1).mean(-1).sum()

    if steps > 0:
        opt = torch.optim.LBFGS([euler, rot, shift], lr=1.0, max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        R = root()
        err = (layer(euler, root_transform=R).vertices - tgt).norm(dim=-1)
    return (euler * layer.dof_mask).detach().numpy(), R.numpy(), err.numpy()
