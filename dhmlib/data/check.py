"""Walk a dataset, count what is there, list every problem (behind ``dhm check-data ROOT``).

Every file is opened with the same readers the dataset uses (array-only
pickles, keypoint parser, image header), so a problem reported here is one
that training would hit.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import IMAGE_SIZE, read_depth
from .keypoints import read_keypoints
from .layout import DEPTH_RE, IMAGE_RE, KEYPOINT_RE, Layout, is_color_camera

SUBJECT_RE = re.compile(r"^subject_(\d+)$")


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        counts: name → number (subjects, images, depth maps, …, ``problems (total)``); a
            ``Counter``, so a name never counted reads 0.
        problems: one line per problem, naming the file (at most ``max_problems``).
    """

    counts: Counter = field(default_factory=Counter)
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"{k:28s} {v}" for k, v in sorted(self.counts.items())]
        lines.append(f"{'problems':28s} {len(self.problems)}")
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _image_size(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


def check_dataset(root, image_size=IMAGE_SIZE, progress: bool = True, max_problems: int = 1000) -> CheckReport:
    """Check a dataset root in the official layout; returns counts and problems."""
    from tqdm.auto import tqdm

    from ..handmodel import HandModel
    from ..render.cameras import read_krt

    root = Path(root)
    rep = _Tally(Counter(), [])

    def problem(msg):
        if len(rep.problems) < max_problems:
            rep.problems.append(msg)
        rep.counts["problems (total)"] += 1

    if not root.is_dir():
        problem(f"{root}: dataset root not found")
        return rep.report()
    try:
        hm = HandModel.read(root / "hand_model")
        rep.counts["hand model vertices"] = hm.num_vertices
        rep.counts["hand model joints"] = hm.num_joints
    except Exception as e:
        problem(str(e))
    krt = root / "annotations" / "KRT_512"
    cams = set()
    try:
        cams = {r.name for r in read_krt(krt)}
        rep.counts["cameras in KRT_512"] = len(cams)
        rep.counts["colour cameras in KRT_512"] = sum(is_color_camera(c) for c in cams)
    except FileNotFoundError:
        problem(f"{krt}: camera file not found")
    except Exception as e:
        problem(str(e))

    img_root = root / "images"
    subjects = sorted(int(m.group(1)) for e in os.scandir(img_root) if (m := SUBJECT_RE.match(e.name))) \
        if img_root.is_dir() else []
    if not subjects:
        problem(f"{img_root}: no subject_N folders")
    for n in subjects:
        lay = Layout(root, n)
        rep.counts["subjects"] += 1
        image_frames = set()
        files = []
        for seq in lay.sequences(all_sequences=True):
            rep.counts["sequences (ROM)" if "ROM" in seq else "sequences"] += 1
            for cam_dir in sorted(os.scandir(lay.images_dir / seq), key=lambda e: e.name):
                if not cam_dir.is_dir() or not cam_dir.name.startswith("cam"):
                    continue
                cam = cam_dir.name[3:]
                if cams and cam not in cams:
                    problem(f"{cam_dir.path}: camera {cam!r} is not in {krt}")
                for e in os.scandir(cam_dir.path):
                    m = IMAGE_RE.match(e.name)
                    if m:
                        files.append(("image", Path(e.path)))
                        image_frames.add(int(m.group(1)))
        kp_frames = set()
        if lay.keypoints_dir.is_dir():
            for e in os.scandir(lay.keypoints_dir):
                if (m := KEYPOINT_RE.match(e.name)):
                    kp_frames.add(int(m.group(1)))
                    files.append(("keypoints", Path(e.path)))
        else:
            problem(f"{lay.keypoints_dir}: keypoints folder not found")
        if lay.depth_dir.is_dir():
            for fd in os.scandir(lay.depth_dir):
                if not fd.is_dir():
                    continue
                for e in os.scandir(fd.path):
                    if (m := DEPTH_RE.match(e.name)):
                        files.append(("depth", Path(e.path)))
                        if cams and m.group(1) not in cams:
                            problem(f"{e.path}: camera {m.group(1)!r} is not in {krt}")
        else:
            problem(f"{lay.depth_dir}: depth map folder not found")
        rep.counts["frames with images"] += len(image_frames)
        rep.counts["frames with keypoints"] += len(kp_frames)
        missing = sorted(image_frames - kp_frames)
        if missing:
            problem(f"{lay.keypoints_dir}: {len(missing)} frames have images but no keypoint file "
                    f"(first: keypoints{missing[0]:04d}.pts)")
        for kind, path in tqdm(sorted(files), desc=f"subject_{n}", disable=not progress, mininterval=1.0):
            rep.counts[{"image": "images", "keypoints": "keypoint files", "depth": "depth maps"}[kind]] += 1
            try:
                if kind == "image":
                    size = _image_size(path)
                    if size != tuple(image_size):
                        problem(f"{path}: image is {size[0]}×{size[1]} (H×W), expected "
                                f"{image_size[0]}×{image_size[1]}")
                elif kind == "keypoints":
                    read_keypoints(path)
                else:
                    read_depth(path, image_size)
            except Exception as e:
                msg = str(e)
                problem(msg if str(path) in msg else f"{path}: {msg}")
    return rep.report()


@dataclass
class _Tally:
    counts: Counter
    problems: list

    def report(self) -> CheckReport:
        return CheckReport(Counter(self.counts), tuple(self.problems))
