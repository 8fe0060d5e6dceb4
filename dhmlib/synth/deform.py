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
2b. plus **pose effects of realistic size** (:data:`POSE_EFFECTS`), also rest-frame
   offsets added before skinning, each zero at the bind pose and under extension,
   continuous in the pose (linear in the clamped flexion ``relu(θ)``), smooth over the
   surface (in a fist, neighbouring vertices' offsets differ by at most ~1.2× their
   distance, the old bulges' by 1.8×) and adding no self-intersections (below). At the
   hinge joints (finger MCP ``*1``, PIP ``*2``, DIP ``*3``; thumb MCP ``thumb2`` and
   IP ``thumb3``; magnitudes at 90° of flexion for the MCP, × ``joint_level_scale``
   = 0.8 at the PIP / thumb IP and 0.5 at the DIP; :func:`hinge_fields`):

   * ``knuckle`` (4 mm): on flexion the head of the proximal bone (metacarpal head at
     the MCP, the condyles of the proximal / middle phalanx at the PIP / DIP) rolls
     out from under the dorsal skin and the knuckle stands out: a bump on the dorsal
     midline just proximal of the joint, about a finger radius long. In a fist the
     metacarpal heads stand several mm above the flat dorsum of the hand.
   * ``dorsal_stretch`` (5 mm tangential, 0.8 mm inward): the dorsal skin has to
     lengthen by about (its distance dorsal of the joint axis) × θ (≈ 14 mm at 90° for a
     9 mm radius); real skin is recruited from both neighbouring segments, not only
     from the blend zone of LBS, so dorsal skin is drawn toward the joint by up to
     5 mm (largest 1.8 radii either side; ∝ ``relu(−s)^1.5``, most on the midline), and
     the stretched skin lies flatter.
   * ``palmar_fold`` (2 mm inward): at the palmar flexion creases the skin has no
     subcutaneous fat and is tethered to the flexor tendon sheath; it stays deep
     while the pulp either side bunches up (that bunching is ``flexion_bulge``'s
     palmar part).

   and two effects of the palm (:func:`thenar_field`, :func:`palm_arch_field`):

   * ``thenar`` (6 mm per rad of thumb activation ``relu(θz) + ½|θy|`` summed over
     ``thumb0`` and ``thumb1``; ≈ 4 mm in a fist): the thenar muscles (abductor and
     flexor pollicis brevis, opponens) shorten and thicken when the thumb flexes,
     abducts or opposes; the thenar eminence bulges on its palmar-radial face.
   * ``palm_arch`` (5 mm per rad of ``0.2 θ_middle1 + 0.35 θ_ring1 + 0.45 θ_pinky1``,
     ≈ 7 mm at the ulnar edge in a fist): the 4th and 5th carpometacarpal joints are
     mobile (about 10° and 20–30° of flexion), so gripping cups the palm: the ulnar
     (hypothenar) side moves toward the palm, 0 at the middle finger, most at the
     pinky edge, the whole palm thickness together (the palm bends, it does not swell);
     it fades out 25 mm before the knuckles, where the curled fingers lie in a fist.

   The fields are offsets in the template's rest frame, so a pose corrective can in
   principle learn them; ``DeformParams().without(*POSE_EFFECTS)`` switches them off.
   Self-intersection (:func:`dhmlib.mesh.check.self_intersections`, intersecting face pairs):
   LBS of the template already intersects itself in fist-like poses (fingers into the
   palm, the thumb over the fingers; the capture's poses do not avoid contact), and the
   identity shape and old bulges add more. Default capture's hand, before → after these
   effects: fist 1505 → 1372, point 1158 → 1097, thumbs_up 425 → 328, ok 113 → 103,
   pinch 90 → 91, rest/relaxed/open/spread unchanged (51/49/50/7 → 51/48/50/7; template
   LBS: fist 894); every 5th frame of the capture: 10789 → 10575 in total, no frame more
   than 8 % up. Design choices made for this: the palmar fold is a crease, not rolls
   either side (rolls pressed the phalanges into each other, +13 % in a fist); the knuckle
   keeps to the dorsal midline (``relu(−s)⁴``; wider, it pushed the webs between the
   knuckles into each other); the arch stops short of the knuckles.
3. posed by **dual-quaternion skinning** (Kavan et al.) with the hand model's
   own bind poses and weights, i.e. the same joints as the model's FK.

At the bind pose (all angles 0) with the identity shape and bone lengths off, this is exactly
the template: DQS equals LBS for equal transforms and the pose effects vanish. In any
flexed pose LBS of the template cannot match it, which is what the correctives
of the network have to learn.

What plain LBS misses, effect by effect (:func:`dhmlib.synth.decompose.decompose_lbs_residual`,
default capture, subject 1, per-vertex distance in mm, mean / p95 / max over vertices and frames;
``static_gap`` = ground truth vs LBS with the true bones and shape: only a pose corrective can
learn it):

=====================  =====================  =====================  ======================
term                   held-out take, before  held-out take, after   all 200 frames, after
=====================  =====================  =====================  ======================
identity_shape         0.77 / 1.55 / 1.6      0.77 / 1.55 / 1.6      0.77 / 1.55 / 1.6
bone_lengths           0.59 / 1.79 / 2.4      0.59 / 1.79 / 2.4      0.58 / 1.85 / 2.4
pose: flexion_bulge    0.14 / 0.77 / 3.2      0.14 / 0.77 / 3.2      0.11 / 0.62 / 3.5
pose: knuckle          —                      0.06 / 0.36 / 2.6      0.05 / 0.26 / 2.9
pose: dorsal_stretch   —                      0.19 / 1.09 / 3.8      0.15 / 0.82 / 5.9
pose: palmar_fold      —                      0.02 / 0.09 / 1.2      0.01 / 0.06 / 1.5
pose: thenar           —                      0.03 / 0.26 / 0.8      0.07 / 0.42 / 4.4
pose: palm_arch        —                      0.06 / 0.31 / 3.7      0.05 / 0.09 / 6.7
dqs_vs_lbs             0.18 / 0.85 / 3.0      0.18 / 0.84 / 2.9      0.16 / 0.85 / 5.7
**static_gap**         **0.30 / 1.40 / 6.2**  **0.50 / 1.99 / 5.8**  **0.46 / 2.12 / 8.4**
plain_lbs              1.29 / 2.69 / 6.8      1.43 / 2.88 / 7.8      1.45 / 2.93 / 9.9
=====================  =====================  =====================  ======================

(held-out take: ``0005_RT_free``, 28 frames of random natural poses with moderate flexion,
MCP/PIP mostly 20–60°; "before" = the pose effects of 2b off, bit-identical to the ground truth
before they existed; all 200 frames before: static_gap 0.26 / 1.29 / 9.0, plain_lbs 1.29 / 2.52 / 10.0.
Since issue 14 the held-out take has 64 frames and 13 random poses: static_gap 0.63 / 2.36 / 6.1,
plain_lbs 1.54 / 3.18 / 8.1, identity_shape 0.77 / 1.55 / 1.6, bone_lengths 0.57 / 1.71 / 2.4.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.kinematics import euler_to_matrix, linear_blend_skinning
from dhmlib.hand.layer import HandLayer
from dhmlib.hand.skeleton import FINGERS
from dhmlib.mesh.normals import vertex_normals


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
    # pose effects of realistic size (see the module docstring), mm at 90° of flexion (MCP; PIP and
    # DIP / thumb MCP and IP scaled by joint_level_scale) unless stated
    knuckle_mm: float = 4.0               # dorsal knuckle prominence over the flexing joint
    dorsal_slide_mm: float = 5.0          # dorsal skin drawn toward the flexing joint (tangential)
    dorsal_thinning_mm: float = 0.8       # stretched dorsal skin lies flatter (inward)
    palmar_fold_mm: float = 2.0           # palmar flexion crease held deep (inward)
    joint_level_scale: tuple[float, float, float] = (1.0, 0.8, 0.5)  # MCP, PIP, DIP
    thenar_mm_per_rad: float = 6.0        # thenar eminence bulge per rad of thumb flexion/abduction
    palm_arch_mm_per_rad: float = 5.0     # ulnar palm edge toward the palm per rad of ulnar MCP flexion

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identity_wavelength_mm"] = list(self.identity_wavelength_mm)
        d["joint_level_scale"] = list(self.joint_level_scale)
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
        for name in ("identity_wavelength_mm", "joint_level_scale"):
            if name in out:
                out[name] = tuple(out[name])
        return cls(**out)

    def without(self, *effects: str) -> "DeformParams":
        """These params with pose effects (keys of :data:`POSE_EFFECTS`) switched off (their fields 0)."""
        bad = [e for e in effects if e not in POSE_EFFECTS]
        if bad:
            raise KeyError(f"unknown pose effect(s) {bad}; expected some of {list(POSE_EFFECTS)}")
        return replace(self, **{n: 0.0 for e in effects for n in POSE_EFFECTS[e]})


#: weights of the middle, ring and pinky MCP flexion in the palm arch's activation (the ulnar
#: metacarpals, 4th and 5th, are the mobile ones)
ARCH_WEIGHTS = (0.2, 0.35, 0.45)

#: The pose-dependent effects of the ground truth and the :class:`DeformParams` fields that scale
#: each (all 0: the effect is off). Each adds a rest-frame offset before skinning that is zero at
#: the bind pose.
POSE_EFFECTS: dict[str, tuple[str, ...]] = {
    "flexion_bulge": ("bulge_inside_mm_per_rad", "bulge_outside_mm_per_rad"),
    "knuckle": ("knuckle_mm",),
    "dorsal_stretch": ("dorsal_slide_mm", "dorsal_thinning_mm"),
    "palmar_fold": ("palmar_fold_mm",),
    "thenar": ("thenar_mm_per_rad",),
    "palm_arch": ("palm_arch_mm_per_rad",),
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


@dataclass(frozen=True)
class JointCoords:
    """Rest vertices in the bind frame of a flexing joint ``j``.

    Attributes:
        x, y, z: (V,) along the bone (distal +), toward the palm (+) and across, mm.
        rho: (V,) distance from the bone axis, mm.  s: (V,) ``y / rho``: +1 palm side, −1 dorsal.
        radius: the finger's radius at the joint, mm.
        member: (V,) skinning weight of ``j`` plus its parent's (clipped to 1): this finger only.
        cylinder: (V,) 1 within ``1.25 · radius`` of the axis, falling off outside (other fingers ≈ 0).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    rho: np.ndarray
    s: np.ndarray
    radius: float
    member: np.ndarray
    cylinder: np.ndarray


def joint_coords(hand: HandModel, j: int) -> JointCoords:
    """:class:`JointCoords` of joint ``j`` (the finger radius is the median of its own vertices')."""
    W = hand.skinning_weights
    p = hand.skeleton.parents[j]
    v_h = np.concatenate([hand.vertices, np.ones((hand.num_vertices, 1))], 1)
    local = v_h @ hand.global_pose_inv[j].T                                       # (V, 4) in the bind frame
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    rho = np.sqrt(y * y + z * z)
    own = (np.argmax(W, 1) == j) & (np.abs(x) < 15.0)
    r = float(np.median(rho[own])) if own.sum() >= 8 else 8.0                     # finger radius here, mm
    member = np.clip(W[:, j] + (W[:, p] if p >= 0 else 0.0), 0.0, 1.0)            # this finger only
    cylinder = np.exp(-0.5 * (np.maximum(rho - 1.25 * r, 0.0) / (0.4 * r)) ** 2)
    return JointCoords(x, y, z, rho, y / np.maximum(rho, 1e-6), r, member, cylinder)


def flexion_fields(hand: HandModel, normals: np.ndarray, params: DeformParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint bulge directions at unit flexion.

    The band of joint ``j`` is limited to vertices skinned to ``j`` or its parent, so a bulge
    never spills onto a neighbouring finger.

    Returns:
        joints: (Jf,) indices of the flexing joints (those with a z DoF).
        fields: (Jf, V, 3) rest-pose offset per radian of flexion, mm/rad.
    """
    joints, fields = [], []
    for j in np.nonzero(hand.skeleton.dof_mask()[:, 2])[0]:
        c = joint_coords(hand, j)
        loc = c.member * np.exp(-0.5 * (c.x / (params.bulge_band * c.radius)) ** 2) * c.cylinder
        mag = loc * (params.bulge_inside_mm_per_rad * np.maximum(c.s, 0) ** 2
                     + params.bulge_outside_mm_per_rad * np.maximum(-c.s, 0) ** 2)
        joints.append(j)
        fields.append(mag[:, None] * normals)
    return np.array(joints, dtype=np.int64), np.stack(fields)


def hinge_joints(hand: HandModel) -> list[tuple[int, int]]:
    """The hinge joints with a knuckle and a flexion crease: ``[(joint, level)]``, level 0 = MCP,
    1 = PIP, 2 = DIP (fingers ``*1``, ``*2``, ``*3``; thumb MCP ``thumb2`` and IP ``thumb3`` as 0 and 1)."""
    sk = hand.skeleton
    out = [(sk.index(f + str(k + 1)), k) for f in FINGERS[1:] for k in range(3)]
    return out + [(sk.index("thumb2"), 0), (sk.index("thumb3"), 1)]


def hinge_fields(hand: HandModel, normals: np.ndarray, params: DeformParams) -> dict[str, np.ndarray]:
    """Rest-frame offsets at 90° of flexion of each hinge joint (:func:`hinge_joints`), (Jh, V, 3) mm.

    In the joint's bind frame (``u = x / radius``; ``dorsal = relu(−s)²``, ``palmar = relu(s)²``;
    every field times the finger's ``member · cylinder`` mask and the level's scale):

    * ``knuckle``: ``knuckle_mm · dorsal² · exp(−½ ((u + 0.2) / 0.8)²)`` along the normal: the head of
      the proximal bone stands out just proximal of the joint, on the dorsal midline;
    * ``dorsal_stretch``: dorsal skin drawn toward the joint, tangentially along the bone,
      ``−dorsal_slide_mm · relu(−s)^1.5 · a · exp((1 − a²)/2)``, ``a = u / 1.8`` (largest, ``dorsal_slide_mm``,
      at 1.8 radii either side), plus thinning ``−dorsal_thinning_mm · relu(−s)^1.5 · exp(−½ a²)`` along the normal;
    * ``palmar_fold``: ``−palmar_fold_mm · palmar · exp(−½ (u / 0.35)²)`` along the normal: the flexion
      crease, where the skin is tethered to the tendon sheath, stays deep while the pulp either side
      bulges (``flexion_bulge``).
    """
    lvl = params.joint_level_scale
    out = {"knuckle": [], "dorsal_stretch": [], "palmar_fold": []}
    for j, level in hinge_joints(hand):
        c = joint_coords(hand, j)
        mask = lvl[level] * c.member * c.cylinder
        u = c.x / c.radius
        dorsal, palmar = np.maximum(-c.s, 0) ** 2, np.maximum(c.s, 0) ** 2
        knuckle = params.knuckle_mm * dorsal ** 2 * np.exp(-0.5 * ((u + 0.2) / 0.8) ** 2)
        a = u / 1.8
        stretch = np.maximum(-c.s, 0) ** 1.5          # skin lengthens with its distance dorsal of the axis
        thin = -params.dorsal_thinning_mm * stretch * np.exp(-0.5 * a * a)
        slide = -params.dorsal_slide_mm * stretch * a * np.exp(0.5 * (1 - a * a))
        fold = -params.palmar_fold_mm * palmar * np.exp(-0.5 * (u / 0.35) ** 2)
        bone = hand.global_pose[j][:3, 0]
        tangent = bone[None] - (normals @ bone)[:, None] * normals                 # bone axis along the skin
        out["knuckle"].append((mask * knuckle)[:, None] * normals)
        out["dorsal_stretch"].append((mask * thin)[:, None] * normals + (mask * slide)[:, None] * tangent)
        out["palmar_fold"].append((mask * fold)[:, None] * normals)
    return {k: np.stack(v) for k, v in out.items()}


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def thenar_field(hand: HandModel, normals: np.ndarray, params: DeformParams) -> np.ndarray:
    """(V, 3) thenar bulge per radian of thumb activation, mm/rad: along the normal on the palmar-radial
    face (``relu(n · (0, 1, 0.5)/|…|)``) of the vertices skinned to ``thumb0`` (the thenar pad) and half
    those of ``thumb1`` (the metacarpal), ``thenar_mm_per_rad`` at most."""
    sk, W = hand.skeleton, hand.skinning_weights
    region = np.clip(W[:, sk.index("thumb0")] + 0.5 * W[:, sk.index("thumb1")], 0.0, 1.0)
    face = np.maximum(normals @ (np.array([0.0, 1.0, 0.5]) / np.sqrt(1.25)), 0.0)
    return (params.thenar_mm_per_rad * region * face)[:, None] * normals


def palm_arch_field(hand: HandModel, params: DeformParams) -> np.ndarray:
    """(V, 3) palm cupping per radian of ulnar MCP activation, mm/rad: the palm (vertices skinned to
    the wrist, fading in from the carpus, ``smoothstep((x − 15 mm) / 30 mm)``) moves toward the palm
    side (+y, the whole thickness: the palm bends, it does not swell), the more the farther to the
    ulnar side (``smoothstep(−z / half-width)``, 0 at the middle finger, 1 at the pinky edge)."""
    sk, W, v = hand.skeleton, hand.skinning_weights, hand.vertices
    half_width = max(float(-v[:, 2].min()), 1.0)
    knuckle_x = float(hand.bind_joints[sk.index("pinky1"), 0])
    along = _smoothstep((v[:, 0] - 15.0) / 30.0) * (1 - _smoothstep((v[:, 0] - knuckle_x + 25.0) / 20.0))
    mask = W[:, sk.root] * along * _smoothstep(-v[:, 2] / half_width)
    out = np.zeros_like(v)
    out[:, 1] = params.palm_arch_mm_per_rad * mask
    return out


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
        sk = hand.skeleton
        self.hinge_joints = np.array([j for j, _ in hinge_joints(hand)], dtype=np.int64)
        self._hinge_fields = {k: torch.as_tensor(f) for k, f in hinge_fields(hand, normals, self.params).items()}
        self._thenar_field = torch.as_tensor(thenar_field(hand, normals, self.params))          # (V, 3)
        self._thumb = [sk.index("thumb0"), sk.index("thumb1")]
        self._palm_arch_field = torch.as_tensor(palm_arch_field(hand, self.params))              # (V, 3)
        self._arch_joints = [sk.index(f + "1") for f in ("middle", "ring", "pinky")]
        self._arch_weights = torch.tensor(ARCH_WEIGHTS, dtype=torch.float64)
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
        out = {"flexion_bulge": torch.einsum("tj,jvc->tvc", theta, self._flex_fields)}
        hinge = euler[:, self.hinge_joints, 2].clamp_min(0) / (np.pi / 2)           # (T, Jh), 1 at 90°
        for name, field in self._hinge_fields.items():
            out[name] = torch.einsum("tj,jvc->tvc", hinge, field)
        t = euler[:, self._thumb]                                                   # (T, 2, 3)
        thenar = (t[..., 2].clamp_min(0) + 0.5 * t[..., 1].abs()).sum(-1)           # (T,) rad
        out["thenar"] = thenar[:, None, None] * self._thenar_field
        arch = euler[:, self._arch_joints, 2].clamp_min(0) @ self._arch_weights     # (T,) rad
        out["palm_arch"] = arch[:, None, None] * self._palm_arch_field
        return out

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
            the :class:`~dhmlib.hand.layer.HandLayer` output and its bind-relative transforms (B, J, 3, 4).
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
