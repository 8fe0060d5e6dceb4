"""Scan files (dhmlib.data.scans) and the clustering decimation that the virtual capture uses."""
from __future__ import annotations

import numpy as np
import pytest

from dhmlib.data.scans import ScanError, read_scan, write_scan
from dhmlib.mesh.io import write_ply
from dhmlib.synth.meshops import decimate_by_clustering

V = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 0], [0, 0, 10]], dtype=np.float64)
F = np.array([[0, 1, 2], [1, 3, 2], [0, 4, 1]])


def test_binary_round_trip_and_ascii_ply(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(0, 50, (300, 3))
    f = rng.integers(0, 300, (500, 3))
    write_scan(tmp_path / "a.ply", v, f)
    rv, rf = read_scan(tmp_path / "a.ply")
    assert np.array_equal(rv, v.astype(np.float32).astype(np.float64)) and np.array_equal(rf, f)
    write_ply(tmp_path / "b.ply", v, f, colors=rng.integers(0, 255, (300, 3)))   # ASCII, double, with colours
    rv, rf = read_scan(tmp_path / "b.ply")
    assert np.array_equal(rv, v) and np.array_equal(rf, f)


def test_big_endian_extra_properties_and_polygons(tmp_path):
    """binary_big_endian, doubles, an extra vertex property, a quad (fan), an extra face property."""
    head = ("ply\nformat binary_big_endian 1.0\ncomment other writer\nelement vertex 5\nproperty double x\n"
            "property double y\nproperty double z\nproperty float confidence\nelement face 2\n"
            "property list uchar int vertex_indices\nproperty uchar flag\nend_header\n").encode()
    vrec = np.zeros(5, dtype=[("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("c", ">f4")])
    vrec["x"], vrec["y"], vrec["z"] = V.T
    body = vrec.tobytes()
    body += np.array([4], ">u1").tobytes() + np.array([0, 1, 3, 2], ">i4").tobytes() + b"\x07"
    body += np.array([3], ">u1").tobytes() + np.array([0, 4, 1], ">i4").tobytes() + b"\x00"
    (tmp_path / "be.ply").write_bytes(head + body)
    v, f = read_scan(tmp_path / "be.ply")
    assert np.array_equal(v, V)
    assert f.tolist() == [[0, 1, 3], [0, 3, 2], [0, 4, 1]]


@pytest.mark.parametrize("text, message", [
    ("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
     "end_header\n1 2 3\n4 five 6\n", r"x\.ply:9: expected element 'vertex'"),
    ("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
     "end_header\n1 2 3\n", r"x\.ply:9: file ends inside element 'vertex'"),
    ("ply\nformat ascii 1.0\nelement vertex 1\nproperty flot x\nend_header\n", r"x\.ply:4: expected 'property"),
    ("ply\nformat utf8 1.0\nend_header\n", r"x\.ply:2: unknown format"),
    ("solid stl\n", r"x\.ply:1: expected a PLY file"),
    ("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nend_header\n1 2\n",
     r"vertex properties \['x', 'y'\]; expected x, y, z"),
    ("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
     "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n3 0 0 1\n",
     r"face indices span 0…1; expected 0…0"),
])
def test_errors_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "x.ply").write_text(text)
    with pytest.raises(ScanError, match=message):
        read_scan(tmp_path / "x.ply")


def test_truncated_binary_and_missing_file(tmp_path):
    write_scan(tmp_path / "t.ply", V, F)
    data = (tmp_path / "t.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[:-20])
    with pytest.raises(ScanError, match=r"t\.ply: file ends inside element 'face'"):
        read_scan(tmp_path / "t.ply")
    with pytest.raises(ScanError, match=r"nope\.ply: scan file not found"):
        read_scan(tmp_path / "nope.ply")


def test_decimation_keeps_original_vertices_of_a_fine_grid():
    n = 41  # a 40 × 40 mm plate of 1 mm squares, two triangles each
    x, y = np.meshgrid(np.arange(n, dtype=float), np.arange(n, dtype=float), indexing="ij")
    v = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], 1)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[1:, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    keep, df = decimate_by_clustering(v, f, 200)
    assert abs(len(keep) - 200) < 40 and np.all(np.diff(keep) > 0)
    assert np.array_equal(np.unique(df), np.arange(len(keep)))            # all referenced, none unused
    assert np.all((df[:, 0] != df[:, 1]) & (df[:, 1] != df[:, 2]) & (df[:, 0] != df[:, 2]))
    assert len(np.unique(np.sort(df, 1), axis=0)) == len(df)
    # the decimated plate still covers the plate: total area within 10 %, every point within 3 mm
    e1, e2 = v[keep][df[:, 1]] - v[keep][df[:, 0]], v[keep][df[:, 2]] - v[keep][df[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1).sum()
    assert abs(area - 40 * 40) < 160
    dist = np.sqrt(((v[:, None] - v[keep][None]) ** 2).sum(-1)).min(1)
    assert dist.max() < 3.0
    again = decimate_by_clustering(v, f, 200)
    assert np.array_equal(again[0], keep) and np.array_equal(again[1], df)
