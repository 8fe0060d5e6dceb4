"""``DeepHandMeshDataset``: items of the official layout as typed :class:`~dhmlib.data.sample.HandSample` s.

One item is one (sequence, frame, input camera) image. It carries the
input crop of that image, the frame's 3D joints, and K depth maps from
randomly chosen colour cameras, each cropped around the hand to the render
size, with their :class:`~dhmlib.render.Cameras` and :class:`~dhmlib.render.Crop`;
:func:`~dhmlib.data.sample.collate_samples` batches them. Without RGB images
(the public release has none) one item is one frame, and its image fields are ``None``.

View sampling draws from ``numpy.random.default_rng((seed, epoch, index))``: the
same views for the same sample whichever DataLoader worker loads it;
:meth:`set_epoch` changes them between epochs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

from dhmlib.data.crop_cache import default_cache_root, open_or_build
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout, is_color_camera
from dhmlib.data.safe_pickle import load_array_pickle
from dhmlib.data.sample import GatheredSamples, HandBatch, HandSample, collate_samples
from dhmlib.data.split import FrameSplit, split_frames
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.skeleton import Skeleton
from dhmlib.render.cameras import Cameras, read_krt
from dhmlib.render.crop import Crop, crop_depth, crop_from_joints, crop_image

__all__ = ["DeepHandMeshDataset", "DatasetError", "HandBatch", "HandSample", "Sample", "collate_samples",
           "read_depth", "read_image", "IMAGE_SIZE"]

IMAGE_SIZE = (512, 334)  # (H, W) of the released images


def capture_image_size(layout: Layout, frame: int) -> tuple[int, int]:
    """(H, W) of the capture's images, read from one depth map of ``frame``."""
    cams = layout.depth_cameras(frame)
    if not cams:
        raise FileNotFoundError(f"{layout.depth_dir / f'{frame:06d}'}: no depth maps")
    d = load_array_pickle(layout.depth_path(frame, cams[0]))
    return int(d.shape[0]), int(d.shape[1])


class DatasetError(ValueError):
    """A problem with a dataset file; the message names the file and what was expected."""


@dataclass(frozen=True)
class Sample:
    """Where an item comes from: ``sequence`` "" and ``camera`` ``None`` when the dataset has no images."""

    sequence: str
    frame: int
    camera: str | None


def read_image(path, expected_size=IMAGE_SIZE) -> np.ndarray:
    """JPEG → (H, W, 3) uint8; a wrong size or unreadable file raises :class:`DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as e:
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    if expected_size is not None and arr.shape[:2] != tuple(expected_size):
        raise DatasetError(f"{path}: image is {arr.shape[0]}×{arr.shape[1]} (H×W), expected "
                           f"{expected_size[0]}×{expected_size[1]}")
    return arr


def read_depth(path, expected_size=IMAGE_SIZE) -> np.ndarray:
    """Depth map pickle → (H, W) float32 mm, 0 where no surface (array-only, safe loader)."""
    d = load_array_pickle(path)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if expected_size is not None and d.shape != tuple(expected_size):
        raise DatasetError(f"{path}: depth map of shape {d.shape}, expected {tuple(expected_size)} (H, W)")
    d = d.astype(np.float32, copy=False)
    if not np.isfinite(d).all() or (d < 0).any():
        raise DatasetError(f"{path}: depth map has negative or non-finite values; expected mm ≥ 0")
    return d


def _frames_brief(frames) -> str:
    f = sorted(frames)
    return ", ".join(map(str, f)) if len(f) <= 6 else f"{f[0]}, {f[1]}, {f[2]} … {f[-1]}"


class DeepHandMeshDataset(torch.utils.data.Dataset):
    """Official-layout dataset (real capture or the virtual capture; same code).

    Args:
        root: dataset root (holding ``images/``, ``annotations/``).
        subject: subject number N (``subject_N``).
        skeleton: joint names for mapping keypoints; default: ``root/hand_model``'s.
        num_views: K depth maps per sample.
        input_size, render_size: (H, W) of the input crop and of the depth crops.
        cameras: colour cameras to use (names); default all ``40…`` cameras in KRT_512.
        include_rom: also use ``ROM`` sequences.
        seed: view-sampling seed.
        max_frames: keep only the first N frames (quick runs; applied after ``frames``).
        frames: keep only these frame numbers (e.g. one part of a :class:`~dhmlib.data.split.FrameSplit`;
            see :meth:`from_split`); frames not in the dataset are ignored.
        crop_mode: ``"seed"`` (default) crops as the original code: the joints' box enlarged
            1.5× per axis, clamped to the image, each axis mapped onto the crop on its own;
            ``"square"`` keeps the aspect ratio (no distortion) and does not clamp.

        images: use the RGB images: ``None`` (default) when ``images/subject_N`` exists, ``True``
            requires them, ``False`` ignores them. Without images one item is one frame (every
            keypoint frame that has depth maps; sequences, hence ``ROM`` takes, cannot be told
            apart) and its ``image``, ``input_camera`` and ``input_crop`` are ``None``.

    Each item is a :class:`~dhmlib.data.sample.HandSample` (fields, shapes and units there);
    batch with ``DataLoader(dataset, batch_size=B, collate_fn=collate_samples)``.
    """

    def __init__(self, root, subject: int = 1, skeleton: Skeleton | None = None, num_views: int = 6,
                 input_size=(256, 256), render_size=(256, 256), cameras=None, include_rom: bool = False,
                 seed: int = 0, max_frames: int | None = None, image_size=IMAGE_SIZE, crop_mode: str = "seed",
                 images: bool | None = None, frames=None):
        if crop_mode not in ("seed", "square"):
            raise ValueError(f"crop_mode: expected 'seed' or 'square', got {crop_mode!r}")
        self.crop_mode = crop_mode
        self.crop_store = None      # a dhmlib.data.crop_cache.DepthCropStore (use_prepared_crops)
        self._joints_read: dict = {}   # frame → (joints, valid) as read from its keypoint file
        self._views_listed: dict = {}  # frame → the depth cameras found for it
        self.layout = Layout(root, subject)
        if images is None:
            images = self.layout.images_dir.is_dir()
        elif images and not self.layout.images_dir.is_dir():
            raise DatasetError(f"{self.layout.images_dir}: images folder not found (images=True); pass images=False "
                               "to train on depth maps and joints alone")
        self.has_images = bool(images)
        self.num_views = int(num_views)
        self.input_size, self.render_size = tuple(input_size), tuple(render_size)
        self.image_size = tuple(image_size)
        self.seed, self.epoch = int(seed), 0
        if skeleton is None:
            skeleton = HandModel.read(self.layout.hand_model_dir).skeleton
        self.skeleton = skeleton
        if not self.layout.krt.is_file():
            raise DatasetError(f"{self.layout.krt}: camera file not found (expected annotations/KRT_512)")
        records = [r for r in read_krt(self.layout.krt) if is_color_camera(r.name)]
        self._krt_colour = {r.name for r in records}
        if cameras is not None:
            known = {r.name for r in records}
            missing = [c for c in cameras if c not in known]
            if missing:
                raise DatasetError(f"{self.layout.krt}: cameras {missing} not found; colour cameras there: "
                                   f"{sorted(known)}")
            records = [r for r in records if r.name in set(cameras)]
        if not records:
            raise DatasetError(f"{self.layout.krt}: no colour cameras (names starting with '40')")
        self.rig = Cameras.from_records(records)
        self.camera_names = self.rig.names
        self._cam_index = {n: i for i, n in enumerate(self.camera_names)}
        keep = None if frames is None else {int(f) for f in frames}
        self.samples = (self._discover(include_rom, max_frames, keep) if self.has_images
                        else self._discover_frames(max_frames, keep))
        if not self.samples and keep is not None:
            raise DatasetError(f"{self.layout.keypoints_dir}: none of the {len(keep)} requested frames "
                               f"({_frames_brief(keep)}) is in the dataset")
        if not self.samples and not self.has_images:
            raise DatasetError(f"{self.layout.depth_dir}: no samples (images=False: expected keypoint files with "
                               "a depth-map folder <frame:06d>/ of the same frame)")
        if not self.samples:
            raise DatasetError(f"{self.layout.images_dir}: no samples (expected RT sequences with cam<name>/"
                               "image<frame>.jpg files of colour cameras and keypoint files)")

    @classmethod
    def from_split(cls, root, split, part: str = "train", **kwargs) -> "DeepHandMeshDataset":
        """The ``"train"`` or ``"test"`` frames of ``split`` (a :class:`~dhmlib.data.split.FrameSplit`, or a
        ``held_out`` rule string / ``None`` for :func:`~dhmlib.data.split.split_frames` on ``root``)."""
        if not isinstance(split, FrameSplit):
            split = split_frames(root, kwargs.get("subject", 1), split)
        return cls(root, frames=split.part(part), **kwargs)

    def _discover(self, include_rom, max_frames, keep=None) -> list[Sample]:
        kp_frames = self.layout.keypoint_frames()
        if keep is not None:
            kp_frames &= keep
        samples = []
        for seq in self.layout.sequences(include_rom=include_rom):
            for cam in self.layout.cameras_of(seq):
                if cam not in self._cam_index:  # not selected; an error if the KRT file lacks it
                    if is_color_camera(cam) and cam not in self._krt_colour:
                        raise DatasetError(f"{self.layout.images_dir / seq / ('cam' + cam)}: camera {cam!r} is not in "
                                           f"{self.layout.krt}")
                    continue
                samples += [Sample(seq, f, cam) for f in self.layout.image_frames(seq, cam) if f in kp_frames]
        samples.sort(key=lambda s: (s.frame, s.camera))
        if max_frames is not None:
            keep = sorted({s.frame for s in samples})[:max_frames]
            samples = [s for s in samples if s.frame in set(keep)]
        return samples

    def _discover_frames(self, max_frames, keep=None) -> list[Sample]:
        kp_frames = self.layout.keypoint_frames()
        if keep is not None:
            kp_frames &= keep
        d = self.layout.depth_dir
        depth_frames = {int(e.name) for e in os.scandir(d) if e.is_dir() and e.name.isdigit()} if d.is_dir() else set()
        frames = sorted(kp_frames & depth_frames)[:max_frames]
        return [Sample("", f, None) for f in frames]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def frames(self) -> list[int]:
        return sorted({s.frame for s in self.samples})

    def set_epoch(self, epoch: int) -> None:
        """Draw different views next epoch (same for every worker)."""
        self.epoch = int(epoch)

    def joints(self, frame: int):
        """(J, 3) joints in mm and (J,) validity of a frame (the file is read once per dataset)."""
        got = self._joints_read.get(frame)
        if got is None:
            joints, valid = keypoints_to_joints(read_keypoints(self.layout.keypoints_path(frame)), self.skeleton)
            got = self._joints_read[frame] = (torch.as_tensor(joints, dtype=torch.float32),
                                              torch.as_tensor(valid, dtype=torch.float32))
        return got[0].clone(), got[1].clone()

    def depth_map(self, frame: int, camera: str) -> np.ndarray:
        """(H, W) float32 full-size depth map of ``frame`` seen by ``camera``, mm (0 = no surface)."""
        return read_depth(self.layout.depth_path(frame, camera), self.image_size)

    def available_views(self, frame: int) -> list[str]:
        """The selected colour cameras with a depth map of ``frame`` (its folder is listed once per dataset)."""
        available = self._views_listed.get(frame)
        if available is None:
            available = self._views_listed[frame] = [c for c in self.layout.depth_cameras(frame)
                                                     if c in self._cam_index]
        return available

    def choose_views(self, index: int, frame: int) -> list[str]:
        """K camera names for a sample, reproducible from (seed, epoch, index)."""
        available = self.available_views(frame)
        if not available:
            raise DatasetError(f"{self.layout.depth_dir / f'{frame:06d}'}: no depth maps of the selected colour "
                               "cameras (expected depthmap<cam>.pkl)")
        rng = np.random.default_rng((self.seed, self.epoch, index))
        pick = rng.choice(len(available), size=self.num_views, replace=len(available) < self.num_views)
        return [available[i] for i in pick]

    def _crop(self, joints_px, valid, size) -> Crop:
        if self.crop_mode == "seed":
            return crop_from_joints(joints_px, valid, size=size, keep_aspect=False, clamp_to=self.image_size)
        return crop_from_joints(joints_px, valid, size=size)

    def __getitem__(self, index: int) -> HandSample:
        s = self.samples[index]
        joints, valid = self.joints(s.frame)
        views = self.choose_views(index, s.frame)
        vidx = torch.tensor([self._cam_index[c] for c in views])
        cams = self.rig.index_select(vidx)
        ok = valid > 0
        if not ok.any():
            raise DatasetError(f"{self.layout.keypoints_path(s.frame)}: no valid keypoint to crop around")
        image = cam_in = crop_in = None
        if s.camera is not None:  # the input crop
            cam_in = self.rig.index_select([self._cam_index[s.camera]])
            img = read_image(self.layout.image_path(s.sequence, s.camera, s.frame), self.image_size)
            img = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div_(255)
            px_in = cam_in.project(joints[None])                                 # (1, J, 2)
            crop_in = self._crop(px_in, ok[None], self.input_size)
            image = crop_image(img[None], crop_in)[0]
        # depth views: from the prepared crops when attached (same values), else read and resampled
        prepared = self.crop_store.crops(s.frame, views) if self.crop_store is not None else None
        if prepared is not None:
            depth_crops, crop_d = prepared[0], Crop(prepared[1], self.render_size)
        else:
            depth = torch.stack([torch.from_numpy(self.depth_map(s.frame, c)) for c in views])   # (K, H, W)
            px = cams.project(joints[None].expand(len(views), -1, -1))           # (K, J, 2)
            crop_d = self._crop(px, ok[None].expand(len(views), -1), self.render_size)
            depth_crops = crop_depth(depth, crop_d)
        return HandSample(image=image, input_camera=cam_in, input_crop=crop_in, joints=joints, joint_valid=valid,
                          depth=depth_crops, view_cameras=cams, view_crops=crop_d, view_index=vidx,
                          view_names=tuple(views), subject=self.layout.subject, sequence=s.sequence, frame=s.frame,
                          camera=s.camera, index=int(index))

    def __getitems__(self, indices):
        """The samples at ``indices``, for a ``DataLoader``'s batched fetch: with prepared crops and no
        images a :class:`~dhmlib.data.sample.GatheredSamples` whose batch is one gather from the store
        (equal to collating the samples one by one, tested); otherwise the samples one by one."""
        batch = self._gather_batch(list(indices)) if self.crop_store is not None and not self.has_images else None
        if batch is None:
            return [self[i] for i in indices]
        return GatheredSamples(self, indices, batch)

    def _gather_batch(self, indices: list[int]) -> HandBatch | None:
        samples = [self.samples[i] for i in indices]
        views = [self.choose_views(i, s.frame) for i, s in zip(indices, samples)]
        got = self.crop_store.gather([s.frame for s in samples], views)
        if got is None:
            return None
        joints, valid = (torch.stack(x) for x in zip(*(self.joints(s.frame) for s in samples)))
        if not (valid > 0).any(1).all():      # the per-sample path names the file
            return None
        vidx = torch.tensor([[self._cam_index[c] for c in v] for v in views])
        names = tuple(views[0]) if all(v == views[0] for v in views) else None
        cams = Cameras(*(getattr(self.rig, a)[vidx] for a in ("R", "t", "focal", "principal")), names=names)
        return HandBatch(image=None, input_camera=None, input_crop=None, joints=joints, joint_valid=valid,
                         depth=got[0], view_cameras=cams, view_crops=Crop(got[1], self.render_size),
                         view_index=vidx, view_names=tuple(tuple(v) for v in views),
                         subject=(self.layout.subject,) * len(samples),
                         sequence=tuple(s.sequence for s in samples),
                         frame=torch.tensor([s.frame for s in samples], dtype=torch.long),
                         camera=tuple(s.camera for s in samples),
                         index=torch.tensor(indices, dtype=torch.long))

    def use_prepared_crops(self, cache_root=None, *, progress: bool = True, log=None) -> "DeepHandMeshDataset":
        """Read depth crops from a prepared store (:mod:`dhmlib.data.crop_cache`) under ``cache_root``
        (default: :func:`~dhmlib.data.crop_cache.default_cache_root`), building it first if needed."""
        self.crop_store = open_or_build(self, cache_root or default_cache_root(self.layout.root),
                                        progress=progress, log=log)
        self.read_index()
        return self

    def read_index(self) -> None:
        """Read every frame's keypoint file and list its depth-map folder now, once.

        Otherwise the first epoch does it batch by batch (about 0.4 ms a frame), which with prepared crops is
        most of a batch's cost; later epochs reuse what was read.
        """
        for frame in self.frames:
            self.joints(frame)
            self.available_views(frame)

    def loader(self, batch_size: int = 8, **kwargs) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` of :class:`~dhmlib.data.sample.HandBatch` es (``kwargs`` go to ``DataLoader``)."""
        return torch.utils.data.DataLoader(self, batch_size=batch_size, collate_fn=collate_samples, **kwargs)
