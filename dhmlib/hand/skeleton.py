"""Joint tree of the hand: names, parents, tree levels and degrees of freedom.

Joint order of the official right-hand model (indices are derived from
``skeleton.txt`` by name; nothing else in dhmlib hard-codes them)::

    wrist(21) ─┬─ thumb0(4) ─ thumb1(3) ─ thumb2(2) ─ thumb3(1) ─ thumb_null(0)
               ├─ index1(8) ─ index2(7) ─ index3(6) ─ index_null(5)
               ├─ middle1(12) ─ middle2(11) ─ middle3(10) ─ middle_null(9)
               ├─ ring1(16) ─ ring2(15) ─ ring3(14) ─ ring_null(13)
               └─ pinky1(20) ─ pinky2(19) ─ pinky3(18) ─ pinky_null(17)

Degrees of freedom by name suffix: ``_null`` none; ``2``/``3`` flexion (z)
only; ``1`` and ``thumb0`` x, y, z; the root (wrist) none: it is placed by
rigid alignment.  That is 28 DoF for the official skeleton.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
JOINT_PREFIX = "b_r_"

#: Official joint names in the order the released indices imply.
OFFICIAL_JOINT_NAMES = tuple(
    [JOINT_PREFIX + n for n in ("thumb_null", "thumb3", "thumb2", "thumb1", "thumb0")]
    + [JOINT_PREFIX + f + s for f in FINGERS[1:] for s in ("_null", "3", "2", "1")]
    + [JOINT_PREFIX + "wrist"]
)


def short_name(name: str) -> str:
    """``b_r_index1`` → ``index1`` (names without the prefix pass through)."""
    for prefix in ("b_r_", "b_l_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def dof_of(name: str, is_root: bool) -> tuple[bool, bool, bool]:
    """Which Euler axes (x, y, z) a joint may rotate about, from its name."""
    s = short_name(name)
    if is_root or s.endswith("_null"):
        return (False, False, False)
    if s.endswith("2") or s.endswith("3"):
        return (False, False, True)
    return (True, True, True)  # *1 joints and thumb0


def finger_chain(finger: str) -> list[str]:
    """Short joint names of one finger, from the palm to the tip end (``thumb0`` … ``thumb_null``)."""
    if finger == "thumb":
        return ["thumb0", "thumb1", "thumb2", "thumb3", "thumb_null"]
    return [finger + "1", finger + "2", finger + "3", finger + "_null"]


def tree_depth(parents, names=None) -> list[int]:
    """Depth of each joint (root 0) from parent indices (-1 for a root); a cycle raises ValueError."""
    depth = [-1] * len(parents)
    for j in range(len(parents)):
        chain, k = [], j
        while k != -1 and depth[k] < 0:
            if k in chain:
                raise ValueError(f"skeleton: cycle through joint {names[k] if names else k!r}")
            chain.append(k)
            k = parents[k]
        base = -1 if k == -1 else depth[k]
        for i, c in enumerate(reversed(chain)):
            depth[c] = base + 1 + i
    return depth


def tree_levels(parents) -> list[list[int]]:
    """Joint indices grouped by tree depth, root level first."""
    depth = tree_depth(parents)
    levels = [[] for _ in range(max(depth) + 1)]
    for j, d in enumerate(depth):
        levels[d].append(j)
    return levels


@dataclass(frozen=True)
class Skeleton:
    """A joint tree.

    Attributes:
        names: J joint names (official ``b_r_*`` names or any unique names).
        parents: J parent indices, -1 for the single root.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    _depth: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.names) != len(self.parents):
            raise ValueError(f"skeleton: {len(self.names)} names but {len(self.parents)} parents")
        depth = tree_depth(self.parents, self.names)
        object.__setattr__(self, "_depth", tuple(depth))

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def root(self) -> int:
        return self.parents.index(-1)

    @property
    def depth(self) -> tuple[int, ...]:
        """Tree depth per joint (root 0)."""
        return self._depth

    @property
    def levels(self) -> tuple[tuple[int, ...], ...]:
        """Joint indices grouped by tree depth, root level first."""
        return tuple(tuple(level) for level in tree_levels(self.parents))

    @property
    def short_names(self) -> tuple[str, ...]:
        return tuple(short_name(n) for n in self.names)

    def children(self, j: int) -> list[int]:
        return [c for c, p in enumerate(self.parents) if p == j]

    def descendants(self, j: int) -> list[int]:
        """All joints below ``j`` (not including ``j``)."""
        out, stack = [], self.children(j)
        while stack:
            c = stack.pop()
            out.append(c)
            stack.extend(self.children(c))
        return sorted(out)

    def index(self, name: str) -> int:
        """Joint index by full or short name (``index1`` or ``b_r_index1``)."""
        if name in self.names:
            return self.names.index(name)
        shorts = self.short_names
        if name in shorts:
            return shorts.index(name)
        raise KeyError(f"unknown joint {name!r}; known joints: {', '.join(shorts)}")

    def dof_mask(self) -> np.ndarray:
        """(J, 3) bool: which Euler axes each joint may use."""
        root = self.root
        return np.array([dof_of(n, j == root) for j, n in enumerate(self.names)], dtype=bool)

    def alignment_joints(self) -> list[int]:
        """The four finger ``*1`` joints and the root, used for rigid alignment."""
        return [self.index(f + "1") for f in FINGERS[1:]] + [self.root]

    def finger_of(self, j: int) -> str | None:
        s = short_name(self.names[j])
        for f in FINGERS:
            if s.startswith(f):
                return f
        return None


def official_skeleton() -> Skeleton:
    """The official 22-joint right-hand tree (names and order of :data:`OFFICIAL_JOINT_NAMES`)."""
    idx = {short_name(n): i for i, n in enumerate(OFFICIAL_JOINT_NAMES)}
    parents = [-1] * len(OFFICIAL_JOINT_NAMES)
    for f in FINGERS:
        chain = finger_chain(f)
        parents[idx[chain[0]]] = idx["wrist"]
        for a, b in zip(chain[:-1], chain[1:]):
            parents[idx[b]] = idx[a]
    return Skeleton(OFFICIAL_JOINT_NAMES, tuple(parents))
