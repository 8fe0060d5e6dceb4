"""``DeepHandMeshDataset``: samples of the official layout as stacked tensors.

One sample is one (sequence, frame, input camera) image. It carries the
input crop of that image, the frame's 3D joints, and K depth maps from
randomly chosen colour cameras, each cropped around the hand to the render
size, with the affine crops and camera parameters as tensors, so the default
``collate`` batches everything (no lists of dicts).

View sampling draws from ``numpy.random.default_rng((seed, epoch, index))``: the
same views for the same sample whichever DataLoader worker loads it;
:meth:`set_epoch` changes them between epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..handmodel import HandModel
from ..render.cameras import Cameras, read_krt
from ..render.crop import Crop, crop_from_joints
from ..skeleton import Skeleton
from .keypoints import keypoints_to_joints, read_keypoints
from .layout import Layout, is_color_camera
from .safe_pickle import load_array_pickle

IMAGE_SIZE = (512, 334)  # (H, W) of the released images


class DatasetError(ValueError):
    """A problem with a dataset file; the message names the file and what was expected."""


@dataclass(frozen=True)
class Sample:
    sequence: str
    frame: int
    camera: str


def read_image(path, expected_size=IMAGE_SIZE) -> np.ndarray:
    """JPEG → (H, W, 3) uint8; a wrong size or unreadable file raises :class:`DatasetError`."""
    from PIL import Image

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


def _render_grid(crop: Crop) -> torch.Tensor:
    """Image-pixel coordinates (*S, H, W, 2) of the render pixel centres of ``crop``."""
    H, W = crop.size
    ys, xs = torch.meshgrid(torch.arange(H, dtype=crop.matrix.dtype) + 0.5,
                            torch.arange(W, dtype=crop.matrix.dtype) + 0.5, indexing="ij")
    pts = torch.stack([xs, ys], -1).reshape(-1, 2)
    return crop.inverse().apply(pts).reshape(crop.batch_shape + (H, W, 2))


def crop_image(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """Bilinear crop: image (*S, 3, Hi, Wi) → (*S, 3, H, W), zero outside."""
    Hi, Wi = image.shape[-2:]
    uv = _render_grid(crop)
    grid = torch.stack([uv[..., 0] / Wi * 2 - 1, uv[..., 1] / Hi * 2 - 1], -1)
    lead = image.shape[:-3]
    out = F.grid_sample(image.reshape(-1, *image.shape[-3:]), grid.reshape(-1, *grid.shape[-3:]).to(image.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(lead + out.shape[1:])


def crop_depth(depth: torch.Tensor, crop: Crop, edge_mm: float = 10.0) -> torch.Tensor:
    """Crop depth maps (*S, Hi, Wi) → (*S, H, W) without averaging across depth edges.

    Bilinear where the four neighbouring samples are all surface and within
    ``edge_mm`` of each other; the nearest sample elsewhere (edges, background).
    Outside the image: 0.
    """
    Hi, Wi = depth.shape[-2:]
    lead = depth.shape[:-2]
    # a zero border (1 before, 2 after) makes every tap of a clamped position valid: outside reads 0
    Wp = Wi + 3
    d = F.pad(depth.reshape(-1, Hi, Wi), (1, 2, 1, 2)).reshape(-1, (Hi + 3) * Wp)
    uv = _render_grid(crop).reshape(d.shape[0], -1, 2).to(d.dtype)       # (N, H*W, 2)
    x = (uv[..., 0] - 0.5).clamp(-1.0, Wi)                                 # integer = pixel centre
    y = (uv[..., 1] - 0.5).clamp(-1.0, Hi)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    base = ((y0 + 1) * Wp + (x0 + 1)).long()
    offsets = torch.tensor([0, 1, Wp, Wp + 1], device=d.device)
    taps = torch.gather(d, 1, (base.unsqueeze(-1) + offsets).reshape(d.shape[0], -1)).view(*base.shape, 4)
    t00, t10, t01, t11 = taps.unbind(-1)
    smooth = (taps > 0).all(-1) & ((taps.amax(-1) - taps.amin(-1)) <= edge_mm)
    bil = torch.lerp(torch.lerp(t00, t10, fx), torch.lerp(t01, t11, fx), fy)
    near = torch.where(fy < 0.5, torch.where(fx < 0.5, t00, t10), torch.where(fx < 0.5, t01, t11))
    out = torch.where(smooth, bil, near)
    H, W = crop.size
    return out.reshape(lead + (H, W))


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
        max_frames: keep only the first N frames (quick runs).
        crop_mode: ``"seed"`` (default) crops as the original code: the joints' box enlarged
            1.5× per axis, clamped to the image, each axis mapped onto the crop on its own;
            ``"square"`` keeps the aspect ratio (no distortion) and does not clamp.

    Each item is a dict of tensors:

    ============== ============== ===========================================
    key            shape          meaning
    ============== ============== ===========================================
    image          (3, Hi, Wi)    input crop, RGB in [0, 1]
    image_crop     (2, 3)         affine image px → input-crop px
    joints         (J, 3)         3D joints, world mm
    joint_valid    (J,)           1 where a keypoint exists (thumb0: 0)
    depth          (K, Hr, Wr)    camera z in mm, 0 = no surface
    depth_crop     (K, 2, 3)      affine image px → render px per view
    cam_R          (K, 3, 3)      world → camera rotation of each view
    cam_t          (K, 3)         world → camera translation, mm
    cam_focal      (K, 2)         pixels
    cam_principal  (K, 2)         pixels
    input_cam_*    (…)            the same four for the input camera
    view_index     (K,)           indices into ``dataset.camera_names``
    frame          ()             frame number
    index          ()             sample index
    ============== ============== ===========================================
    """

    def __init__(self, root, subject: int = 1, skeleton: Skeleton | None = None, num_views: int = 6,
                 input_size=(256, 256), render_size=(256, 256), cameras=None, include_rom: bool = False,
                 seed: int = 0, max_frames: int | None = None, image_size=IMAGE_SIZE, crop_mode: str = "seed"):
        if crop_mode not in ("seed", "square"):
            raise ValueError(f"crop_mode: expected 'seed' or 'square', got {crop_mode!r}")
        self.crop_mode = crop_mode
        self.layout = Layout(root, subject)
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
        self.samples = self._discover(include_rom, max_frames)
        if not self.samples:
            raise DatasetError(f"{self.layout.images_dir}: no samples (expected RT sequences with cam<name>/"
                               "image<frame>.jpg files of colour cameras and keypoint files)")

    def _discover(self, include_rom, max_frames) -> list[Sample]:
        kp_frames = self.layout.keypoint_frames()
        samples = []
        for seq in self.layout.sequences(include_rom=include_rom):
            for cam in self.layout.cameras_of(seq):
                if cam not in self._cam_index:
                    if is_color_camera(cam):
                        raise DatasetError(f"{self.layout.images_dir / seq / ('cam' + cam)}: camera {cam!r} is not in "
                                           f"{self.layout.krt}")
                    continue
                samples += [Sample(seq, f, cam) for f in self.layout.image_frames(seq, cam) if f in kp_frames]
        samples.sort(key=lambda s: (s.frame, s.camera))
        if max_frames is not None:
            keep = sorted({s.frame for s in samples})[:max_frames]
            samples = [s for s in samples if s.frame in set(keep)]
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def frames(self) -> list[int]:
        return sorted({s.frame for s in self.samples})

    def set_epoch(self, epoch: int) -> None:
        """Draw different views next epoch (same for every worker)."""
        self.epoch = int(epoch)

    def joints(self, frame: int):
        """(J, 3) joints in mm and (J,) validity of a frame."""
        joints, valid = keypoints_to_joints(read_keypoints(self.layout.keypoints_path(frame)), self.skeleton)
        return torch.as_tensor(joints, dtype=torch.float32), torch.as_tensor(valid, dtype=torch.float32)

    def choose_views(self, index: int, frame: int) -> list[str]:
        """K camera names for a sample, reproducible from (seed, epoch, index)."""
        available = [c for c in self.layout.depth_cameras(frame) if c in self._cam_index]
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

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        joints, valid = self.joints(s.frame)
        views = self.choose_views(index, s.frame)
        vidx = torch.tensor([self._cam_index[c] for c in views])
        cam_in = self.rig.index_select([self._cam_index[s.camera]])
        cams = self.rig.index_select(vidx)
        ok = valid > 0
        if not ok.any():
            raise DatasetError(f"{self.layout.keypoints_path(s.frame)}: no valid keypoint to crop around")
        # input crop
        img = read_image(self.layout.image_path(s.sequence, s.camera, s.frame), self.image_size)
        img = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div_(255)
        px_in = cam_in.project(joints[None])                                     # (1, J, 2)
        crop_in = self._crop(px_in, ok[None], self.input_size)
        image = crop_image(img[None], crop_in)[0]
        # depth views
        depth = torch.stack([torch.from_numpy(read_depth(self.layout.depth_path(s.frame, c), self.image_size))
                             for c in views])                                     # (K, H, W)
        px = cams.project(joints[None].expand(len(views), -1, -1))               # (K, J, 2)
        crop_d = self._crop(px, ok[None].expand(len(views), -1), self.render_size)
        return {
            "image": image, "image_crop": crop_in.matrix[0],
            "joints": joints, "joint_valid": valid,
            "depth": crop_depth(depth, crop_d), "depth_crop": crop_d.matrix,
            "cam_R": cams.R, "cam_t": cams.t, "cam_focal": cams.focal, "cam_principal": cams.principal,
            "input_cam_R": cam_in.R[0], "input_cam_t": cam_in.t[0], "input_cam_focal": cam_in.focal[0],
            "input_cam_principal": cam_in.principal[0],
            "view_index": vidx, "frame": torch.tensor(s.frame), "index": torch.tensor(index),
        }


def batch_cameras(batch: dict, prefix: str = "cam_") -> Cameras:
    """Cameras of a collated batch: (B, K) for the depth views (``prefix='cam_'``),
    (B,) for the input camera (``prefix='input_cam_'``)."""
    return Cameras(batch[prefix + "R"], batch[prefix + "t"], batch[prefix + "focal"], batch[prefix + "principal"])


def batch_crop(batch: dict, key: str = "depth_crop") -> Crop:
    """The (B, K) depth crops (or ``key='image_crop'``: the (B,) input crops) of a collated batch."""
    size = batch["depth"].shape[-2:] if key == "depth_crop" else batch["image"].shape[-2:]
    return Crop(batch[key], tuple(size))
