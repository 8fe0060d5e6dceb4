"""Official DeepHandMesh snapshots: ``snapshot_<epoch>.pth.tar``.

Layout (from the public release)::

    {"epoch": int,
     "network": {"module.backbone_net.resnet.*", "module.backbone_net.fc.0.*",
                 "module.pose_net.fc.0/.2.*", "module.skeleton_refine_net.fc_skeleton.0/.2.*",
                 "module.skin_refine_net.fc_pose.0/.2.*", "module.skin_refine_net.fc_id.0/.2.*",
                 "module.id_code", … loss buffers …},
     "optimizer": optimizer state dict}

Snapshots written by dhmlib add keys beside these: ``"model_config"``, the
model's :class:`~dhmlib.network.model.ModelConfig` as a plain dict, from which
:func:`model_from_snapshot` rebuilds the model, and ``"hand_model"`` / ``"code_version"``:
which hand model (path, content hash) and which code (version, git commit) made it
(:mod:`dhmlib.network.provenance`); the original code ignores them.
A model with ``pose_corrective_kind="linear_rotmat"`` (MANO-style pose blend
shapes) has ``module.skin_refine_net.pose_blend_rotmat.weight`` (V·3, J_b·9)
instead of the ``fc_pose`` tensors (:data:`ROTMAT_KEY`); the original code
cannot load such a snapshot.

dhmlib's module names equal the official ones, so keys map one-to-one after
the DataParallel ``module.`` prefix is removed.  Loading uses
``torch.load(weights_only=True)``: a snapshot cannot execute code.
"""
from __future__ import annotations

import pickletools
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dhmlib.hand.handmodel import HandModel
from dhmlib.network.backbone import infer_resnet_depth
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.provenance import CODE_KEY, HAND_KEY, code_version, hand_model_record

NETWORK_PREFIXES = ("backbone_net.", "pose_net.", "skeleton_refine_net.", "skin_refine_net.", "id_code")
OFFICIAL_KEYS = ("epoch", "network", "optimizer")
CONFIG_KEY = "model_config"
#: the weights of ``ModelConfig(pose_corrective_kind="linear_rotmat")`` (not an official tensor)
ROTMAT_KEY = "skin_refine_net.pose_blend_rotmat.weight"


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
    """Load a snapshot file safely (tensors and plain containers only).

    Raises :class:`SnapshotError` naming the file when it is missing, unreadable (corrupt,
    truncated, not a PyTorch file), would run code when unpickled (refused), or lacks ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: snapshot file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle with code, truncated file, …
        raise SnapshotError(_unreadable_message(path, e)) from None
    if not isinstance(ckpt, dict) or "network" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SnapshotError(f"{path}: expected a dict with key 'network' (and 'epoch', 'optimizer'), got {keys}")
    return ckpt


def _unreadable_message(path: Path, e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in our words.

    PyTorch's own message advises loading with ``weights_only=False``, i.e. running the file's
    code: that advice is never passed on.
    """
    text = str(e)
    found = re.search(r"GLOBAL\s+([\w.]+)", text)
    name = found.group(1) if found else _foreign_global(path)
    if name:
        return (f"{path}: refused: unpickling it would call {name}, and a snapshot may only hold "
                f"tensors and plain containers (weights-only loading); not loaded, nothing was run")
    return (f"{path}: unreadable: the file is corrupt or truncated, or not a PyTorch snapshot "
            f"({type(e).__name__} while reading it; size {path.stat().st_size} bytes)")


def _foreign_global(path: Path) -> str | None:
    """The first global outside torch/collections that a plain (non-zip) pickle file imports, or None.

    Reads the opcodes only (``pickletools``), so nothing is executed.  PyTorch reports such
    globals itself for zip snapshots; a bare pickle can fail earlier, on an opcode it does not
    support, without naming them.
    """
    try:
        data = path.read_bytes()
        strings, memo = [], {}
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                module, name = strings[-2], strings[-1]
            else:
                if isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                    strings.append(arg)
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                    strings.append(memo[int(arg)])
                continue
            if module.split(".")[0] not in ("torch", "collections"):
                return f"{module}.{name}"
    except Exception:  # not a pickle (zip, random bytes, truncated): nothing to name
        return None
    return None


def network_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The network's state dict without ``module.`` prefixes."""
    out = {}
    for k, v in ckpt["network"].items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _dof_rows(model) -> torch.Tensor:
    return model.pose_net.dof_index


def load_snapshot(model, path, map_location="cpu") -> SnapshotInfo:
    """Load an official-layout snapshot into a :class:`~dhmlib.network.model.DeepHandMesh`.

    Keys outside the network (loss buffers) are ignored and listed in the
    result.  A PoseNet output layer of J·3 rows (all axes) is reduced to the
    skeleton's DoF rows.  Raises :class:`SnapshotError` naming the tensor and
    both shapes on a mismatch, or the missing tensor.
    """
    return load_network_state(model, read_snapshot(path, map_location), path)


def load_network_state(model, ckpt: dict, path) -> SnapshotInfo:
    """Load the network tensors of a read snapshot ``ckpt`` into ``model`` (a DeepHandMesh, not wrapped).

    Official snapshots' ``module.`` keys and 3·J-row pose heads are adapted, loss buffers ignored (both
    listed in the returned :class:`SnapshotInfo`); ``path`` names the file in errors. Raises
    :class:`SnapshotError` for a tensor of another shape or one the model needs and the snapshot lacks.
    """
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
        first = min(missing, key=lambda k: k != ROTMAT_KEY)           # the linear pose corrective first
        hint = ""
        if first == ROTMAT_KEY:
            hint = (f": the model is configured with pose_corrective_kind='linear_rotmat'"
                    + (" but the snapshot holds the MLP pose corrective (skin_refine_net.fc_pose.*)"
                       if any(k.startswith("skin_refine_net.fc_pose.") for k in state) else ""))
        raise SnapshotError(f"{path}: missing tensor {first!r} (expected shape {tuple(own[first].shape)})"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + hint)
    model.load_state_dict(new, strict=True)
    info.extra = {k: v for k, v in ckpt.items() if k not in ("network", "optimizer")}
    return info


def save_snapshot(path, model, epoch: int, optimizer=None, *, writer=None, **extra) -> Path:
    """Write ``model`` in the official layout (``module.`` keys), loadable by the original code.

    The model's config is stored as ``model_config`` (a plain dict), the hand model it was built on as
    ``hand_model`` (path, content hash, sizes) and the code as ``code_version`` (:mod:`dhmlib.network.provenance`;
    the original code ignores both).  ``extra`` entries are
    stored beside ``epoch``/``network``/``optimizer``/``model_config`` (which they may not
    replace); they must be plain containers and tensors to stay weights-only loadable. ``writer``: an
    object with ``submit(ckpt, path)`` (e.g. :class:`dhmlib.train.checkpoint.BackgroundSnapshotWriter`)
    that writes the file instead of this call.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"save_snapshot: expected a DeepHandMesh (with a ModelConfig), got {type(model).__name__}")
    taken = [k for k in extra if k in OFFICIAL_KEYS + (CONFIG_KEY,)]
    if taken:
        raise ValueError(f"save_snapshot: extra key {taken[0]!r} would replace the snapshot's own entry")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"module." + k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"epoch": int(epoch), "network": state,
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            CONFIG_KEY: config.to_dict()}
    hand = getattr(getattr(model, "hand", None), "hand_model", None)
    if isinstance(hand, HandModel):
        ckpt[HAND_KEY] = hand_model_record(hand)
        ckpt[CODE_KEY] = dict(code_version())
    ckpt.update(extra)
    if writer is not None:
        writer.submit(ckpt, path)
        return path
    return write_snapshot_file(ckpt, path)


def write_snapshot_file(ckpt: dict, path) -> Path:
    """``torch.save`` of a snapshot dict to ``path`` by way of ``path.tmp`` (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written snapshot behind
    return path


def snapshot_config(ckpt: dict, path="snapshot"):
    """The :class:`~dhmlib.network.model.ModelConfig` of a loaded snapshot, checked against its tensors.

    From ``model_config`` when the snapshot has it (dhmlib's), else guessed from the tensor
    shapes (official snapshots): ResNet depth from the backbone's keys, identity-code length
    from ``id_code``; the corrective switches then take their defaults.  Raises
    :class:`SnapshotError` naming the file and field when the stored config contradicts the tensors.
    """
    state = network_state(ckpt)
    if "id_code" not in state:
        raise SnapshotError(f"{path}: missing tensor 'id_code' (expected shape (32,))")
    depth = infer_resnet_depth(k for k in state if k.startswith("backbone_net.resnet."))
    id_dim = int(state["id_code"].shape[0])
    if CONFIG_KEY not in ckpt:
        return ModelConfig(backbone=depth, id_dim=id_dim)
    try:
        config = ModelConfig.from_dict(ckpt[CONFIG_KEY])
    except (ValueError, TypeError) as e:
        raise SnapshotError(f"{path}: {CONFIG_KEY}: {e}") from None
    _check_shapes(config, depth, id_dim, f"{path}: {CONFIG_KEY}")
    return config


def _check_shapes(config, depth: int, id_dim: int, where: str) -> None:
    if config.backbone != depth:
        raise SnapshotError(f"{where}: backbone={config.backbone}, but the snapshot's tensors are a "
                            f"ResNet-{depth}")
    if config.id_dim != id_dim:
        raise SnapshotError(f"{where}: id_dim={config.id_dim}, but the snapshot's 'id_code' has {id_dim} entries")


def model_from_snapshot(path, hand_model: HandModel, map_location="cpu", *, ckpt: dict | None = None, **overrides):
    """Build a :class:`~dhmlib.network.model.DeepHandMesh` from a snapshot and load its weights.

    The config comes from the snapshot (see :func:`snapshot_config`); ``overrides`` replace its
    fields (``ModelConfig.replace``), e.g. ``pose_corrective=False``.  An override of
    ``backbone`` or ``id_dim`` must agree with the tensors. ``ckpt``: the snapshot already read
    (:func:`read_snapshot`), so that it is not read twice.
    """
    if ckpt is None:
        ckpt = read_snapshot(path, map_location)
    config = snapshot_config(ckpt, path)
    if overrides:
        guessed = (config.backbone, config.id_dim)
        config = config.replace(**overrides)
        _check_shapes(config, *guessed, f"{path}: override")
    model = DeepHandMesh(hand_model, config)
    load_network_state(model, ckpt, path)
    return model
