"""Prepared depth crops: every (frame, camera) depth crop of a dataset computed once and memory-mapped.

A training sample's depth crop depends only on the frame's joints, the camera and the crop settings
(the seed's crop is fixed by the joints), so it is the same at every step. Reading and resampling the
full-size pickle (512 × 334 float32, 684 KB) for each of the K views of each sample is what made the
CPU step data-bound; the prepared store holds the crops at the render size instead (the default
capture at 96²: 200 frames × 24 cameras × 36 KB = 177 MB).

Layout of one store (a folder ``<cache_root>/depth_crops_<key>/``):

    depth.npy      (N, C, h, w) float32 mm (0 = no surface), N frames × C cameras (np.load mmap)
    matrix.npy     (N, C, 2, 3) float32 the crops' affine maps (:class:`~dhmlib.render.crop.Crop`)
    present.npy    (N, C) bool: the pair had a depth map
    meta.json      frames, cameras, render size, crop mode, image size, key

``key`` hashes the settings and, for every source file (keypoints, depth maps, KRT_512), its size
and modification time: a changed capture or setting is a different store, never a stale one. The
store is built in a temporary folder and renamed into place (a killed build leaves nothing that is
taken for a store); one process builds while the others (DDP ranks, parallel notebooks) wait on its
lock file. The values equal those of the dataset's own path bit for bit (same functions, per view).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dhmlib.paths import output_dir, process_alive
from dhmlib.render.crop import crop_depth

#: bump when the stored content changes meaning
CACHE_VERSION = 1
LOCK_TIMEOUT_S = 3600.0
#: a store's depth array up to this size is read into memory when opened (the default capture's 96²
#: store: 177 MB); a larger one (256² crops: 1.2 GB) stays memory-mapped, shared by DDP ranks through
#: the page cache. Resident, a batch is an array gather whatever else went through the page cache.
RESIDENT_MAX_BYTES = 512 << 20


def default_cache_root(data_root, output_root=None) -> Path:
    """``<data_root>/.dhm_cache`` when the data folder is writable, else ``<output_root>/cache``."""
    data_root = Path(data_root)
    if os.access(data_root, os.W_OK):
        return data_root / ".dhm_cache"
    return Path(output_root or output_dir()) / "cache"


def _key(dataset) -> str:
    lay = dataset.layout
    h = hashlib.sha1()
    settings = {"version": CACHE_VERSION, "render_size": list(dataset.render_size), "crop_mode": dataset.crop_mode,
                "image_size": list(dataset.image_size), "subject": lay.subject, "frames": dataset.frames,
                "cameras": list(dataset.camera_names), "root": str(Path(lay.root).resolve())}
    h.update(json.dumps(settings, sort_keys=True).encode())
    st = os.stat(lay.krt)
    h.update(f"krt:{st.st_size}:{st.st_mtime_ns}".encode())
    for f in dataset.frames:
        st = os.stat(lay.keypoints_path(f))
        h.update(f"k{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        d = lay.depth_dir / f"{f:06d}"
        for e in sorted(os.scandir(d), key=lambda e: e.name) if d.is_dir() else ():
            s = e.stat()
            h.update(f"{e.name}:{s.st_size}:{s.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class StoreError(ValueError):
    """A store folder whose files are not what its name and meta.json promise (truncated, foreign)."""


class DepthCropStore:
    """An opened store: ``crops(frame, cameras)`` → ``(depth (K, h, w), matrix (K, 2, 3))`` or None.

    Attributes:
        folder: the store's folder.  frames, cameras: its rows and columns.
    """

    def __init__(self, folder: Path):
        """Open and check a store; :class:`StoreError` (naming the file) when it is not the one its name says."""
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            self.frames = [int(f) for f in meta["frames"]]
            self.cameras = list(meta["cameras"])
            h, w = (int(x) for x in meta["render_size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{meta_path}: not a prepared-crop store's meta.json ({type(exc).__name__}: {exc})")
        if meta.get("key") != self.folder.name or meta.get("version") != CACHE_VERSION:
            raise StoreError(f"{meta_path}: belongs to store {meta.get('key')!r} version {meta.get('version')!r}, "
                             f"expected {self.folder.name!r} version {CACHE_VERSION} (a foreign or copied store)")
        self.meta = meta
        self._row = {f: i for i, f in enumerate(self.frames)}
        self._col = {c: i for i, c in enumerate(self.cameras)}
        N, C = len(self.frames), len(self.cameras)
        expect = {"depth.npy": ((N, C, h, w), np.float32), "matrix.npy": ((N, C, 2, 3), np.float32),
                  "present.npy": ((N, C), np.bool_)}
        arrays = {}
        for name, (shape, dtype) in expect.items():
            path = self.folder / name
            try:   # a truncated .npy fails here: its header promises more bytes than the file has
                a = np.load(path, mmap_mode="r" if name == "depth.npy" else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise StoreError(f"{path}: unreadable ({type(exc).__name__}: {exc})")
            if a.shape != shape or a.dtype != dtype:
                raise StoreError(f"{path}: expected {np.dtype(dtype).name} {shape} for {N} frames × {C} cameras "
                                 f"at {h}×{w}, found {a.dtype.name} {a.shape}")
            arrays[name] = a
        self.depth, self.matrix, self.present = arrays["depth.npy"], arrays["matrix.npy"], arrays["present.npy"]
        self.resident = self.depth.nbytes <= RESIDENT_MAX_BYTES
        if self.resident:
            self.depth = np.array(self.depth)

    def crops(self, frame: int, cameras) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The K cameras' depth crops (mm) and crop matrices of ``frame``; None when any is missing."""
        row = self._row.get(int(frame))
        cols = [self._col.get(c) for c in cameras]
        if row is None or None in cols or not self.present[row, cols].all():
            return None
        return (torch.from_numpy(np.ascontiguousarray(self.depth[row, cols])),
                torch.from_numpy(self.matrix[row, cols].copy()))

    def gather(self, frames, cameras) -> tuple[torch.Tensor, torch.Tensor] | None:
        """B frames' depth crops (B, K, h, w) mm and crop matrices (B, K, 2, 3), ``cameras`` B lists of K
        names, in one indexing; None when any pair is missing. Equal to B calls of :meth:`crops`."""
        rows = [self._row.get(int(f)) for f in frames]
        cols = [[self._col.get(c) for c in cams] for cams in cameras]
        if None in rows or any(None in c for c in cols):
            return None
        r, c = np.asarray(rows)[:, None], np.asarray(cols)
        if not self.present[r, c].all():
            return None
        return torch.from_numpy(self.depth[r, c]), torch.from_numpy(self.matrix[r, c])


def _compute_frame(dataset, frame: int, cameras: list[str]):
    """(C', h, w) depth crops and (C', 2, 3) matrices of ``frame`` for ``cameras``, as ``__getitem__`` does."""
    joints, valid = dataset.joints(frame)
    ok = valid > 0
    vidx = torch.tensor([dataset._cam_index[c] for c in cameras])
    cams = dataset.rig.index_select(vidx)
    depth = torch.stack([torch.from_numpy(dataset.depth_map(frame, c)) for c in cameras])
    px = cams.project(joints[None].expand(len(cameras), -1, -1))
    crop = dataset._crop(px, ok[None].expand(len(cameras), -1), dataset.render_size)
    return crop_depth(depth, crop).numpy(), crop.matrix.numpy()


def build_store(dataset, folder: Path, *, progress: bool = True, log: Callable[[str], None] | None = None,
                workers: int = 4) -> Path:
    """Compute every (frame, camera) crop of ``dataset`` into ``folder`` (atomically: a temporary sibling
    folder renamed at the end). Returns ``folder``."""
    frames, cameras = dataset.frames, list(dataset.camera_names)
    h, w = dataset.render_size
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    depth = np.lib.format.open_memmap(tmp / "depth.npy", mode="w+", dtype=np.float32, shape=(len(frames), len(cameras), h, w))
    matrix = np.zeros((len(frames), len(cameras), 2, 3), np.float32)
    present = np.zeros((len(frames), len(cameras)), bool)
    col = {c: i for i, c in enumerate(cameras)}
    t0 = time.perf_counter()

    def one(i_f):
        i, f = i_f
        have = [c for c in dataset.layout.depth_cameras(f) if c in col]
        if not have:
            return i, have, None, None
        d, m = _compute_frame(dataset, f, have)
        return i, have, d, m

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm  # a bar only when asked for
            bar = tqdm(total=len(frames), desc="preparing depth crops", unit="frame", leave=False)
        except ImportError:
            bar = None
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, have, d, m in pool.map(one, enumerate(frames)):
                if have:
                    cols = [col[c] for c in have]
                    depth[i, cols] = d
                    matrix[i, cols] = m
                    present[i, cols] = True
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    depth.flush()
    del depth
    np.save(tmp / "matrix.npy", matrix)
    np.save(tmp / "present.npy", present)
    (tmp / "meta.json").write_text(json.dumps({
        "version": CACHE_VERSION, "frames": frames, "cameras": cameras, "render_size": [h, w],
        "crop_mode": dataset.crop_mode, "image_size": list(dataset.image_size), "key": folder.name,
        "root": str(dataset.layout.root), "subject": dataset.layout.subject}, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:                      # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"prepared depth crops: {len(frames)} frames × {len(cameras)} cameras at {h}×{w} in "
            f"{time.perf_counter() - t0:.1f} s → {folder}")
    return folder


def open_or_build(dataset, cache_root, *, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> DepthCropStore:
    """The store of ``dataset``'s frames, cameras and crop settings under ``cache_root``: opened when it
    exists, else built (one process builds; the others wait for it on a lock file)."""
    cache_root = Path(cache_root)
    folder = cache_root / f"depth_crops_{_key(dataset)}"
    if (folder / "meta.json").is_file():
        try:
            store = DepthCropStore(folder)
        except StoreError as exc:   # never used: removed and built again, said so
            (log or print)(f"prepared depth crops: {exc}; rebuilding {folder}")
            shutil.rmtree(folder, ignore_errors=True)
        else:
            if log:
                log(f"prepared depth crops: {folder}")
            return store
    elif folder.exists():           # a folder without meta.json is nobody's finished store
        shutil.rmtree(folder, ignore_errors=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    lock = folder.with_name(folder.name + ".lock")
    t0 = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if (folder / "meta.json").is_file():
                return DepthCropStore(folder)
            try:                         # a lock left by a killed build: its process is gone
                stale = not process_alive(int(lock.read_text() or 0)) and time.time() - os.stat(lock).st_mtime > 2.0
            except (FileNotFoundError, ValueError):
                continue
            if stale or time.monotonic() - t0 > LOCK_TIMEOUT_S:
                lock.unlink(missing_ok=True)
            time.sleep(0.5)
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            if not (folder / "meta.json").is_file():
                build_store(dataset, folder, progress=progress, log=log)
            return DepthCropStore(folder)
        finally:
            lock.unlink(missing_ok=True)
