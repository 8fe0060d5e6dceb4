"""The template + LBS baseline of a held-out take, computed once per capture and kept.

The baseline (:func:`dhmlib.evaluation.held_out.lbs_baseline`: the template skinned by LBS at the true
and at fitted angles) does not depend on the snapshot under test, yet it was most of a full
``dhm test``: a 420-step pose fit over 24 views and two measurements. Its summaries (what
``metrics.json`` stores under ``baseline``) are kept as ``<cache_dir>/lbs_baseline_<key>.json``.

``key`` hashes everything the numbers depend on, so a stale file is never read:
the hand model's arrays (its sha256), the frames and, per frame, the cameras measured; the render size
and crop mode; the fit settings (steps, depth share, device type); the size and modification time of
every source file the baseline reads (KRT_512, keypoint files, the frames' depth maps, the virtual
capture's truth and the scans); and the source text of the modules that compute it (a code change
recomputes). Files are written atomically (temporary name, then rename).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import dhmlib
from dhmlib.data.layout import Layout

#: the modules whose source is part of the key (the fit, the renders, the metrics and their inputs)
CODE_MODULES = ("evaluation/held_out.py", "evaluation/result.py", "network/fit.py", "network/model.py",
                "hand/kinematics.py", "hand/layer.py", "render/depth.py", "render/zbuffer_cpu.py",
                "render/interpolate_cpu.py", "render/cameras.py", "render/crop.py", "metrics/errors.py",
                "metrics/mesh.py", "mesh/distance.py", "data/ground_truth.py", "data/dataset.py", "losses/penetration.py")
CACHE_VERSION = 1


def _stat(h, path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        h.update(f"{path.name}:absent;".encode())
        return
    h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())


def _tree(h, folder: Path) -> None:
    """Names, sizes and mtimes of every file under ``folder`` (absent: noted)."""
    if not folder.is_dir():
        h.update(f"{folder.name}:absent;".encode())
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            _stat(h, Path(dirpath) / name)


def baseline_key(data_root, subject: int, frames: Sequence[int], views: Sequence[Sequence[str]], *,
                 hand_sha256: str, render_size, crop_mode: str, fit_steps: int, fit: bool, device_type: str,
                 depth_share) -> str:
    """The cache key (20 hex digits) of a baseline run; see the module docstring for what it covers."""
    lay = Layout(data_root, subject)
    h = hashlib.sha1()
    h.update(json.dumps({"version": CACHE_VERSION, "hand": hand_sha256, "frames": [int(f) for f in frames],
                         "views": [list(v) for v in views], "render_size": list(render_size),
                         "crop_mode": crop_mode, "fit_steps": int(fit_steps), "fit": bool(fit),
                         "device": device_type, "depth_share": list(depth_share),
                         "root": str(Path(data_root).resolve()), "subject": int(subject)}, sort_keys=True).encode())
    _stat(h, lay.krt)
    for f in frames:
        _stat(h, lay.keypoints_path(f))
        _tree(h, lay.depth_dir / f"{int(f):06d}")
    _tree(h, lay.synthetic_dir)
    _tree(h, lay.scans_dir)
    package = Path(dhmlib.__file__).resolve().parent
    for rel in CODE_MODULES:
        h.update(rel.encode())
        h.update((package / rel).read_bytes())
    return h.hexdigest()[:20]


def cached_baseline(cache_dir, key: str, compute: Callable[[], dict],
                    log: Callable[[str], None] | None = None, refresh: bool = False) -> tuple[dict, bool]:
    """``(summaries, from_cache)``: the JSON-able dict that ``compute()`` returns, read from
    ``<cache_dir>/lbs_baseline_<key>.json`` when it is there and readable, else computed and written.
    ``cache_dir`` None: always computed, nothing written. ``refresh``: computed even when the file is there,
    and the file replaced."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"lbs_baseline_{key}.json"
    if path.is_file() and not refresh:
        try:
            doc = json.loads(path.read_text())
            if doc.get("key") == key and isinstance(doc.get("baseline"), dict):
                if log:
                    log(f"LBS baseline: {path} (computed earlier for the same capture, hand model, settings "
                        "and code)")
                return doc["baseline"], True
        except (OSError, ValueError) as exc:
            (log or print)(f"LBS baseline: {path} unreadable ({type(exc).__name__}: {exc}); computing it again")
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "baseline": out}, indent=1))
    tmp.replace(path)
    return out, False
