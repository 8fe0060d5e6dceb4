"""Plain mesh files: OBJ and binary-free ASCII PLY, vertices in a chosen unit.

Vertices are millimetres inside dhmlib; ``unit="cm"`` writes centimetres
(the unit of the official ``hand.obj``).  Floats are written with ``repr`` so
that a file read back gives the same float64 values.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

_SCALE = {"mm": 1.0, "cm": 0.1, "m": 0.001}


def _scale(unit: str) -> float:
    if unit not in _SCALE:
        raise ValueError(f"unit must be one of {sorted(_SCALE)}, got {unit!r}")
    return _SCALE[unit]


def write_obj(path, vertices, faces, unit: str = "mm", uvs=None, uv_faces=None) -> Path:
    """Write (V, 3) vertices (mm) and (F, 3) 0-based faces as an OBJ file.

    With ``uvs`` (T, 2) and ``uv_faces`` (F, 3) (a :class:`~dhmlib.hand.handmodel.HandModel`'s
    texture coordinates) the file also holds ``vt u v`` lines and ``f v/vt …`` faces, as the
    official ``hand.obj``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(vertices, dtype=np.float64) * _scale(unit)
    f = np.asarray(faces, dtype=np.int64) + 1
    if (uvs is None) != (uv_faces is None):
        raise ValueError("write_obj: uvs and uv_faces go together; got only one of them")
    if uvs is not None:
        uvs = np.asarray(uvs, dtype=np.float64)
        ft = np.asarray(uv_faces, dtype=np.int64) + 1
        if ft.shape != f.shape or uvs.ndim != 2 or uvs.shape[1] != 2:
            raise ValueError(f"write_obj: expected uvs (T, 2) and uv_faces {f.shape}, got {uvs.shape} and {ft.shape}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# dhmlib mesh, {len(v)} vertices, {len(f)} faces, unit {unit}\n")
        fh.write("".join(f"v {x!r} {y!r} {z!r}\n" for x, y, z in v.tolist()))
        fh.write(_obj_connectivity(f.tobytes(), None if uvs is None else uvs.tobytes(),
                                   None if uvs is None else ft.tobytes()))
    return path


@functools.lru_cache(maxsize=4)
def _obj_connectivity(faces: bytes, uvs: bytes | None, uv_faces: bytes | None) -> str:
    """The ``vt`` and ``f`` lines of an OBJ (1-based int64 faces and float64 uvs, as raw bytes).

    Cached: evaluation writes one mesh per frame with the same faces, and these lines are most of
    each file's formatting time.
    """
    f = np.frombuffer(faces, dtype=np.int64).reshape(-1, 3)
    if uvs is None:
        return "".join(f"f {a} {b} {c}\n" for a, b, c in f.tolist())
    uv = np.frombuffer(uvs, dtype=np.float64).reshape(-1, 2)
    ft = np.frombuffer(uv_faces, dtype=np.int64).reshape(-1, 3)
    return ("".join(f"vt {s!r} {t!r}\n" for s, t in uv.tolist())
            + "".join(f"f {a}/{d} {b}/{e} {c}/{g}\n" for (a, b, c), (d, e, g) in zip(f.tolist(), ft.tolist())))


def read_obj_uvs(path):
    """An OBJ's texture coordinates (T, 2) and per-face texture indices (F, 3), 0-based (empty if none)."""
    uvs, uv_faces = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            tok = line.split()
            if tok and tok[0] == "vt":
                uvs.append([float(t) for t in tok[1:3]])
            elif tok and tok[0] == "f":
                parts = [t.split("/") for t in tok[1:4]]
                if all(len(p) > 1 and p[1] for p in parts):
                    uv_faces.append([int(p[1]) - 1 for p in parts])
    return np.asarray(uvs, dtype=np.float64).reshape(-1, 2), np.asarray(uv_faces, dtype=np.int64).reshape(-1, 3)


def read_obj(path, unit: str = "mm"):
    """Read an OBJ's vertices (converted to mm from ``unit``) and triangle faces (0-based)."""
    path = Path(path)
    verts, faces = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            tok = line.split()
            if not tok or tok[0].startswith("#"):
                continue
            if tok[0] == "v":
                verts.append([float(t) for t in tok[1:4]])
            elif tok[0] == "f":
                if len(tok) != 4:
                    raise ValueError(f"{path}:{n}: expected a triangle 'f a b c', got {line.strip()!r}")
                faces.append([int(t.split("/")[0]) - 1 for t in tok[1:4]])
    return np.asarray(verts) / _scale(unit), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def write_ply(path, vertices, faces, colors=None, unit: str = "mm") -> Path:
    """Write an ASCII PLY; ``colors`` (V, 3) uint8 optional."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(vertices, dtype=np.float64) * _scale(unit)
    f = np.asarray(faces, dtype=np.int64)
    head = ["ply", "format ascii 1.0", f"comment dhmlib unit {unit}", f"element vertex {len(v)}",
            "property double x", "property double y", "property double z"]
    if colors is not None:
        head += ["property uchar red", "property uchar green", "property uchar blue"]
    head += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(head) + "\n")
        if colors is None:
            fh.write("".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in v.tolist()))
        else:
            c = np.asarray(colors, dtype=np.uint8).tolist()
            fh.write("".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(v.tolist(), c)))
        fh.write("".join(f"3 {a} {b} {c}\n" for a, b, c in f.tolist()))
    return path


def read_ply(path, unit: str = "mm"):
    """Read an ASCII PLY written by :func:`write_ply` (or any ASCII triangle PLY)."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not lines or lines[0] != "ply" or "format ascii 1.0" not in lines[1]:
        raise ValueError(f"{path}:1: expected an ASCII PLY header ('ply', 'format ascii 1.0')")
    nv = nf = 0
    for i, line in enumerate(lines):
        if line.startswith("element vertex"):
            nv = int(line.split()[2])
        elif line.startswith("element face"):
            nf = int(line.split()[2])
        elif line == "end_header":
            body = lines[i + 1:]
            break
    else:
        raise ValueError(f"{path}: expected 'end_header'")
    v = np.array([[float(t) for t in row.split()[:3]] for row in body[:nv]]).reshape(-1, 3)
    f = np.array([[int(t) for t in row.split()[1:4]] for row in body[nv:nv + nf]], dtype=np.int64).reshape(-1, 3)
    return v / _scale(unit), f
