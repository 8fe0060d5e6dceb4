"""Official DeepHandMesh snapshots: ``snapshot_<epoch>.pth.tar``.

Layout (from the public release)::

    {"epoch": int,
     "network": {"module.backbone_net.resnet.*", "module.backbone_net.fc.0.*",
                 "module.pose_net.fc.0/.2.*", "module.skeleton_refine_net.fc_skeleton.0/.2.*",
                 "module.skin_refine_net.fc_pose.0/.2.*", "module.skin_refine_net.fc_id.0/.2.*",
                 "module.id_code", … loss buffers …},
     "optimizer": optimizer state dict}

dhmlib's module names equal the official ones, so keys map one-to-one after
the DataParallel ``module.`` prefix is removed.  Loading uses
``torch.load(weights_only=True)``: a snapshot cannot execute code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbone import infer_resnet_depth
from .handmodel import HandModel

NETWORK_PREFIXES = ("backbone_net.", "pose_net.", "skeleton_refine_net.", "skin_refine_net.", "id_code")


class SnapshotError(ValueError):
    """A snapshot that does not fit the model; the message names the file and tensor."""


@dataclass
class SnapshotInfo:
    path: str
    epoch: int | None
    ignored_keys: list[str] = field(default_factory=list)
    adapted_keys: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def read_snapshot(path, map_location="cpu") -> dict:
    """Load a snapshot file safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: snapshot file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle with code, truncated file, …
        raise SnapshotError(f"{path}: cannot be read as a weights-only snapshot ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or "network" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SnapshotError(f"{path}: expected a dict with key 'network' (and 'epoch', 'optimizer'), got {keys}")
    return ckpt


def network_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The network's state dict without ``module.`` prefixes."""
    out = {}
    for k, v in ckpt["network"].items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _dof_rows(model) -> torch.Tensor:
    return model.pose_net.dof_index


def load_snapshot(model, path, map_location="cpu") -> SnapshotInfo:
    """Load an official-layout snapshot into a :class:`~dhmlib.model.DeepHandMesh`.

    Keys outside the network (loss buffers) are ignored and listed in the
    result.  A PoseNet output layer of J·3 rows (all axes) is reduced to the
    skeleton's DoF rows.  Raises :class:`SnapshotError` naming the tensor and
    both shapes on a mismatch, or the missing tensor.
    """
    return _load_network(model, read_snapshot(path, map_location), path)


def _load_network(model, ckpt: dict, path) -> SnapshotInfo:
    state = network_state(ckpt)
    own = model.state_dict()
    info = SnapshotInfo(str(path), ckpt.get("epoch"))
    new = {}
    for k, v in state.items():
        if k not in own:
            info.ignored_keys.append(k)
            continue
        target = own[k].shape
        if k.startswith("pose_net.fc.2.") and v.shape[0] == 3 * model.hand.num_joints != target[0]:
            v = v[_dof_rows(model).to(v.device)]
            info.adapted_keys.append(k)
        if v.shape != target:
            hint = ""
            if k.startswith("skin_refine_net.") and v.shape[0] != target[0]:
                hint = (f" (the snapshot was trained for a {v.shape[0] // 3}-vertex mesh, the hand model "
                        f"has {target[0] // 3})")
            raise SnapshotError(f"{path}: tensor {k!r} has shape {tuple(v.shape)} in the snapshot but "
                                f"{tuple(target)} in the model{hint}")
        new[k] = v
    missing = [k for k in own if k not in new]
    if missing:
        raise SnapshotError(f"{path}: missing tensor {missing[0]!r} (expected shape {tuple(own[missing[0]].shape)})"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    model.load_state_dict(new, strict=True)
    info.extra = {k: v for k, v in ckpt.items() if k not in ("network", "optimizer")}
    return info


def save_snapshot(path, model, epoch: int, optimizer=None, **extra) -> Path:
    """Write ``model`` in the official layout (``module.`` keys), loadable by the original code.

    ``extra`` entries (e.g. ``config``) are stored beside ``epoch``/``network``/``optimizer``;
    they must be plain containers and tensors to stay weights-only loadable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"module." + k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"epoch": int(epoch), "network": state,
            "optimizer": optimizer.state_dict() if optimizer is not None else {}}
    ckpt.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written snapshot behind
    return path


def model_from_snapshot(path, hand_model: HandModel, map_location="cpu", **switches):
    """Build a :class:`~dhmlib.model.DeepHandMesh` shaped like the snapshot and load it.

    The ResNet depth and identity-code length are read from the tensors.
    """
    from .model import DeepHandMesh

    ckpt = read_snapshot(path, map_location)
    state = network_state(ckpt)
    depth = infer_resnet_depth(k for k in state if k.startswith("backbone_net.resnet."))
    if "id_code" not in state:
        raise SnapshotError(f"{path}: missing tensor 'id_code' (expected shape (32,))")
    model = DeepHandMesh(hand_model, backbone=depth, id_dim=int(state["id_code"].shape[0]), **switches)
    _load_network(model, ckpt, path)
    return model
