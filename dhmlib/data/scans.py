"""Decimated 3D scans: ``annotations/3D_scans_decimated/subject_N/<frame:06d>.ply``.

The official release ships, per subject, decimated scans of the hand surface as
triangle PLY files named by frame (``<frame:06d>.ply``), in world coordinates and
millimetres (the frame and units of the keypoints and cameras). The public code
never reads them; third-party code loads them as vertices + triangles. Which frames
have a scan is whatever files exist (:meth:`~dhmlib.data.layout.Layout.scan_frames`).

:func:`read_scan` reads ASCII and binary (little- or big-endian) PLY with any extra
element or property; :func:`write_scan` writes binary little-endian PLY (float32
``x y z``, ``uchar``-counted ``int`` triangles), as the virtual capture does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["ScanError", "read_scan", "write_scan"]

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


class ScanError(ValueError):
    """A malformed scan file; the message names the file (and line for the header or ASCII body)."""


def write_scan(path, vertices, faces) -> Path:
    """Write a triangle mesh as binary little-endian PLY.

    Args:
        path: target file (parents created).
        vertices: (N, 3) world mm (stored as float32).
        faces: (F, 3) vertex indices (stored as int32).
    """
    path = Path(path)
    v = np.ascontiguousarray(vertices, dtype="<f4")
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"{path}: expected vertices (N, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    rec = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rec["n"], rec["i"] = 3, f
    head = ("ply\nformat binary_little_endian 1.0\ncomment dhmlib scan, world mm\n"
            f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
            f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(head.encode("ascii"))
        fh.write(v.tobytes())
        fh.write(rec.tobytes())
    return path


def _parse_header(path: Path, data: bytes):
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ScanError(f"{path}:1: expected a PLY file ('ply' … 'end_header')")
    nl = data.find(b"\n", end)
    body_at = len(data) if nl < 0 else nl + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, elements = None, []  # elements: [name, count, [(name, dtype) | (name, count dtype, item dtype)]]
    for no, line in enumerate(lines, 1):
        tok = line.split()
        if not tok or tok[0] in ("ply", "comment", "obj_info"):
            continue
        where = f"{path}:{no}"
        if tok[0] == "format":
            if len(tok) < 2 or tok[1] not in _FORMATS:
                raise ScanError(f"{where}: unknown format {line!r}; expected ascii, binary_little_endian or "
                                "binary_big_endian")
            fmt = tok[1]
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise ScanError(f"{where}: expected 'element <name> <count>', got {line!r}")
            elements.append([tok[1], int(tok[2]), []])
        elif tok[0] == "property":
            if not elements:
                raise ScanError(f"{where}: property before any element")
            if len(tok) == 5 and tok[1] == "list" and tok[2] in _PLY_TYPES and tok[3] in _PLY_TYPES:
                elements[-1][2].append((tok[4], _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise ScanError(f"{where}: expected 'property <type> <name>' or 'property list <type> <type> "
                                f"<name>', got {line!r}")
        else:
            raise ScanError(f"{where}: unexpected header line {line!r}")
    if fmt is None:
        raise ScanError(f"{path}:2: missing 'format' line")
    return fmt, elements, body_at, len(lines) + 2  # the body's first line number


def _triangles(path: Path, lists: list[np.ndarray]) -> np.ndarray:
    """Polygons → (F, 3) triangles (fans for polygons with more than 3 corners)."""
    tris = []
    for k, poly in enumerate(lists):
        if len(poly) < 3:
            raise ScanError(f"{path}: face {k} has {len(poly)} vertices; expected at least 3")
        tris += [(poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _read_binary(path, data, at, order, elements):
    out = {}
    for name, count, props in elements:
        if all(len(p) == 2 for p in props):  # fixed-size records
            dt = np.dtype([(p[0], order + p[1]) for p in props])
            n = dt.itemsize * count
            if at + n > len(data):
                raise ScanError(f"{path}: file ends inside element {name!r} (expected {count} records of "
                                f"{dt.itemsize} bytes)")
            out[name] = np.frombuffer(data, dt, count, at)
            at += n
            continue
        if len(props) == 1:  # one list per record (faces): try all-triangles first
            pname, ct, it = props[0]
            dt = np.dtype([("n", order + ct), ("i", order + it, (3,))])
            n = dt.itemsize * count
            if at + n <= len(data):
                rec = np.frombuffer(data, dt, count, at)
                if (rec["n"] == 3).all():
                    out[name] = {pname: rec["i"].astype(np.int64)}
                    at += n
                    continue
        rows = []  # general case: record by record
        for k in range(count):
            row = {}
            for p in props:
                try:
                    if len(p) == 2:
                        dt = np.dtype(order + p[1])
                        row[p[0]] = np.frombuffer(data, dt, 1, at)[0]
                        at += dt.itemsize
                    else:
                        ct, it = np.dtype(order + p[1]), np.dtype(order + p[2])
                        m = int(np.frombuffer(data, ct, 1, at)[0])
                        at += ct.itemsize
                        row[p[0]] = np.frombuffer(data, it, m, at).astype(np.int64)
                        at += it.itemsize * m
                except ValueError:
                    raise ScanError(f"{path}: file ends inside element {name!r} record {k}") from None
            rows.append(row)
        out[name] = rows
    return out


def _read_ascii(path, data, at, first_line, elements):
    lines = data[at:].decode("ascii", errors="replace").splitlines()
    out, i = {}, 0
    for name, count, props in elements:
        rows = []
        for k in range(count):
            while i < len(lines) and not lines[i].strip():
                i += 1
            if i >= len(lines):
                raise ScanError(f"{path}:{first_line + i}: file ends inside element {name!r} (record {k} of {count})")
            tok, row, j = lines[i].split(), {}, 0
            try:
                for p in props:
                    if len(p) == 2:
                        row[p[0]] = float(tok[j])
                        j += 1
                    else:
                        m = int(tok[j])
                        row[p[0]] = np.array([int(t) for t in tok[j + 1:j + 1 + m]], dtype=np.int64)
                        if len(row[p[0]]) != m:
                            raise IndexError
                        j += 1 + m
            except (ValueError, IndexError):
                raise ScanError(f"{path}:{first_line + i}: expected element {name!r} with properties "
                                f"{[p[0] for p in props]}, got {lines[i]!r}") from None
            rows.append(row)
            i += 1
        out[name] = rows
    return out


def read_scan(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a scan (triangle PLY, ASCII or binary).

    Returns:
        vertices (N, 3) float64 (the file's units; the official scans are world mm),
        faces (F, 3) int64 (polygons split into fans; (0, 3) for a point cloud).

    Raises:
        ScanError: missing file, malformed header or body, no ``x y z`` vertex
            properties, or face indices out of range; the message names the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"{path}: scan file not found")
    data = path.read_bytes()
    fmt, elements, at, first_line = _parse_header(path, data)
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise ScanError(f"{path}: no 'element vertex' in the header")
    vprops = [p[0] for p in elements[names.index("vertex")][2]]
    if not {"x", "y", "z"} <= set(vprops):
        raise ScanError(f"{path}: vertex properties {vprops}; expected x, y, z")
    body = (_read_ascii(path, data, at, first_line, elements) if fmt == "ascii"
            else _read_binary(path, data, at, _FORMATS[fmt], elements))
    vert = body["vertex"]
    if isinstance(vert, np.ndarray):
        v = np.stack([vert["x"], vert["y"], vert["z"]], -1).astype(np.float64)
    else:
        v = np.array([[r["x"], r["y"], r["z"]] for r in vert], dtype=np.float64).reshape(-1, 3)
    f = np.zeros((0, 3), dtype=np.int64)
    if "face" in names:
        fprops = [p[0] for p in elements[names.index("face")][2] if len(p) == 3]
        key = next((k for k in ("vertex_indices", "vertex_index") if k in fprops), None)
        if key is None:
            raise ScanError(f"{path}: face element without a 'vertex_indices' list property")
        face = body["face"]
        f = face[key] if isinstance(face, dict) else _triangles(path, [r[key] for r in face])
        if len(f) and (f.min() < 0 or f.max() >= len(v)):
            raise ScanError(f"{path}: face indices span {f.min()}…{f.max()}; expected 0…{len(v) - 1}")
    return v, f
