"""Training snapshots: the official layout plus what a bit-exact ``--continue`` needs.

Files live in ``<output_root>/model_dump/``:

- ``snapshot_<epoch>.pth.tar``: written after epoch ``<epoch>`` (0-based) ends, as in the
  original code (which resumes at ``epoch + 1``);
- ``snapshot_<epoch>_step<k>.pth.tar``: written mid-epoch, during epoch ``<epoch>``, after global
  step ``k`` (the optional interval).

Newest first means by (epoch, end-of-epoch after mid-epoch, step).  Each file is a
:func:`dhmlib.network.snapshot.save_snapshot` snapshot (``epoch``, ``network`` with ``module.`` keys,
``optimizer``, ``model_config``; loadable by the original code) with these extras beside it
(:data:`TRAIN_STATE_KEYS`)::

    "train_config":   dict               the TrainConfig as a plain dict
    "scheduler":      dict | None        LR scheduler state
    "rng":            dict               torch CPU (uint8 tensor), CUDA (list of tensors or None),
                                         numpy (dict of plain values + tensor), python random
                                         (version, int64 tensor, gauss)
    "sampler":        dict | None        ResumableSampler.state_dict(): epoch, seed, position, …
    "pose_embedding": dict | None        state dict of the per-frame pose embedding
    "step":           int                global optimizer step count
    "mid_epoch":      bool               written during ``epoch`` rather than at its end

Everything is tensors and plain containers, so files load with ``torch.load(weights_only=True)``
(:func:`dhmlib.network.snapshot.read_snapshot`); writing is atomic (temporary file, then rename).
"""
from __future__ import annotations

import math
import random
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dhmlib.network.snapshot import SnapshotError, load_network_state, read_snapshot, save_snapshot, write_snapshot_file

TRAIN_STATE_KEYS = ("train_config", "scheduler", "rng", "sampler", "pose_embedding", "step")
MID_EPOCH_KEY = "mid_epoch"
MODEL_DUMP = "model_dump"
_NAME = re.compile(r"^snapshot_(\d+)(?:_step(\d+))?\.pth\.tar$")


# ------------------------------------------------------------------ names
def snapshot_path(output_root, epoch: int, step: int | None = None) -> Path:
    """``<output_root>/model_dump/snapshot_<epoch>.pth.tar``; with ``step``: ``snapshot_<epoch>_step<step>.pth.tar``.

    ``epoch`` is 0-based; without ``step`` the file marks the end of that epoch, with ``step``
    (the global step count) a point during it.
    """
    if int(epoch) < 0 or (step is not None and int(step) < 0):
        raise ValueError(f"snapshot_path: epoch and step must be >= 0, got epoch={epoch}, step={step}")
    name = f"snapshot_{int(epoch)}.pth.tar" if step is None else f"snapshot_{int(epoch)}_step{int(step)}.pth.tar"
    return Path(output_root) / MODEL_DUMP / name


def parse_snapshot_name(name: str) -> tuple[int, int | None] | None:
    """``"snapshot_3.pth.tar"`` → (3, None); ``"snapshot_3_step120.pth.tar"`` → (3, 120); else None."""
    m = _NAME.match(Path(name).name)
    if m is None:
        return None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def _order(epoch: int, step: int | None) -> tuple:
    # end-of-epoch after every mid-epoch snapshot of the same epoch
    return (epoch, 1, 0) if step is None else (epoch, 0, step)


# --------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """The global RNG states as tensors and plain values (weights_only-loadable).

    torch CPU: uint8 tensor; CUDA: list of uint8 tensors (one per visible device) or None when
    CUDA is not initialised/available; numpy's legacy global state; python ``random`` (its
    625 ints as an int64 tensor).
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {"torch": torch.get_rng_state().clone(),
            "cuda": cuda,
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss": py_gauss}}


def set_rng_state(state: dict, where="snapshot") -> None:
    """Restore what :func:`rng_state` returned; raises ValueError naming the missing part."""
    for k in ("torch", "numpy", "python"):
        if k not in state:
            raise ValueError(f"{where}: rng: missing {k!r} (expected keys torch, cuda, numpy, python)")
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:  # a different number of visible GPUs: restore those both runs have
            for i, s in enumerate(saved[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


# ------------------------------------------------------------------- saving
def _unwrap(model):
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def _embedding_state(pose_embedding):
    if pose_embedding is None:
        return None
    if isinstance(pose_embedding, torch.nn.Module):
        return {k: v.detach().cpu().clone() for k, v in _unwrap(pose_embedding).state_dict().items()}
    if isinstance(pose_embedding, torch.Tensor):
        return {"weight": pose_embedding.detach().cpu().clone()}
    raise TypeError(f"save_training_snapshot: pose_embedding must be an nn.Module or a tensor, "
                    f"got {type(pose_embedding).__name__}")


def save_training_snapshot(path, model, epoch: int, optimizer, *, train_config, scheduler=None,
                           sampler_state: dict | None = None, pose_embedding=None, step: int = 0,
                           extra: dict | None = None, mid_epoch: bool = False,
                           writer: "BackgroundSnapshotWriter | None" = None) -> Path:
    """Write a resumable snapshot (see the module docstring for the layout); returns ``path``.

    Args:
        path: usually :func:`snapshot_path` ``(output_root, epoch[, step])``.
        model: the DeepHandMesh, or its DDP wrapper (unwrapped here).
        epoch: 0-based epoch this snapshot ends (or, with ``mid_epoch``, is in).
        optimizer: its state is saved as the official ``optimizer``.
        train_config: a dict (or an object with ``to_dict()``).
        scheduler: LR scheduler, or None.
        sampler_state: ``ResumableSampler.state_dict()`` (rank 0's; all ranks hold the same).
        pose_embedding: nn.Module or tensor of per-frame poses, or None.
        step: global step count.
        extra: more weights_only-safe entries; may not reuse a key of the snapshot.
        mid_epoch: True when written during ``epoch`` (resume continues that epoch).
        writer: a :class:`BackgroundSnapshotWriter` (the file is written in its thread) or None (here).

    RNG states are this process's (in DDP: rank 0's).
    """
    if hasattr(train_config, "to_dict"):
        train_config = train_config.to_dict()
    if not isinstance(train_config, dict):
        raise TypeError(f"save_training_snapshot: train_config must be a dict, got {type(train_config).__name__}")
    extras = {"train_config": dict(train_config),
              "scheduler": scheduler.state_dict() if scheduler is not None else None,
              "rng": rng_state(),
              "sampler": dict(sampler_state) if sampler_state is not None else None,
              "pose_embedding": _embedding_state(pose_embedding),
              "step": int(step),
              MID_EPOCH_KEY: bool(mid_epoch)}
    for k in extra or {}:
        if k in extras:
            raise ValueError(f"save_training_snapshot: extra key {k!r} would replace the training state's own entry")
    extras.update(extra or {})
    return save_snapshot(path, _unwrap(model), epoch, optimizer, writer=writer, **extras)


def _copied(obj):
    """``obj`` with every tensor in its dicts, lists and tuples cloned (training goes on changing the originals)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _copied(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copied(v) for v in obj)
    return obj


class BackgroundSnapshotWriter:
    """Writes snapshots in a background thread, one at a time, so that training does not wait for the disk.

    :meth:`submit` copies the snapshot's tensors (about 0.1 s for ``cpu-small``'s 200 MB; the write
    itself took 0.5 s per epoch), waits for the previous write, and starts this one; each file still
    appears atomically (:func:`dhmlib.network.snapshot.write_snapshot_file`). :meth:`wait` returns when the last
    write is on disk and raises its error, if it had one; the training loop calls it before it returns
    or stops, so a snapshot it reports is a file.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, ckpt: dict, path) -> None:
        ckpt = _copied(ckpt)
        self.wait()
        path = Path(path)

        def run():
            try:
                write_snapshot_file(ckpt, path)
            except BaseException as e:      # handed to the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=run, name=f"snapshot {path.name}")
        self._thread.start()

    def wait(self, raise_error: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


# ----------------------------------------------------------------- resuming
def list_snapshots(model_dump_dir) -> list[Path]:
    """Snapshot files in ``model_dump_dir`` named as :func:`snapshot_path` does, newest first."""
    d = Path(model_dump_dir)
    if not d.is_dir():
        return []
    found = [(parse_snapshot_name(p.name), p) for p in d.iterdir() if p.is_file()]
    found = [(key, p) for key, p in found if key is not None]
    found.sort(key=lambda kp: _order(*kp[0]), reverse=True)
    return [p for _, p in found]


def find_resumable(model_dump_dir, log: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """The newest snapshot in ``model_dump_dir`` that loads (weights_only), as (path, ckpt); None if none.

    Unreadable files (truncated, corrupt, not a snapshot, refused because unpickling would run
    code) are skipped, each with one ``log`` line naming the file and the reason.  Leftover
    ``*.tmp`` files of an interrupted save are mentioned and ignored.  A snapshot without the
    training state (e.g. an official one) is used with a note: weights and optimizer only.
    """
    d = Path(model_dump_dir)
    if not d.is_dir():
        return None
    for tmp in sorted(d.glob("snapshot_*.pth.tar.tmp")):
        log(f"ignoring {tmp}: a temporary file left by an interrupted save")
    for path in list_snapshots(d):
        try:
            ckpt = read_snapshot(path)
        except SnapshotError as e:
            log(f"skipping {e}")
            continue
        missing = [k for k in TRAIN_STATE_KEYS if k not in ckpt]
        if missing:
            log(f"{path}: no training state ({', '.join(missing)} missing): resuming weights and optimizer only")
        return path, ckpt
    return None


def restore_training_state(ckpt: dict, model, optimizer, scheduler=None, pose_embedding=None,
                           *, path="snapshot", restore_rng: bool = True) -> dict:
    """Load a snapshot's network, optimizer, scheduler and embedding; set the RNG states.

    ``model`` may be DDP-wrapped.  Returns ``{"epoch", "step", "sampler", "start_epoch",
    "mid_epoch"}``: the stored epoch and global step, the sampler state (None if absent; give it
    to ``ResumableSampler.load_state_dict``), and the epoch to run next (``epoch`` itself for a
    mid-epoch snapshot, ``epoch + 1`` otherwise).  Raises SnapshotError naming ``path`` and the part
    that does not fit.
    """
    load_network_state(_unwrap(model), ckpt, path)
    opt_state = ckpt.get("optimizer") or {}
    if optimizer is not None and opt_state:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError) as e:
            raise SnapshotError(f"{path}: optimizer state does not fit the optimizer: {e}") from None
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    emb = ckpt.get("pose_embedding")
    if pose_embedding is not None and emb is not None:
        if isinstance(pose_embedding, torch.nn.Module):
            try:
                _unwrap(pose_embedding).load_state_dict(emb)
            except RuntimeError as e:
                raise SnapshotError(f"{path}: pose_embedding: {e}") from None
        else:
            w = emb["weight"]
            if w.shape != pose_embedding.shape:
                raise SnapshotError(f"{path}: pose_embedding has shape {tuple(w.shape)} in the snapshot but "
                                    f"{tuple(pose_embedding.shape)} here")
            with torch.no_grad():
                pose_embedding.copy_(w)
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"], where=f"{path}")
    epoch = int(ckpt.get("epoch", -1))
    mid = bool(ckpt.get(MID_EPOCH_KEY, False))
    return {"epoch": epoch, "step": int(ckpt.get("step", 0)), "sampler": ckpt.get("sampler"),
            "start_epoch": epoch if mid else epoch + 1, "mid_epoch": mid}


# -------------------------------------------------------------- NaN guard
class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; ``step``, ``term`` and ``value`` name it."""

    def __init__(self, step: int, term: str, value: float, others: tuple[str, ...] = ()):
        self.step, self.term, self.value, self.others = step, term, value, others
        kind = "NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")
        more = f" (also non-finite: {', '.join(others)})" if others else ""
        super().__init__(f"step {step}: loss term {term!r} is {kind}{more}; training stopped, "
                         f"the last good snapshot is kept")


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteLoss` if any term (scalar or tensor) holds a NaN or ±inf.

    One device synchronisation for all terms.
    """
    if not terms:
        return
    names = list(terms)
    vals = [torch.as_tensor(terms[k]).detach() for k in names]
    flags = torch.stack([torch.isfinite(v).all() for v in vals])
    if bool(flags.all()):
        return
    bad = [n for n, ok in zip(names, flags.tolist()) if not ok]
    v = vals[names.index(bad[0])].reshape(-1)
    first = float(v[~torch.isfinite(v)][0])
    raise NonFiniteLoss(step, bad[0], first, tuple(bad[1:]))
