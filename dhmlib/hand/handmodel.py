"""The hand model: template mesh, skeleton, bind poses and skinning weights.

Reads and writes the official ``hand_model/`` folder:

- ``hand.obj``: ``v x y z`` in **centimetres**, ``vt u v``, ``f v/vt v/vt v/vt`` (1-based)
- ``skeleton.txt``: ``name joint_id parent_id`` (root parent ``-1``)
- ``skinning_weight.txt``: ``vertex_idx name w name w …``
- ``local_pose.txt`` / ``global_pose.txt`` / ``global_pose_inv.txt``:
  ``name m00 m01 … m33`` (row-major 4×4, bind pose, millimetres)

Inside dhmlib everything is millimetres.  The cm ↔ mm conversion shifts the
decimal point of the written number instead of multiplying floats, so that
write → read reproduces every float64 bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import numpy as np

from dhmlib.hand.skeleton import Skeleton
from dhmlib.paths import data_dir

FILES = ("hand.obj", "skeleton.txt", "skinning_weight.txt",
         "local_pose.txt", "global_pose.txt", "global_pose_inv.txt")


class HandModelError(ValueError):
    """A malformed hand-model file; the message names file, line and expectation."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, eq=False, repr=False)
class HandModel:
    """A skinned hand mesh in millimetres.

    Attributes:
        vertices: (V, 3) float64 template vertices, mm.
        faces: (F, 3) int64 vertex indices (0-based, counter-clockwise = outward).
        uvs: (T, 2) float64 texture coordinates.
        uv_faces: (F, 3) int64 indices into ``uvs``.
        skeleton: joint names and parents (J joints).
        skinning_weights: (V, J) float64, rows sum to 1.
        local_pose: (J, 4, 4) bind pose of each joint relative to its parent, mm.
        global_pose: (J, 4, 4) bind pose in the mesh frame, mm.
        global_pose_inv: (J, 4, 4) inverse of ``global_pose``.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    skeleton: Skeleton
    skinning_weights: np.ndarray
    local_pose: np.ndarray
    global_pose: np.ndarray
    global_pose_inv: np.ndarray
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        source = self.meta.get("source") or self.meta.get("generator")
        return (f"HandModel({self.num_vertices} vertices, {len(self.faces)} faces, {self.num_joints} joints, "
                f"{len(self.uvs)} uvs" + (f", from {source!r}" if source else "") + ")")

    # ------------------------------------------------------------------ views
    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_joints(self) -> int:
        return self.skeleton.num_joints

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.skeleton.names

    @property
    def parents(self) -> tuple[int, ...]:
        return self.skeleton.parents

    @property
    def dof_mask(self) -> np.ndarray:
        """(J, 3) bool Euler axes per joint."""
        return self.skeleton.dof_mask()

    @property
    def bind_joints(self) -> np.ndarray:
        """(J, 3) joint positions at bind pose, mm."""
        return self.global_pose[:, :3, 3].copy()

    @property
    def segmentation(self) -> np.ndarray:
        """(V,) index of the joint with the largest skinning weight per vertex."""
        return np.argmax(self.skinning_weights, axis=1)

    def equals(self, other: "HandModel") -> bool:
        """Exact equality of every array and of the skeleton."""
        arrays = ("vertices", "faces", "uvs", "uv_faces", "skinning_weights",
                  "local_pose", "global_pose", "global_pose_inv")
        return self.skeleton == other.skeleton and all(
            np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays)

    def with_renormalized_weights(self) -> "HandModel":
        w = np.clip(self.skinning_weights, 0.0, None)
        return replace(self, skinning_weights=w / w.sum(1, keepdims=True))

    # --------------------------------------------------------------- file io
    @classmethod
    def read(cls, folder, renormalize_weights: bool = False) -> "HandModel":
        """Read and validate an official-format ``hand_model/`` folder."""
        return read_hand_model(folder, renormalize_weights=renormalize_weights)

    def write(self, folder, origin: str | None = None) -> Path:
        """Write the official-format files into ``folder`` (created if needed); ``origin``: see
        :func:`write_hand_model`."""
        return write_hand_model(self, folder, origin=origin)


# ---------------------------------------------------------------------------
# number formatting: exact decimal shifts between cm and mm

def _fmt(x: float) -> str:
    return repr(float(x))


def _cm_to_mm(text: str) -> float:
    return float(Decimal(text).scaleb(1))


def _mm_to_cm_text(x: float) -> str:
    d = Decimal(repr(float(x))).scaleb(-1)
    return format(d.normalize(), "f") if d != 0 else "0"


# ---------------------------------------------------------------------------
# reading

def _lines(path: Path):
    """Yield (line_number, fields) for non-empty, non-comment lines."""
    if not path.is_file():
        raise HandModelError(path, None, "missing file (expected one of the official hand_model files: "
                             + ", ".join(FILES) + ")")
    with open(path, encoding="utf-8", errors="strict") as fh:
        for n, raw in enumerate(fh, 1):
            s = raw.strip()
            if s and not s.startswith("#"):
                yield n, s.split()


def _floats(path, n, tokens, what):
    try:
        return [float(t) for t in tokens]
    except ValueError:
        raise HandModelError(path, n, f"expected numbers for {what}, got {' '.join(tokens)!r}") from None


def _read_obj(path: Path):
    verts, uvs, faces, uv_faces, face_lines = [], [], [], [], []
    for n, tok in _lines(path):
        key = tok[0]
        if key == "v":
            if len(tok) < 4:
                raise HandModelError(path, n, f"expected 'v x y z', got {' '.join(tok)!r}")
            try:
                verts.append([_cm_to_mm(t) for t in tok[1:4]])
            except Exception:
                raise HandModelError(path, n, f"expected numbers in 'v x y z', got {' '.join(tok)!r}") from None
        elif key == "vt":
            if len(tok) < 3:
                raise HandModelError(path, n, f"expected 'vt u v', got {' '.join(tok)!r}")
            uvs.append(_floats(path, n, tok[1:3], "vt u v"))
        elif key == "f":
            if len(tok) != 4:
                raise HandModelError(path, n, f"expected a triangle 'f v/vt v/vt v/vt', got {len(tok) - 1} corners")
            fv, ft = [], []
            for corner in tok[1:]:
                parts = corner.split("/")
                try:
                    fv.append(int(parts[0]) - 1)
                    ft.append(int(parts[1]) - 1 if len(parts) > 1 and parts[1] else int(parts[0]) - 1)
                except ValueError:
                    raise HandModelError(path, n, f"expected 'v/vt' integer indices, got {corner!r}") from None
            faces.append(fv)
            uv_faces.append(ft)
            face_lines.append(n)
        # other records (vn, o, g, s, usemtl, mtllib) are irrelevant to the model
    if not verts:
        raise HandModelError(path, None, "expected vertices ('v x y z' lines), found none")
    if not faces:
        raise HandModelError(path, None, "expected faces ('f' lines), found none")
    faces = np.asarray(faces, dtype=np.int64)
    uv_faces = np.asarray(uv_faces, dtype=np.int64)
    V, T = len(verts), len(uvs)
    bad = np.nonzero((faces < 0) | (faces >= V))[0]
    if len(bad):
        i = bad[0]
        raise HandModelError(path, face_lines[i], f"face vertex index out of range: expected 1..{V}, got "
                             f"{(faces[i] + 1).tolist()}")
    if T == 0:
        uvs = np.zeros((V, 2))
        uv_faces = faces.copy()
    else:
        bad = np.nonzero((uv_faces < 0) | (uv_faces >= T))[0]
        if len(bad):
            i = bad[0]
            raise HandModelError(path, face_lines[i], f"face texture index out of range: expected 1..{T}, got "
                                 f"{(uv_faces[i] + 1).tolist()}")
    return (np.asarray(verts, dtype=np.float64), faces, np.asarray(uvs, dtype=np.float64), uv_faces)


def _read_skeleton(path: Path) -> tuple[Skeleton, dict]:
    rows = []
    for n, tok in _lines(path):
        if len(tok) != 3:
            raise HandModelError(path, n, f"expected 'name joint_id parent_id', got {' '.join(tok)!r}")
        try:
            rows.append((n, tok[0], int(tok[1]), int(tok[2])))
        except ValueError:
            raise HandModelError(path, n, f"expected integer joint and parent ids, got {' '.join(tok)!r}") from None
    if not rows:
        raise HandModelError(path, None, "expected joints ('name joint_id parent_id'), found none")
    ids = sorted(r[2] for r in rows)
    if ids != list(range(len(rows))):
        raise HandModelError(path, None, f"expected joint ids 0..{len(rows) - 1} each once, got {ids}")
    by_id = {r[2]: r for r in rows}
    names = [by_id[i][1] for i in range(len(rows))]
    for n, name, jid, pid in rows:
        if names.count(name) > 1:
            raise HandModelError(path, n, f"joint name {name!r} appears more than once")
        if pid != -1 and not 0 <= pid < len(rows):
            raise HandModelError(path, n, f"parent id {pid} of {name!r}: expected -1 or 0..{len(rows) - 1}")
        if pid == jid:
            raise HandModelError(path, n, f"joint {name!r} is its own parent")
    roots = [r for r in rows if r[3] == -1]
    if len(roots) != 1:
        lines = ", ".join(f"line {r[0]} ({r[1]})" for r in roots) or "none"
        raise HandModelError(path, roots[1][0] if len(roots) > 1 else None,
                             f"expected exactly one root (parent -1), found {len(roots)}: {lines}")
    parents = [by_id[i][3] for i in range(len(rows))]
    # a cycle: some joint never reaches the root
    for n, name, jid, _ in rows:
        seen, k = set(), jid
        while k != -1:
            if k in seen:
                raise HandModelError(path, n, f"joint {name!r} is on a cycle (never reaches the root)")
            seen.add(k)
            k = parents[k]
    line_of = {r[1]: r[0] for r in rows}
    return Skeleton(tuple(names), tuple(parents)), line_of


def _read_poses(path: Path, skeleton: Skeleton):
    J = skeleton.num_joints
    out = np.full((J, 4, 4), np.nan)
    line_of = {}
    for n, tok in _lines(path):
        if len(tok) != 17:
            raise HandModelError(path, n, f"expected 'name m00 … m33' (17 fields), got {len(tok)}")
        name = tok[0]
        if name not in skeleton.names:
            raise HandModelError(path, n, f"unknown joint name {name!r}; expected one of skeleton.txt's names")
        j = skeleton.names.index(name)
        if j in line_of:
            raise HandModelError(path, n, f"joint {name!r} appears twice (first on line {line_of[j]})")
        m = np.asarray(_floats(path, n, tok[1:], "a 4x4 matrix"), dtype=np.float64).reshape(4, 4)
        if not np.all(np.isfinite(m)):
            raise HandModelError(path, n, f"non-finite matrix entries for {name!r}")
        if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise HandModelError(path, n, f"expected last row 0 0 0 1 for {name!r}, got {m[3].tolist()}")
        out[j] = m
        line_of[j] = n
    missing = [skeleton.names[j] for j in range(J) if j not in line_of]
    if missing:
        raise HandModelError(path, None, f"expected a pose for every joint; missing: {', '.join(missing)}")
    return out, line_of


def _read_weights(path: Path, skeleton: Skeleton, V: int, renormalize: bool):
    J = skeleton.num_joints
    W = np.zeros((V, J))
    seen = np.zeros(V, dtype=bool)
    line_of = {}
    for n, tok in _lines(path):
        if len(tok) < 3 or len(tok) % 2 != 1:
            raise HandModelError(path, n, f"expected 'vertex_idx name w [name w …]', got {' '.join(tok)!r}")
        try:
            v = int(tok[0])
        except ValueError:
            raise HandModelError(path, n, f"expected an integer vertex index, got {tok[0]!r}") from None
        if not 0 <= v < V:
            raise HandModelError(path, n, f"vertex index {v} out of range: expected 0..{V - 1} (hand.obj has {V})")
        if seen[v]:
            raise HandModelError(path, n, f"vertex {v} appears twice")
        seen[v] = True
        line_of[v] = n
        for name, w in zip(tok[1::2], tok[2::2]):
            if name not in skeleton.names:
                raise HandModelError(path, n, f"unknown joint name {name!r}; expected one of skeleton.txt's names")
            try:
                w = float(w)
            except ValueError:
                raise HandModelError(path, n, f"expected a number for the weight of {name!r}, got {w!r}") from None
            if not np.isfinite(w) or w < 0:
                raise HandModelError(path, n, f"expected a non-negative weight for {name!r}, got {w}")
            W[v, skeleton.names.index(name)] += w
    if not seen.all():
        first = int(np.argmin(seen))
        raise HandModelError(path, None, f"expected weights for every vertex of hand.obj ({V}); "
                             f"{int((~seen).sum())} missing, first vertex {first}")
    sums = W.sum(1)
    bad = np.nonzero(np.abs(sums - 1.0) > 1e-4)[0]
    if len(bad):
        if not renormalize:
            v = int(bad[0])
            raise HandModelError(path, line_of[v], f"weights of vertex {v} sum to {sums[v]:.6g}, expected 1 "
                                 f"({len(bad)} vertices affected; pass renormalize_weights=True to rescale)")
        if np.any(sums <= 0):
            v = int(np.argmin(sums))
            raise HandModelError(path, line_of[v], f"weights of vertex {v} are all zero; cannot renormalize")
        W = W / sums[:, None]
    return W


def read_hand_model(folder, renormalize_weights: bool = False) -> HandModel:
    """Read and validate an official-format ``hand_model/`` folder.

    Raises ``HandModelError`` naming the file and line of the first problem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HandModelError(folder, None, "expected a hand_model folder with " + ", ".join(FILES))
    vertices, faces, uvs, uv_faces = _read_obj(folder / "hand.obj")
    skeleton, skeleton_lines = _read_skeleton(folder / "skeleton.txt")
    weights = _read_weights(folder / "skinning_weight.txt", skeleton, len(vertices), renormalize_weights)
    local, _ = _read_poses(folder / "local_pose.txt", skeleton)
    glob, glob_lines = _read_poses(folder / "global_pose.txt", skeleton)
    inv, inv_lines = _read_poses(folder / "global_pose_inv.txt", skeleton)
    model = HandModel(vertices, faces, uvs, uv_faces, skeleton, weights, local, glob, inv,
                      meta={"source": str(folder)})
    validate_poses(model, folder, glob_lines, inv_lines, skeleton_lines)
    return model


def parent_pose_errors(local_pose: np.ndarray, global_pose: np.ndarray) -> np.ndarray:
    """How well each possible parent explains each joint's bind pose.

    Args:
        local_pose, global_pose: (J, 4, 4) bind poses, mm.
    Returns:
        (J, J + 1) max-abs error of ``global[j] = global[p] @ local[j]`` in column ``p + 1``;
        column 0 is ``global[j] = local[j]`` (no parent). A joint is never its own parent (inf).
    """
    J = len(local_pose)
    cand = global_pose[None, :] @ local_pose[:, None]                       # (J child, J parent, 4, 4)
    err = np.abs(cand - global_pose[:, None]).reshape(J, J, -1).max(-1)     # (J, J)
    err[np.arange(J), np.arange(J)] = np.inf
    root_err = np.abs(local_pose - global_pose).reshape(J, -1).max(-1)
    return np.concatenate([root_err[:, None], err], 1)


def validate_poses(model: HandModel, folder=Path("."), glob_lines=None, inv_lines=None,
                   skeleton_lines=None) -> None:
    """Check bind poses: invertible, global = FK(local), inv = global⁻¹, joints near the mesh.

    When global ≠ FK(local) but the pose files agree with each other under another joint tree
    (e.g. two names swapped in ``skeleton.txt``), the error names ``skeleton.txt`` and the joints
    whose parents disagree instead of blaming ``global_pose.txt``.
    """
    folder = Path(folder)
    sk, names = model.skeleton, model.skeleton.names
    glob_lines = glob_lines or {}
    inv_lines = inv_lines or {}
    scale = float(np.ptp(model.vertices, axis=0).max()) or 1.0
    for j in range(sk.num_joints):
        det = np.linalg.det(model.global_pose[j, :3, :3])
        if abs(det) < 1e-6:
            raise HandModelError(folder / "global_pose.txt", glob_lines.get(j),
                                 f"pose of {names[j]!r} is not invertible (det {det:.3g})")
    # global must equal the chain of local poses
    fk = np.empty_like(model.local_pose)
    for level in sk.levels:
        for j in level:
            p = sk.parents[j]
            fk[j] = model.local_pose[j] if p == -1 else fk[p] @ model.local_pose[j]
    err = np.abs(fk - model.global_pose).reshape(len(fk), -1).max(1)
    tol = 1e-4 * max(scale, 1.0)
    j = int(np.argmax(err))
    if err[j] > tol:
        E = parent_pose_errors(model.local_pose, model.global_pose)
        J = sk.num_joints
        own = E[np.arange(J), np.asarray(sk.parents) + 1]
        wrong = np.nonzero(own > tol)[0]
        if len(wrong) and (E[wrong].min(1) <= tol).all():
            # the pose files agree with each other under another tree: the skeleton is the odd one out
            lines = skeleton_lines or {}
            # a real parent where one fits (a root at the identity fits "no parent" as well)
            implied = np.where(E[:, 1:].min(1) <= tol, E[:, 1:].argmin(1), -1)

            def parent(p):
                return "none (a root)" if p == -1 else repr(names[p])

            detail = "; ".join(f"{names[k]!r} (line {lines.get(names[k], '?')}) has parent {parent(sk.parents[k])} "
                               f"in skeleton.txt but {parent(implied[k])} by the poses" for k in wrong[:4])
            more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
            raise HandModelError(folder / "skeleton.txt", lines.get(names[wrong[0]]),
                                 f"the joint tree is inconsistent with local_pose.txt and global_pose.txt (which "
                                 f"agree with each other under another tree): {detail}{more}; are joint names "
                                 "swapped in skeleton.txt?")
        raise HandModelError(folder / "global_pose.txt", glob_lines.get(j),
                             f"global pose of {names[j]!r} differs from the product of local poses "
                             f"(local_pose.txt) by {err[j]:.4g}; expected global = FK(local)")
    eye = model.global_pose @ model.global_pose_inv
    err = np.abs(eye - np.eye(4)).reshape(len(eye), -1).max(1)
    j = int(np.argmax(err))
    if err[j] > 1e-4:
        raise HandModelError(folder / "global_pose_inv.txt", inv_lines.get(j),
                             f"pose of {names[j]!r} is not the inverse of global_pose.txt's "
                             f"(|G·G⁻¹ − I| = {err[j]:.3g})")
    # unit mix-up: joints must span about as much as the mesh and lie within (a margin around) it
    lo, hi = model.vertices.min(0), model.vertices.max(0)
    pos = model.global_pose[:, :3, 3]
    ratio = float(np.ptp(pos, axis=0).max()) / max(float((hi - lo).max()), 1e-12)
    if not 0.25 <= ratio <= 4.0:
        raise HandModelError(folder / "global_pose.txt", None,
                             f"joints span {np.ptp(pos, axis=0).max():.4g} mm but hand.obj spans "
                             f"{(hi - lo).max():.4g} mm (ratio {ratio:.3g}); expected poses in mm and "
                             "hand.obj in cm (a unit mix-up?)")
    margin = 0.5 * (hi - lo).max()
    outside = np.maximum(lo - margin - pos, pos - hi - margin).max(1)
    j = int(np.argmax(outside))
    if outside[j] > 0:
        raise HandModelError(folder / "global_pose.txt", glob_lines.get(j),
                             f"joint {names[j]!r} at {np.round(pos[j], 3).tolist()} mm lies far outside the "
                             f"mesh (bounding box {np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()} mm); "
                             "expected poses in mm and hand.obj in cm (a unit mix-up?)")


# ---------------------------------------------------------------------------
# writing

# The original reader splits skinning_weight.txt and the three pose files on single spaces and drops
# the last token, so those lines end with a space (as in the released files); skeleton.txt lines must not.
def _write_poses(path: Path, names, poses):
    with open(path, "w", encoding="utf-8") as fh:
        for name, m in zip(names, poses):
            fh.write(name + " " + " ".join(_fmt(x) for x in m.reshape(-1)) + " \n")


#: the first line of every ``hand.obj`` dhmlib writes
WRITER_HEADER = "# dhmlib hand model; vertices in centimetres"
#: ``origin`` of the procedural hands dhmlib builds starts so (``dhm hand-model``, notebook 04, ``dhm synth``)
PROCEDURAL_ORIGIN = "dhmlib procedural hand"


def write_hand_model(model: HandModel, folder, origin: str | None = None) -> Path:
    """Write ``model`` as an official ``hand_model/`` folder; returns the folder.

    ``origin`` (one line) is written as a ``# origin: …`` comment into ``hand.obj`` (readers skip comments),
    so that a later writer can tell a regenerable procedural hand from a user's files
    (:func:`hand_model_origin`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = model.skeleton.names
    with open(folder / "hand.obj", "w", encoding="utf-8") as fh:
        fh.write(WRITER_HEADER + "\n")
        if origin:
            fh.write("# origin: " + " ".join(str(origin).split()) + "\n")
        fh.writelines(f"v {_mm_to_cm_text(x)} {_mm_to_cm_text(y)} {_mm_to_cm_text(z)}\n" for x, y, z in model.vertices)
        fh.writelines(f"vt {_fmt(u)} {_fmt(v)}\n" for u, v in model.uvs)
        fv, ft = model.faces + 1, model.uv_faces + 1
        fh.writelines(f"f {a}/{d} {b}/{e} {c}/{f}\n" for (a, b, c), (d, e, f) in zip(fv.tolist(), ft.tolist()))
    with open(folder / "skeleton.txt", "w", encoding="utf-8") as fh:
        fh.writelines(f"{n} {j} {p}\n" for j, (n, p) in enumerate(zip(names, model.skeleton.parents)))
    with open(folder / "skinning_weight.txt", "w", encoding="utf-8") as fh:
        W = model.skinning_weights
        for v in range(len(W)):
            nz = np.nonzero(W[v])[0]
            fh.write(f"{v} " + " ".join(f"{names[j]} {_fmt(W[v, j])}" for j in nz) + " \n")
    _write_poses(folder / "local_pose.txt", names, model.local_pose)
    _write_poses(folder / "global_pose.txt", names, model.global_pose)
    _write_poses(folder / "global_pose_inv.txt", names, model.global_pose_inv)
    return folder


def hand_model_origin(folder) -> str | None:
    """Who wrote the hand model in ``folder``, from the comments at the top of its ``hand.obj``.

    Returns the ``origin`` given to :func:`write_hand_model` (e.g. ``"dhmlib procedural hand (dhm hand-model
    --seed 0 --vertices 8000)"``), ``"dhmlib"`` for a file dhmlib wrote without one (before origins were
    recorded dhmlib only wrote procedural hands), or None: not written by dhmlib (the official release, a
    user's own hand) or no ``hand.obj``.
    """
    try:
        with open(Path(folder) / "hand.obj", encoding="utf-8", errors="replace") as fh:
            head = [fh.readline().rstrip("\r\n") for _ in range(2)]
    except OSError:
        return None
    if head[0].strip() != WRITER_HEADER:
        return None
    if head[1].startswith("# origin: "):
        return head[1][len("# origin: "):].strip()
    return "dhmlib"


def is_generated_hand_model(folder) -> bool:
    """Whether ``folder`` holds a hand model that dhmlib built procedurally (and can build again)."""
    origin = hand_model_origin(folder)
    return origin is not None and (origin == "dhmlib" or origin.startswith(PROCEDURAL_ORIGIN))


def default_hand_model_dir() -> Path:
    """``$DHM_DATA/hand_model``, or the project's ``data/hand_model`` (see :mod:`dhmlib.paths`)."""
    return data_dir() / "hand_model"
