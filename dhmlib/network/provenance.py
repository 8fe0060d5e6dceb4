"""What a snapshot or a result was made with: the hand model's identity and the code version.

Every snapshot dhmlib writes (:func:`dhmlib.network.snapshot.save_snapshot`) and every ``metrics.json`` of
``dhm test`` holds::

    "hand_model":   {"path": absolute folder it was read from (or None), "sha256": content hash,
                     "vertices": V, "faces": F, "joints": J, "origin": who wrote it (hand.obj's comment)}
    "code_version": {"dhmlib": package version, "git_commit": the checkout's commit (or None),
                     "git_dirty": uncommitted changes under dhmlib/ (or None)}

The hash is of the model's content (names, tree, faces, vertices, weights, bind poses; floats
rounded to 1e-6 mm), not of the files, so the same hand hashes alike wherever and however it
was written. :func:`pick_hand_model` is how ``dhm demo``/``fit``/``test`` find the hand model a
snapshot was trained on when none is named.
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from dhmlib import __version__
from dhmlib.data.layout import Layout
from dhmlib.hand.handmodel import HandModel, default_hand_model_dir, hand_model_origin

HAND_KEY = "hand_model"
CODE_KEY = "code_version"


def hand_model_sha256(hand: HandModel) -> str:
    """Content hash of a hand model (hex): the same hand gives the same hash however it was written."""
    h = hashlib.sha256()
    h.update("\n".join(hand.skeleton.names).encode())
    h.update(np.asarray(hand.skeleton.parents, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(hand.faces, dtype=np.int64).tobytes())
    for a in (hand.vertices, hand.skinning_weights, hand.local_pose):
        h.update(np.ascontiguousarray(np.round(np.asarray(a, dtype=np.float64), 6) + 0.0).tobytes())
    return h.hexdigest()


def hand_model_record(hand: HandModel) -> dict:
    """The ``hand_model`` entry of a snapshot or ``metrics.json`` (plain types only)."""
    source = hand.meta.get("source")
    path = str(Path(source).resolve()) if source else None
    return {"path": path, "sha256": hand_model_sha256(hand), "vertices": int(hand.num_vertices),
            "faces": int(len(hand.faces)), "joints": int(hand.num_joints),
            "origin": hand_model_origin(path) if path else hand.meta.get("generator")}


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The ``code_version`` entry: dhmlib's version, and the git commit of the checkout it runs from."""
    commit = dirty = None
    root = Path(__file__).resolve().parents[2]        # the checkout: dhmlib/network/provenance.py
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
            if commit:
                status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                         "--", "dhmlib"], capture_output=True, text=True, timeout=10)
                dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = dirty = None
    return {"dhmlib": __version__, "git_commit": commit, "git_dirty": dirty}


def snapshot_vertex_count(ckpt: dict) -> int | None:
    """V of the hand a snapshot's skin corrective was built for (from ``fc_id``'s output rows), or None."""
    net = ckpt.get("network") if isinstance(ckpt, dict) else None
    if not isinstance(net, dict):     # a snapshot without a network: nothing to say
        return None
    w = net.get("module.skin_refine_net.fc_id.2.weight", net.get("skin_refine_net.fc_id.2.weight"))
    return None if w is None else int(w.shape[0]) // 3


def _short(sha: str | None) -> str:
    return (sha or "?")[:12]


def candidate_folders(default_dir: Path) -> list[Path]:
    """Where to look for a hand model: ``default_dir`` and the virtual capture's per-subject hands beside it."""
    data_root = Path(default_dir).parent
    found = [Path(default_dir)]
    found += sorted(Layout(data_root).synthetic_root.glob("subject_*/hand_model"))
    return found


def pick_hand_model(ckpt: dict | None, snapshot_name, named=None, default_dir=None,
                    log: Callable[[str], None] | None = None,
                    warn: Callable[[str], None] | None = None) -> HandModel:
    """The hand model to use with a snapshot.

    ``named`` (the user's ``--hand-model``) is used as it is; a hash that differs from the one the snapshot
    records is a warning. Otherwise the snapshot's recorded hand model is looked for in ``default_dir``
    (``$DHM_DATA/hand_model``), its recorded folder and the virtual capture's hands beside ``default_dir``; the
    first with the recorded hash is used and ``log`` says which when it is not ``default_dir``. A snapshot without a record (official, or older) takes the
    first of those folders whose vertex count its tensors fit.

    Raises:
        FileNotFoundError: none of them is the hand model the snapshot needs (the message names the
            recorded path, hash and vertex count, and what was found).
    """
    rec = (ckpt or {}).get(HAND_KEY) if isinstance((ckpt or {}).get(HAND_KEY), dict) else None
    want_v = (rec or {}).get("vertices") or (snapshot_vertex_count(ckpt) if ckpt is not None else None)
    if named:
        hand = HandModel.read(named)
        if rec and rec.get("sha256") and hand_model_sha256(hand) != rec["sha256"] and warn is not None:
            warn(f"{snapshot_name} was trained on another hand model ({rec.get('path')}, sha256 "
                 f"{_short(rec.get('sha256'))}…, {rec.get('vertices')} vertices) than --hand-model {named}")
        return hand
    default_dir = Path(default_dir) if default_dir is not None else default_hand_model_dir()
    folders = [default_dir]                  # the default first: when it is the one, nothing needs saying
    if rec and rec.get("path"):
        folders.append(Path(rec["path"]))
    folders += [f for f in candidate_folders(default_dir) if f.resolve() not in {g.resolve() for g in folders}]
    seen = []
    for folder in folders:
        if not (folder / "hand.obj").is_file():
            continue
        try:
            hand = HandModel.read(folder)
        except Exception:   # noqa: BLE001 (a broken candidate is just not the one)
            continue
        seen.append(f"{folder} ({hand.num_vertices} vertices)")
        if rec and rec.get("sha256"):
            ok = hand_model_sha256(hand) == rec["sha256"]
        else:
            ok = want_v is None or hand.num_vertices == want_v
        if ok:
            if folder.resolve() != default_dir.resolve() and log is not None:
                why = (f"sha256 {_short(rec['sha256'])}…" if rec and rec.get("sha256")
                       else f"{hand.num_vertices} vertices")
                log(f"using the hand model {folder}: the one {snapshot_name} was trained on ({why}); "
                    "--hand-model picks another")
            return hand
    if rec and rec.get("sha256"):
        what = (f"the hand model {rec.get('path')} (sha256 {_short(rec['sha256'])}…, {rec.get('vertices')} "
                "vertices)")
    else:
        what = f"a hand model with {want_v} vertices"
    raise FileNotFoundError(f"{snapshot_name} was trained on {what}; found "
                            f"{', '.join(seen) if seen else 'no hand model'} in {default_dir.parent}. "
                            "Pass --hand-model FOLDER")
