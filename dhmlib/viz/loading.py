"""Find the model the posing notebook drives: hand model folder + optional snapshot."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dhmlib.hand.handmodel import PROCEDURAL_ORIGIN, HandModel, default_hand_model_dir
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.provenance import pick_hand_model
from dhmlib.network.snapshot import SnapshotError, model_from_snapshot, read_snapshot
from dhmlib.paths import output_dir
from dhmlib.synth import build_procedural_hand
from dhmlib.synth.deform import DeformParams, GroundTruthDeformer


@dataclass(frozen=True)
class PosingModel:
    """What :func:`load_posing_model` found.

    Attributes:
        model: a ``DeepHandMesh`` (correctives zero unless a snapshot was loaded).
        hand_model_dir: the folder the hand model was read from.
        snapshot: the snapshot file loaded, or None.
        built: whether the procedural hand was built into ``hand_model_dir`` by this call.
    """

    model: object
    hand_model_dir: Path
    snapshot: Path | None
    built: bool

    def describe(self) -> str:
        hm = self.model.hand.hand_model
        src = f"snapshot {self.snapshot}" if self.snapshot else "no snapshot (untrained: correctives are zero)"
        made = " (built now)" if self.built else ""
        return f"hand model {self.hand_model_dir}{made}: {hm.num_vertices} vertices; {src}"


def default_output_dir() -> Path:
    """``$DHM_OUTPUT/vis``, or the project's ``output/vis`` (where the widget exports meshes and pictures)."""
    return output_dir("vis")


def latest_snapshot(folder=None) -> Path | None:
    """The ``snapshot_<epoch>.pth.tar`` with the highest epoch in ``folder``
    (default ``$DHM_OUTPUT/model_dump``, or the project's ``output/model_dump``), or None."""
    folder = Path(folder) if folder is not None else output_dir("model_dump")
    found = []
    for p in folder.glob("snapshot_*.pth.tar"):
        m = re.fullmatch(r"snapshot_(\d+)\.pth\.tar", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def capture_ground_truth(hand_model: HandModel, identity_seed: int, params=None):
    """The virtual capture's true surface of ``hand_model`` as a widget ground truth.

    Returns a callable ``euler (J, 3) radians → (V, 3) mm``: identity bone lengths and surface shape
    (``identity_seed``), the pose-dependent skin effects and dual-quaternion skinning
    (:mod:`dhmlib.synth.deform`), with the root at its bind pose like ``decode``.  Its distance to the
    model's mesh is what linear blend skinning cannot express and the correctives have to learn.
    ``params``: the capture's :class:`~dhmlib.synth.deform.DeformParams` (or its ``params.json`` dict,
    read with ``DeformParams.from_dict``, so a capture written before an effect existed keeps it off);
    default: today's defaults.
    """
    if isinstance(params, dict):
        params = DeformParams.from_dict(params)
    deformer = GroundTruthDeformer(hand_model, int(identity_seed), params)
    root = hand_model.global_pose[hand_model.skeleton.root][None]               # (1, 4, 4)

    def ground_truth(euler):
        return deformer(np.asarray(euler, dtype=np.float64)[None], root).vertices[0]

    return ground_truth


def load_posing_model(hand_model_dir: str | os.PathLike = "", snapshot: str | os.PathLike = "",
                      vertices: int = 8000, backbone: int = 18) -> PosingModel:
    """Load (or build) a hand model and wrap it in a ``DeepHandMesh`` for posing.

    Args:
        hand_model_dir: official-format ``hand_model/`` folder.  ``""`` means
            ``$DHM_DATA/hand_model`` (default ``data/hand_model``), where the procedural hand
            (``vertices`` target) is built and written if the folder has no ``hand.obj``.
        snapshot: ``""`` for none, ``"latest"`` for the newest training checkpoint in
            ``output/model_dump`` if there is one (one that does not fit the hand model is
            skipped with a warning), or a path (errors are raised). With ``hand_model_dir`` ``""``
            the hand model the snapshot was trained on is used when it is found (printed;
            :func:`dhmlib.network.provenance.pick_hand_model`).
        vertices: target vertex count of a procedural hand built here.
        backbone: ResNet depth of the untrained model (a snapshot brings its own).
    """
    built = False
    if str(hand_model_dir) == "":
        folder = default_hand_model_dir()
        if not (folder / "hand.obj").is_file():
            build_procedural_hand(target_vertices=int(vertices)).write(
                folder, origin=f"{PROCEDURAL_ORIGIN} (load_posing_model, notebook 04: seed 0, {int(vertices)} vertices)")
            built = True
    else:
        folder = Path(hand_model_dir)
    hand = HandModel.read(folder)

    def snapshot_hand(path):
        """With no hand model named: the one ``path`` was trained on when it is found (said so), else ours."""
        if str(hand_model_dir) != "":
            return hand, folder

        try:
            picked = pick_hand_model(read_snapshot(path), path, None, default_dir=folder, log=print)
        except (FileNotFoundError, SnapshotError):
            return hand, folder
        return picked, Path(picked.meta.get("source") or folder)

    path = None
    if str(snapshot) == "latest":
        path = latest_snapshot()
        if path is not None:
            try:
                h, f = snapshot_hand(path)
                return PosingModel(model_from_snapshot(path, h).eval(), f, path, built)
            except SnapshotError as e:
                warnings.warn(f"skipping {path}: {e}", stacklevel=2)
                path = None
    elif str(snapshot) != "":
        path = Path(snapshot)
        h, f = snapshot_hand(path)
        return PosingModel(model_from_snapshot(path, h).eval(), f, path, built)
    return PosingModel(DeepHandMesh(hand, ModelConfig(backbone=backbone)).eval(), folder, None, built)
