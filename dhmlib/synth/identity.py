"""Hand identities: the per-subject shape parameters of the procedural hand."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

#: Relative spread of every scale parameter in :meth:`HandIdentity.sample` (±8 %).
SCALE_SPREAD = 0.08
#: Spread of the thumb abduction offset in :meth:`HandIdentity.sample`, radians (±0.08 ≈ ±4.6°).
THUMB_SPREAD = 0.08


@dataclass(frozen=True)
class HandIdentity:
    """Shape parameters of one procedural hand; all scales are unitless factors around 1.

    Attributes:
        finger_length: (5,) length scales of the thumb, index, middle, ring and pinky
            phalanges (thumb: metacarpal and phalanges).
        thickness: scale of finger radii and of palm thickness.
        palm_width: scale of the palm across the knuckles (z).
        palm_length: scale of the palm from wrist to knuckles (x), thumb base included.
        thumb_abduction: offset of the thumb's spread away from the index, radians.
    """

    finger_length: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    thickness: float = 1.0
    palm_width: float = 1.0
    palm_length: float = 1.0
    thumb_abduction: float = 0.0

    def __post_init__(self):
        fl = tuple(float(x) for x in self.finger_length)
        if len(fl) != 5:
            raise ValueError(f"HandIdentity.finger_length: expected 5 scales (thumb..pinky), got {len(fl)}")
        object.__setattr__(self, "finger_length", fl)
        for name in ("thickness", "palm_width", "palm_length"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "thumb_abduction", float(self.thumb_abduction))
        scales = fl + (self.thickness, self.palm_width, self.palm_length)
        if not all(0.5 <= s <= 1.5 for s in scales):
            raise ValueError(f"HandIdentity: expected scales within [0.5, 1.5], got {scales}")
        if abs(self.thumb_abduction) > 0.5:
            raise ValueError(f"HandIdentity.thumb_abduction: expected |value| <= 0.5 rad, got {self.thumb_abduction}")

    @classmethod
    def default(cls) -> "HandIdentity":
        """The canonical hand (every scale 1, no thumb offset)."""
        return cls()

    @classmethod
    def sample(cls, seed: int) -> "HandIdentity":
        """A random but plausible identity, deterministic in ``seed``.

        Scales are uniform in ``1 ± SCALE_SPREAD``; the five finger lengths share
        a common factor (long-fingered hands are long-fingered throughout) plus
        a smaller per-finger part.  The thumb offset is uniform in ``±THUMB_SPREAD``.
        """
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4D48]))  # 'HM'
        common = rng.uniform(-1.0, 1.0)
        own = rng.uniform(-1.0, 1.0, size=5)
        fl = 1.0 + SCALE_SPREAD * (0.6 * common + 0.4 * own)
        thickness, width, length = 1.0 + SCALE_SPREAD * rng.uniform(-1.0, 1.0, size=3)
        thumb = THUMB_SPREAD * rng.uniform(-1.0, 1.0)
        return cls(tuple(fl.tolist()), float(thickness), float(width), float(length), float(thumb))

    def to_dict(self) -> dict:
        """Plain-Python dict (JSON-ready)."""
        d = asdict(self)
        d["finger_length"] = list(self.finger_length)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HandIdentity":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"HandIdentity.from_dict: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**{k: (tuple(v) if k == "finger_length" else v) for k, v in d.items()})
