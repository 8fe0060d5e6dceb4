"""Walk a dataset, count what is there, list every problem (behind ``dhm check-data ROOT``).

Every file is opened with the same readers the dataset uses (array-only
pickles, keypoint parser, image header), so a problem reported here is one
that training would hit.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dhmlib.data.dataset import IMAGE_SIZE, read_depth
from dhmlib.data.keypoints import read_keypoints
from dhmlib.data.layout import DEPTH_RE, IMAGE_RE, KEYPOINT_RE, Layout, is_color_camera
from dhmlib.hand.handmodel import HandModel
from dhmlib.render.cameras import read_krt

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
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def capture_size(root) -> tuple[int, int]:
    """(H, W) of a dataset's images and depth maps: a virtual capture's own (its ``params.json``), else the
    official 512 × 334."""
    try:
        params = json.loads((Layout(root, 1).synthetic_dir / "params.json").read_text())
        h, w = params["image_size"]
        return int(h), int(w)
    except (OSError, ValueError, KeyError, TypeError):
        return tuple(IMAGE_SIZE)


def check_dataset(root, image_size=None, progress: bool = True, max_problems: int = 1000) -> CheckReport:
    """Check a dataset root in the official layout; returns counts and problems.

    Without ``images/`` (the public release) the keypoint files and depth maps are still read in full.
    ``image_size``: (H, W) expected of images and depth maps (None: :func:`capture_size`).
    """
    from tqdm.auto import tqdm  # a bar only when asked for

    root = Path(root)
    rep = _Tally(Counter(), [])
    image_size = capture_size(root) if image_size is None else image_size

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
    subjects = sorted(_subjects(img_root) | _subjects(root / "annotations" / "keypoints")
                      | _subjects(root / "annotations" / "depthmaps"))
    if not subjects:
        problem(f"{root}: no subject_N folders in images/, annotations/keypoints/ or annotations/depthmaps/")
    for n in subjects:
        lay = Layout(root, n)
        rep.counts["subjects"] += 1
        image_frames = set()
        files = []
        for seq in lay.sequences(all_sequences=True) if lay.images_dir.is_dir() else []:
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
        if img_root.is_dir() and not lay.images_dir.is_dir():
            problem(f"{lay.images_dir}: images folder of subject {n} not found")
        kp_frames = set()
        if lay.keypoints_dir.is_dir():
            for e in os.scandir(lay.keypoints_dir):
                if (m := KEYPOINT_RE.match(e.name)):
                    kp_frames.add(int(m.group(1)))
                    files.append(("keypoints", Path(e.path)))
        else:
            problem(f"{lay.keypoints_dir}: keypoints folder not found")
        depth_frames = set()
        if lay.depth_dir.is_dir():
            for fd in os.scandir(lay.depth_dir):
                if not fd.is_dir():
                    continue
                found = False
                for e in os.scandir(fd.path):
                    if (m := DEPTH_RE.match(e.name)):
                        found = True
                        files.append(("depth", Path(e.path)))
                        if cams and m.group(1) not in cams:
                            problem(f"{e.path}: camera {m.group(1)!r} is not in {krt}")
                if found and fd.name.isdigit():
                    depth_frames.add(int(fd.name))
        else:
            problem(f"{lay.depth_dir}: depth map folder not found")
        rep.counts["frames with depth maps"] += len(depth_frames)
        no_depth = sorted(kp_frames - depth_frames) if lay.depth_dir.is_dir() else []
        if no_depth:
            problem(f"{lay.depth_dir}: {len(no_depth)} frames have keypoints but no depth maps "
                    f"(first: {no_depth[0]:06d}/)")
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


def _subjects(folder: Path) -> set[int]:
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for e in os.scandir(folder) if e.is_dir() and (m := SUBJECT_RE.match(e.name))}


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


class PreflightError(ValueError):
    """A file a training run would read is missing, empty or truncated; the message names it."""


def preflight(root, subject: int = 1, *, images: bool = True, max_problems: int = 5) -> dict:
    """A quick check of the files a run will read, before it starts (what :func:`check_dataset` reads in full).

    Sizes and headers only, no decoding: every keypoint file is parsed (small), every depth-map pickle of
    subject ``subject`` must hold at least a byte per pixel, start as a pickle does and end with the pickle's
    STOP byte (a truncated pickle does not), and with
    ``images`` every JPEG must begin with the JPEG start marker and end (within 32 bytes) with the end marker (a truncated JPEG lacks the end marker).
    About a second for the default capture (4800 depth maps and 4800 images).

    Returns:
        counts of what was checked (``keypoint files``, ``depth maps``, ``images``, ``seconds``).
    Raises:
        PreflightError: naming the first files (up to ``max_problems``) and what was expected; run
            ``dhm check-data ROOT`` for the full read.
    """
    t0 = time.perf_counter()
    lay = Layout(root, subject)
    problems: list[str] = []
    counts = Counter()

    def bad(msg):
        counts["problems"] += 1
        if len(problems) < max_problems:
            problems.append(msg)

    if lay.keypoints_dir.is_dir():
        for e in sorted(os.scandir(lay.keypoints_dir), key=lambda e: e.name):
            if KEYPOINT_RE.match(e.name):
                counts["keypoint files"] += 1
                try:
                    read_keypoints(e.path)
                except Exception as err:   # noqa: BLE001 (the reader names file and line)
                    msg = str(err)
                    bad(msg if e.path in msg else f"{e.path}: {msg}")
    h, w = capture_size(root)
    if lay.depth_dir.is_dir():
        paths = sorted(e.path for fd in os.scandir(lay.depth_dir) if fd.is_dir()
                       for e in os.scandir(fd.path) if DEPTH_RE.match(e.name))
        for path in paths:
            counts["depth maps"] += 1
            n = os.stat(path).st_size
            if n < h * w:
                bad(f"{path}: {n} bytes, fewer than the {h * w} pixels of a {h}×{w} depth map: truncated "
                    "(expected a pickled numpy array)")
                continue
            with open(path, "rb") as fh:
                head = fh.read(2)
                fh.seek(-1, os.SEEK_END)
                tail = fh.read(1)
            if not (head[:1] == b"\x80" or head[:1] in (b"c", b"(", b"]", b"}")):
                bad(f"{path}: does not start as a pickle does (first bytes {head!r}); expected a pickled numpy array")
            elif tail != b".":
                bad(f"{path}: truncated (a pickle ends with its STOP byte '.', this one with {tail!r}); "
                    "expected a pickled numpy array")
    if images and lay.images_dir.is_dir():
        for dirpath, _, names in os.walk(lay.images_dir):
            for name in sorted(names):
                if not IMAGE_RE.match(name):
                    continue
                path = os.path.join(dirpath, name)
                counts["images"] += 1
                with open(path, "rb") as fh:
                    head = fh.read(2)
                    try:
                        fh.seek(-32, os.SEEK_END)
                        tail = fh.read(32)
                    except OSError:      # shorter than 32 bytes: not a whole image anyway
                        tail = b""
                if head != JPEG_START or JPEG_END not in tail:
                    why = "truncated" if head == JPEG_START else "not a JPEG"
                    bad(f"{path}: not a complete JPEG ({why}; expected the start marker FFD8 and the end marker FFD9)")
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    if problems:
        more = f" (and {counts['problems'] - len(problems)} more)" if counts["problems"] > len(problems) else ""
        raise PreflightError("; ".join(problems) + more + f"; 'dhm check-data {root}' reads every file")
    return dict(counts)


@dataclass
class _Tally:
    counts: Counter
    problems: list

    def report(self) -> CheckReport:
        return CheckReport(Counter(self.counts), tuple(self.problems))
