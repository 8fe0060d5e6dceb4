"""Paths and discovery in the official dataset layout (real capture or virtual capture).

::

    ROOT/images/subject_N/<seq>/cam<cam>/image<frame>.jpg
    ROOT/annotations/KRT_512
    ROOT/annotations/keypoints/subject_N/keypoints<frame:04d>.pts
    ROOT/annotations/depthmaps/subject_N/<frame:06d>/depthmap<cam>.pkl
    ROOT/annotations/3D_scans_decimated/subject_N/<frame:06d>.ply   (optional)
    ROOT/annotations/synthetic/subject_N/    the virtual capture's truth (dhm synth; not in the real data):
        params.json, poses.npz, meshes/<frame:06d>.npy, faces.npy, hand_model/
    ROOT/hand_model/

Training uses sequences with ``RT`` (right hand) in their name and skips
``ROM`` (range-of-motion) sequences; colour cameras are those whose name
starts with ``40``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_RE = re.compile(r"^image(\d+)\.jpg$")
DEPTH_RE = re.compile(r"^depthmap(.+)\.pkl$")
KEYPOINT_RE = re.compile(r"^keypoints(\d+)\.pts$")
SCAN_RE = re.compile(r"^(\d+)\.ply$")
COLOR_PREFIX = "40"


def is_color_camera(name: str) -> bool:
    return name.startswith(COLOR_PREFIX)


def is_training_sequence(name: str, include_rom: bool = False) -> bool:
    return "RT" in name and (include_rom or "ROM" not in name)


@dataclass(frozen=True)
class Layout:
    """Paths of one subject in the official layout."""

    root: Path
    subject: int = 1

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def krt(self) -> Path:
        return self.root / "annotations" / "KRT_512"

    @property
    def hand_model_dir(self) -> Path:
        return self.root / "hand_model"

    @property
    def images_dir(self) -> Path:
        return self.root / "images" / f"subject_{self.subject}"

    @property
    def keypoints_dir(self) -> Path:
        return self.root / "annotations" / "keypoints" / f"subject_{self.subject}"

    @property
    def depth_dir(self) -> Path:
        return self.root / "annotations" / "depthmaps" / f"subject_{self.subject}"

    @property
    def scans_dir(self) -> Path:
        return self.root / "annotations" / "3D_scans_decimated" / f"subject_{self.subject}"

    @property
    def synthetic_root(self) -> Path:
        """The virtual capture's extras, all subjects (``annotations/synthetic``; absent in the real data)."""
        return self.root / "annotations" / "synthetic"

    @property
    def synthetic_dir(self) -> Path:
        """This subject's truth in a virtual capture: params, true poses, meshes and faces, its hand model."""
        return self.synthetic_root / f"subject_{self.subject}"

    def scan_path(self, frame: int) -> Path:
        return self.scans_dir / f"{frame:06d}.ply"

    def keypoints_path(self, frame: int) -> Path:
        return self.keypoints_dir / f"keypoints{frame:04d}.pts"

    def depth_path(self, frame: int, camera: str) -> Path:
        return self.depth_dir / f"{frame:06d}" / f"depthmap{camera}.pkl"

    def image_path(self, sequence: str, camera: str, frame: int) -> Path:
        return self.images_dir / sequence / f"cam{camera}" / f"image{frame:04d}.jpg"

    # ---------------------------------------------------------------- discovery
    def sequences(self, include_rom: bool = False, all_sequences: bool = False) -> list[str]:
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir}: expected the images folder of subject {self.subject}")
        names = sorted(e.name for e in os.scandir(self.images_dir) if e.is_dir())
        return names if all_sequences else [n for n in names if is_training_sequence(n, include_rom)]

    def cameras_of(self, sequence: str) -> list[str]:
        d = self.images_dir / sequence
        return sorted(e.name[3:] for e in os.scandir(d) if e.is_dir() and e.name.startswith("cam"))

    def image_frames(self, sequence: str, camera: str) -> list[int]:
        d = self.images_dir / sequence / f"cam{camera}"
        return sorted(int(m.group(1)) for e in os.scandir(d) if (m := IMAGE_RE.match(e.name)))

    def keypoint_frames(self) -> set[int]:
        if not self.keypoints_dir.is_dir():
            raise FileNotFoundError(f"{self.keypoints_dir}: expected the keypoints folder of subject {self.subject}")
        return {int(m.group(1)) for e in os.scandir(self.keypoints_dir) if (m := KEYPOINT_RE.match(e.name))}

    def depth_cameras(self, frame: int) -> list[str]:
        d = self.depth_dir / f"{frame:06d}"
        if not d.is_dir():
            return []
        return sorted(m.group(1) for e in os.scandir(d) if (m := DEPTH_RE.match(e.name)))

    def scan_frames(self) -> list[int]:
        """Frames with a decimated scan (``[]`` when the optional scans folder is absent)."""
        if not self.scans_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for e in os.scandir(self.scans_dir) if (m := SCAN_RE.match(e.name)))
