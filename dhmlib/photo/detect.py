"""Hand landmarks from a real-photo detector: MediaPipe Hands (the ``photo`` extra, ``mediapipe==0.10.21``).

MediaPipe 0.10.21 bundles its hand models (``hand_landmark_full.tflite``, palm detection) inside the wheel and
runs them offline through ``mediapipe.solutions.hands``; nothing is downloaded. MediaPipe and its models are
Apache-2.0 licensed (the installed package's metadata says ``License: Apache 2.0``).

MediaPipe's 21 landmarks and our skeleton (:mod:`dhmlib.hand.skeleton`), matched by anatomy::

    MediaPipe               ours (short name)          MediaPipe               ours
    0  WRIST             →  wrist                      9..12 MIDDLE MCP..TIP →  middle1, middle2, middle3, middle_null
    1  THUMB_CMC         →  thumb1                     13..16 RING MCP..TIP  →  ring1, ring2, ring3, ring_null
    2  THUMB_MCP         →  thumb2                     17..20 PINKY MCP..TIP →  pinky1, pinky2, pinky3, pinky_null
    3  THUMB_IP          →  thumb3
    4  THUMB_TIP         →  thumb_null                 thumb0 (inside the palm, no keypoint in the
    5..8 INDEX MCP..TIP  →  index1, index2, index3,    official files either) has no landmark
                            index_null

That is the 21 keypoints of the official ``.pts`` files one for one (``dhmlib.data.keypoints``): the
``*1`` joints are the knuckles (MCP) of the fingers and the thumb's base (CMC), ``_null`` the tips.
``tests/test_photo_detect.py`` checks it on the virtual capture, where the true keypoints are known.

Handedness: ``solutions.hands`` labels hands as seen in a *mirrored* (selfie) image; for an ordinary photo
its "Left" is a right hand. :attr:`Detection.is_right` undoes that (``mirrored=False``, the default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhmlib.photo.image import Photo

#: MediaPipe landmark index → our short joint name (module docstring)
MEDIAPIPE_NAMES = ("wrist", "thumb1", "thumb2", "thumb3", "thumb_null") + tuple(
    f + s for f in ("index", "middle", "ring", "pinky") for s in ("1", "2", "3", "_null"))
#: MediaPipe's own names, for tables and figures
MEDIAPIPE_LANDMARKS = ("WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP") + tuple(
    f"{f}_{s}" for f in ("INDEX_FINGER", "MIDDLE_FINGER", "RING_FINGER", "PINKY") for s in ("MCP", "PIP", "DIP", "TIP"))
INSTALL_HINT = "pip install -e '.[photo]'"


class MissingExtra(ImportError):
    """MediaPipe is not installed; the message says how to install the ``photo`` extra."""


def require_mediapipe():
    """``mediapipe.solutions.hands``, or :class:`MissingExtra` telling ``pip install -e '.[photo]'``."""
    try:
        # deferred: MediaPipe is the optional `photo` extra (and forces numpy < 2); dhmlib imports without it
        from mediapipe.python.solutions import hands
    except ImportError as e:
        raise MissingExtra(f"fitting photos needs MediaPipe Hands, the 'photo' extra: {INSTALL_HINT} "
                           f"(mediapipe==0.10.21; {e})") from None
    return hands


@dataclass(frozen=True)
class Detection:
    """One hand found in a photo.

    Attributes:
        pixels: (21, 2) landmarks in MediaPipe's order, pixels of the photo as read (x right, y down;
            continuous, pixel centres at +0.5 as in :class:`dhmlib.render.cameras.Cameras`).
        depth: (21,) MediaPipe's relative depth, pixels (its ``z`` × image width): 0 at the wrist,
            negative towards the camera.
        label: MediaPipe's handedness label ("Left"/"Right", for a mirrored image).
        handedness_score: its confidence in ``label``.
        attempt: which try found it (:data:`ATTEMPTS`).
        mirrored: whether the photo is a selfie (mirrored) image.
    """

    pixels: np.ndarray
    depth: np.ndarray
    label: str
    handedness_score: float
    attempt: str = "plain"
    mirrored: bool = False

    @property
    def is_right(self) -> bool:
        """A right hand (MediaPipe's label is for a mirrored image)."""
        return (self.label == "Right") == self.mirrored

    @property
    def size_px(self) -> float:
        """Hand size in pixels: the longest side of the landmarks' bounding box (the FreiHAND-style normaliser)."""
        return float(np.max(self.pixels.max(0) - self.pixels.min(0)))


#: the tries of :class:`HandDetector`, in order, until one finds a hand (of the expected side, when one is
#: expected): the image as it is; then padded by a quarter of its longer side on every side (palm detection is
#: trained on hands with room around them: the virtual capture's hands end at a cut wrist near the border);
#: then the padded image mirrored (landmarks and handedness mirrored back); then the padded image turned by
#: ±30° (landmarks turned back); then the padded image at a lower detection threshold. Measured on the
#: capture's held-out images (bench/photo_fit.py): see the README.
ATTEMPTS = ("plain", "padded", "padded-mirrored", "padded-rot+30", "padded-rot-30", "padded-low")
_TURN = {"padded-rot+30": 30.0, "padded-rot-30": -30.0}


def _pad(rgb: np.ndarray, frac: float) -> tuple[np.ndarray, int]:
    p = int(round(frac * max(rgb.shape[:2])))
    edge = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0).astype(np.uint8)
    out = np.empty((rgb.shape[0] + 2 * p, rgb.shape[1] + 2 * p, 3), np.uint8)
    out[:] = edge
    out[p:p + rgb.shape[0], p:p + rgb.shape[1]] = rgb
    return out, p


class HandDetector:
    """MediaPipe Hands in static-image mode, with the retries of :data:`ATTEMPTS`.

    Use as a context manager (or call :meth:`close`). ``detect(photo)`` → the hands found, best first.

    Args:
        max_hands: hands per photo.
        min_confidence: palm detection threshold of the tries; ``low_confidence`` of ``padded-low``.
        model_complexity: 0 (lite) or 1 (full, ``hand_landmark_full.tflite``).
        attempts: which of :data:`ATTEMPTS` to try, in that order.
        pad: padding of the padded tries, a fraction of the longer side.
    """

    def __init__(self, max_hands: int = 2, min_confidence: float = 0.5, low_confidence: float = 0.1,
                 model_complexity: int = 1, attempts=ATTEMPTS, pad: float = 0.25):
        hands = require_mediapipe()
        unknown = set(attempts) - set(ATTEMPTS)
        if unknown:
            raise ValueError(f"HandDetector: unknown attempts {sorted(unknown)}; expected some of {ATTEMPTS}")
        self.attempts, self.pad = tuple(attempts), pad
        self._models = {
            c: hands.Hands(static_image_mode=True, max_num_hands=max_hands, model_complexity=model_complexity,
                           min_detection_confidence=c, min_tracking_confidence=0.5)
            for c in {min_confidence, low_confidence}}
        self._conf = {a: min_confidence for a in ATTEMPTS} | {"padded-low": low_confidence}
        #: hands of the other side that the last :meth:`detect` with ``right=`` passed over
        self.rejected: list[Detection] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for m in self._models.values():
            m.close()
        self._models = {}

    def _run(self, rgb: np.ndarray, attempt: str, mirrored: bool) -> list[Detection]:
        img, p = (rgb, 0) if attempt == "plain" else _pad(rgb, self.pad)
        flip = attempt == "padded-mirrored"
        H, W = img.shape[:2]
        centre = np.array([W / 2.0, H / 2.0])
        turn = _TURN.get(attempt)
        if turn is not None:        # counter-clockwise on screen by `turn` degrees about the centre
            from PIL import Image

            img = np.asarray(Image.fromarray(img).rotate(turn, resample=Image.BILINEAR, center=tuple(centre),
                                                         fillcolor=tuple(int(x) for x in img[0, 0])))
        res = self._models[self._conf[attempt]].process(np.ascontiguousarray(img[:, ::-1]) if flip else img)
        if not res.multi_hand_landmarks:
            return []
        out = []
        for lms, hd in zip(res.multi_hand_landmarks, res.multi_handedness):
            a = np.array([[lm.x, lm.y, lm.z] for lm in lms.landmark], dtype=np.float64)   # normalized
            uv = np.stack([(1.0 - a[:, 0]) * W if flip else a[:, 0] * W, a[:, 1] * H], -1)
            if turn is not None:    # turn the landmarks back (y down: the screen's ccw turn is q = c + A (p − c))
                th = np.deg2rad(turn)
                A = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
                uv = (uv - centre) @ A + centre                 # p = c + Aᵀ (q − c)
            c = hd.classification[0]
            label = {"Left": "Right", "Right": "Left"}[c.label] if flip else c.label
            out.append(Detection(uv - p, a[:, 2] * W, label, float(c.score), attempt, mirrored))
        return sorted(out, key=lambda d: -d.handedness_score)

    def detect(self, photo: Photo | np.ndarray, mirrored: bool = False, right: bool | None = None) -> list[Detection]:
        """The hands in ``photo`` (a :class:`Photo` or an (H, W, 3) uint8 RGB array), highest score first.

        ``right``: only hands of that side count (True: right hands, as in the capture); the tries go on
        past a hand of the other side, which ends up in :attr:`rejected`.
        """
        rgb = photo.rgb if isinstance(photo, Photo) else np.ascontiguousarray(photo, dtype=np.uint8)
        self.rejected = []
        for attempt in self.attempts:
            found = self._run(rgb, attempt, mirrored)
            if right is not None:
                self.rejected += [d for d in found if d.is_right != right]
                found = [d for d in found if d.is_right == right]
            if found:
                return found
        return []


def landmarks_to_joints(values: np.ndarray, skeleton) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe-ordered rows (21, ...) → (J, ...) in ``skeleton``'s joint order by name, and valid (J,) 0/1.

    Joints without a landmark (``thumb0``) are zero and invalid.
    """
    values = np.asarray(values)
    out = np.zeros((skeleton.num_joints,) + values.shape[1:], dtype=values.dtype)
    valid = np.zeros(skeleton.num_joints)
    for i, name in enumerate(MEDIAPIPE_NAMES):
        j = skeleton.index(name)
        out[j], valid[j] = values[i], 1.0
    return out, valid


def mediapipe_licence() -> str:
    """The licence the installed MediaPipe declares in its metadata (e.g. "Apache 2.0"), or "unknown"."""
    from importlib import metadata

    try:
        md = metadata.metadata("mediapipe")
    except metadata.PackageNotFoundError:
        return "not installed"
    lic = md.get("License") or ""
    if not lic:
        lic = "; ".join(c.split("::")[-1].strip() for c in md.get_all("Classifier") or [] if "License" in c)
    return lic or "unknown"
