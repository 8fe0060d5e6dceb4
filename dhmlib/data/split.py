"""Training / held-out frames: a deterministic split by sequence or by frame ranges.

The original code tests on its training frames. Here the held-out frames are whole
sequences or contiguous frame ranges, so that their poses are unseen in training
(neighbouring frames of one take are nearly the same pose; a random per-frame split
would leak them).

The frames split are the subject's *frames*: those with a keypoint file
(``annotations/keypoints/subject_N/keypoints<frame:04d>.pts``) and, when the depth-map
folder exists, a depth-map folder ``<frame:06d>/``; the same with or without ``images/``.
Rules (``held_out``):

* ``"seq:NAME[,NAME…]"``: the frames of these sequences (names or globs such as
  ``"seq:*_free"``). The sequence of a frame comes from ``images/subject_N/<seq>/cam*/``
  when the images exist, else from the virtual capture's
  ``annotations/synthetic/subject_N/params.json`` (its takes' first and last frames);
  real data without images has no sequence names: use frame ranges.
* ``"frames:A-B[,C-D,E…]"``: these frames (inclusive ranges or single frames).
* ``"last:P%"`` or ``"last:N"``: the last contiguous P % (rounded up, at least one) or N frames.
* ``None`` (default): the virtual capture holds out its free-motion take (``NNNN_RT_free``,
  random natural poses that no gesture take repeats); other data the last 10 % of frames.

Everything else is training: ``train ∪ test`` = all frames, ``train ∩ test`` = ∅; both
non-empty. The training set keeps ``ROM`` frames; :class:`~dhmlib.data.DeepHandMeshDataset`
drops them when it reads images (as the original), not without images.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dhmlib.data.layout import Layout

__all__ = ["FrameSplit", "SplitError", "split_frames", "all_frames", "sequence_frames", "DEFAULT_LAST"]

#: the default rule when no free-motion take is known
DEFAULT_LAST = "last:10%"
_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class SplitError(ValueError):
    """A split rule that cannot be applied; the message names the rule or folder and what was expected."""


@dataclass(frozen=True)
class FrameSplit:
    """Training and held-out frame numbers of one subject.

    Attributes:
        train, test: sorted frame numbers, disjoint, together all frames of the subject.
        rule: human-readable description (e.g. ``"held out: sequence 0005_RT_free (29 frames)"``).
        spec: the ``held_out`` string that reproduces the split (``split_frames(root, held_out=spec)``).
    """

    train: tuple[int, ...]
    test: tuple[int, ...]
    rule: str
    spec: str = ""

    def __post_init__(self):
        object.__setattr__(self, "train", tuple(sorted(int(f) for f in self.train)))
        object.__setattr__(self, "test", tuple(sorted(int(f) for f in self.test)))
        common = set(self.train) & set(self.test)
        if common:
            raise SplitError(f"split {self.spec or self.rule!r}: frames {sorted(common)[:10]} are in train and test")

    def part(self, name: str) -> tuple[int, ...]:
        """``"train"`` or ``"test"`` frames."""
        if name not in ("train", "test"):
            raise ValueError(f"part: expected 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    def to_dict(self) -> dict:
        """JSON-ready: ``{"spec", "rule", "train", "test"}`` (frame lists)."""
        return {"spec": self.spec, "rule": self.rule, "train": list(self.train), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameSplit":
        missing = [k for k in ("train", "test", "rule") if k not in d]
        if missing:
            raise SplitError(f"split dict: missing keys {missing}; expected train, test, rule (and spec)")
        return cls(tuple(d["train"]), tuple(d["test"]), str(d["rule"]), str(d.get("spec", "")))


# --------------------------------------------------------------------------- discovery
def all_frames(root, subject: int = 1) -> list[int]:
    """The subject's frames: keypoint files, restricted to frames with a depth-map folder when that folder exists."""
    lay = Layout(root, subject)
    frames = lay.keypoint_frames()
    if lay.depth_dir.is_dir():
        frames &= {int(e.name) for e in os.scandir(lay.depth_dir) if e.is_dir() and e.name.isdigit()}
    return sorted(frames)


def _synthetic_params(lay: Layout) -> Path:
    return lay.synthetic_dir / "params.json"


def sequence_frames(root, subject: int = 1) -> tuple[dict[str, list[int]], str]:
    """Sequence name → its frame numbers (sorted), and where that came from.

    From ``images/subject_N/<seq>/cam*/image<frame>.jpg`` (all sequences, ``ROM`` included) when
    the images exist, else from the virtual capture's ``annotations/synthetic/subject_N/params.json``.

    Raises:
        SplitError: neither exists (real data without images has no sequence names).
    """
    lay = Layout(root, subject)
    if lay.images_dir.is_dir():
        out = {}
        for seq in lay.sequences(all_sequences=True):
            frames = set()
            for cam in lay.cameras_of(seq):
                frames.update(lay.image_frames(seq, cam))
            out[seq] = sorted(frames)
        return out, str(lay.images_dir)
    p = _synthetic_params(lay)
    if p.is_file():
        try:
            seqs = json.loads(p.read_text())["sequences"]
            return {s["name"]: list(range(int(s["first_frame"]), int(s["last_frame"]) + 1)) for s in seqs}, str(p)
        except (ValueError, KeyError, TypeError) as e:
            raise SplitError(f"{p}: expected JSON with 'sequences': [{{name, first_frame, last_frame}}] "
                             f"({type(e).__name__}: {e})") from None
    raise SplitError(f"{lay.images_dir}: no images folder and no {p.relative_to(lay.root)}, so frames have no "
                     "sequence names; hold out frame ranges instead ('frames:A-B' or 'last:10%')")


def _free_take(root, subject: int) -> str | None:
    """The virtual capture's free-motion take (kind ``free``) when ``params.json`` names one."""
    p = _synthetic_params(Layout(root, subject))
    if not p.is_file():
        return None
    try:
        seqs = json.loads(p.read_text()).get("sequences", [])
    except ValueError:
        return None
    names = [s.get("name") for s in seqs if isinstance(s, dict) and s.get("kind") == "free"]
    return names[0] if names else None


# --------------------------------------------------------------------------- rules
def _parse_ranges(text: str, spec: str) -> set[int]:
    out = set()
    for item in text.split(","):
        m = _RANGE_RE.match(item)
        if not m:
            raise SplitError(f"held_out {spec!r}: {item.strip()!r} is not a frame or range; expected e.g. "
                             "'frames:1000-1199,1500-1599,1700'")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise SplitError(f"held_out {spec!r}: range {item.strip()!r} ends before it starts")
        out.update(range(a, b + 1))
    return out


def _last(text: str, frames: list[int], spec: str) -> tuple[set[int], str]:
    t = text.strip()
    try:
        if t.endswith("%"):
            pct = float(t[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            n = max(1, math.ceil(len(frames) * pct / 100 - 1e-9))
            what = f"the last {t} of frames"
        else:
            n = int(t)
            if n < 1:
                raise ValueError
            what = f"the last {n} frames"
    except ValueError:
        raise SplitError(f"held_out {spec!r}: expected 'last:P%' with 0 < P ≤ 100 or 'last:N' with N ≥ 1") from None
    return set(frames[len(frames) - n:]) if n <= len(frames) else set(frames), what


def split_frames(root, subject: int = 1, held_out: str | None = None) -> FrameSplit:
    """Split the subject's frames (:func:`all_frames`) into training and held-out frames.

    Args:
        root: dataset root (official layout).
        subject: subject number N.
        held_out: ``"seq:NAME[,NAME…]"`` (names or globs), ``"frames:A-B[,…]"``, ``"last:P%"``,
            ``"last:N"``, or ``None`` for the default (module docstring).

    Returns:
        A :class:`FrameSplit`; the same inputs give the same split.

    Raises:
        SplitError: an unknown rule, unknown sequences (the message lists the known ones),
            sequence names asked where none exist, or an empty training or held-out set.
    """
    lay = Layout(root, subject)
    frames = all_frames(root, subject)
    if not frames:
        raise SplitError(f"{lay.keypoints_dir}: no frames (expected keypoints<frame:04d>.pts files with depth-map "
                         f"folders in {lay.depth_dir})")
    if held_out is None:
        free = _free_take(root, subject)
        spec = f"seq:{free}" if free else DEFAULT_LAST
    else:
        spec = str(held_out).strip()
    kind, sep, arg = spec.partition(":")
    if not sep or not arg.strip():
        raise SplitError(f"held_out {spec!r}: expected 'seq:NAME[,NAME…]', 'frames:A-B[,…]', 'last:P%' or 'last:N'")
    kind = kind.strip()
    if kind == "seq":
        mapping, source = sequence_frames(root, subject)
        chosen = []
        for pat in (p.strip() for p in arg.split(",")):
            hits = [n for n in mapping if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                raise SplitError(f"held_out {spec!r}: no sequence matches {pat!r}; sequences in {source}: "
                                 f"{', '.join(mapping)}")
            chosen += [n for n in hits if n not in chosen]
        test = set().union(*(mapping[n] for n in chosen)) & set(frames)
        what = f"sequence{'s' if len(chosen) > 1 else ''} {', '.join(chosen)}"
    elif kind == "frames":
        test = _parse_ranges(arg, spec) & set(frames)
        what = f"frames {arg.strip()}"
    elif kind == "last":
        test, what = _last(arg, frames, spec)
    else:
        raise SplitError(f"held_out {spec!r}: unknown rule {kind!r}; expected 'seq:', 'frames:' or 'last:'")
    train = [f for f in frames if f not in test]
    if not test:
        raise SplitError(f"held_out {spec!r}: no frame of {lay.keypoints_dir} is held out (frames there: "
                         f"{frames[0]}…{frames[-1]}, {len(frames)} in all)")
    if not train:
        raise SplitError(f"held_out {spec!r}: every frame ({len(frames)}) is held out; nothing is left to train on")
    rule = f"held out: {what} ({len(test)} of {len(frames)} frames); trained on the other {len(train)}"
    return FrameSplit(tuple(train), tuple(sorted(test)), rule, spec)
