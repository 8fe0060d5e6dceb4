"""An independent check of ``ablation.json`` against the meshes the variants wrote.

It reads each variant's ``<output>/batch/<batch>/variant-<k>/result/meshes/<frame:06d>.obj`` with a
parser of its own (``v x y z`` lines only), the virtual capture's true meshes
(``annotations/synthetic/subject_1/meshes/<frame:06d>.npy``) with numpy, and recomputes the mean
per-vertex distance, the per-frame paired differences of the ladder and their block means, without
any dhmlib code. Usable on a real run too::

    python tests/ablation_check.py output/result/ablation.json data
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def read_obj_vertices(path: Path) -> np.ndarray:
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.asarray(rows, dtype=np.float64)


def check(ablation_json, data_root, rtol: float = 1e-4) -> dict:
    """Recompute each variant's held-out vertex mean and the ladder's paired means; assert they match.
    Returns ``{key: recomputed vertex mean}``."""
    saved = json.loads(Path(ablation_json).read_text())
    truth_dir = Path(data_root) / "annotations" / "synthetic" / "subject_1" / "meshes"
    table = {row["variant"]: row for row in saved["table"]}
    per_frame, out = {}, {}
    for v in saved["variants"]:
        if v["state"] != "done":
            continue
        meshes = Path(v["meshes"])
        assert meshes.parts[-4:] == ("batch", Path(saved["batch_folder"]).name, f"variant-{v['key']}", "result") + () \
            or meshes.parts[-3:] == (f"variant-{v['key']}", "result", "meshes"), meshes
        frames = sorted(int(p.stem) for p in meshes.glob("*.obj"))
        assert frames, f"{meshes}: no meshes"
        err = np.array([np.linalg.norm(read_obj_vertices(meshes / f"{f:06d}.obj")
                                       - np.load(truth_dir / f"{f:06d}.npy").astype(np.float64), axis=1).mean()
                        for f in frames])
        per_frame[v["key"]] = dict(zip(frames, err))
        out[v["key"]] = float(err.mean())
        got = table[v["key"]]["vertex_mean_mm"]
        assert abs(got - out[v["key"]]) <= rtol * out[v["key"]] + 1e-6, (v["key"], got, out[v["key"]])
    for name, iv in (saved["claims"].get("intervals") or {}).items():
        a, b = iv["before"], iv["after"]
        frames = sorted(set(per_frame[a]) & set(per_frame[b]))
        d = np.array([per_frame[b][f] - per_frame[a][f] for f in frames])
        assert abs(d.mean() - iv["mean"]) <= 1e-4 * max(1.0, abs(d.mean())) + 1e-6, (name, d.mean(), iv["mean"])
    return out


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], sys.argv[2]), indent=1))
