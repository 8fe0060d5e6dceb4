"""The anatomy table: ranges, gestures, random plausible poses, and the virtual capture's poses inside them.

The capture's bytes depend on the natural range, the capture gestures and the random draws:
those are pinned here against the values they had before the table moved to
``dhmlib.hand.anatomy`` (written out literally below, not imported).
"""
from __future__ import annotations

import numpy as np
import pytest

from dhmlib.hand.anatomy import (AXES, AXIS_LABELS, JOINT_LIMITS_DEG, NATURAL_RANGE_DEG, clamp_to_limits,
                                 describe_joints, gesture_degrees, gesture_euler, gesture_names, joint_limits_deg,
                                 natural_range, natural_range_deg, pose_degrees, random_plausible_pose, within_limits)
from dhmlib.hand.skeleton import FINGERS, Skeleton, official_skeleton
from dhmlib.synth.capture import CaptureConfig
from dhmlib.synth.poses import SEQUENCE_KINDS, plan_sequences, subject_sequences

SK = official_skeleton()

#: the capture's limits before the move (dhmlib/synth/poses.py LIMITS_DEG at ac6c0cb), by joint kind
CAPTURE_LIMITS_DEG = {
    "finger1": ((-8, 8), (-25, 25), (-20, 95)),
    "finger2": ((0, 0), (0, 0), (-5, 110)),
    "finger3": ((0, 0), (0, 0), (-8, 80)),
    "thumb0": ((-15, 15), (-20, 20), (-15, 25)),
    "thumb1": ((-20, 20), (-30, 30), (-25, 60)),
    "thumb2": ((0, 0), (0, 0), (-15, 60)),
    "thumb3": ((0, 0), (0, 0), (-20, 80)),
}
#: the capture's fist and spread keyframes before the move (degrees, (x, y, z))
CAPTURE_FIST = {**{f + s: v for f in FINGERS[1:] for s, v in (("1", (0, 0, 85)), ("2", (0, 0, 100)),
                                                               ("3", (0, 0, 62)))},
                "pinky1": (0, 6, 90), "thumb0": (0, 0, 12), "thumb1": (0, 8, 30), "thumb2": (0, 0, 35),
                "thumb3": (0, 0, 40)}
CAPTURE_SPREAD = {**{f + s: v for f in FINGERS[1:] for s, v in (("1", (0, 0, -6)), ("2", (0, 0, -4)),
                                                                 ("3", (0, 0, -4)))},
                  "index1": (0, -20, -6), "middle1": (0, -4, -6), "ring1": (0, 12, -6), "pinky1": (0, 24, -6),
                  "thumb0": (0, 0, -10), "thumb1": (0, -15, -20), "thumb2": (0, 0, -10)}
CAPTURE_GESTURES = ("relaxed", "open", "fist", "point", "pinch", "spread", "ok")


def _old_kind(short: str) -> str | None:
    if short.endswith("_null") or short == "wrist":
        return None
    return short if short.startswith("thumb") else "finger" + short[-1]


def default_capture_sequences():
    """The takes of subject 1 of the default capture (``dhm synth`` with no options), without rendering."""
    c = CaptureConfig()
    assert (c.frames, c.seed, c.subjects) == (200, 0, 1)
    return subject_sequences(SK, c.frames, c.seed, 1)


# --------------------------------------------------------------------------- ranges
def test_ranges_shape_and_no_dof_axes_are_zero():
    mask = SK.dof_mask()
    for table in (joint_limits_deg(SK), natural_range_deg(SK)):
        assert table.shape == (SK.num_joints, 3, 2)
        assert np.all(table[~mask] == 0)
        assert np.all(table[mask][:, 0] < table[mask][:, 1])
    assert AXES == ("x", "y", "z") and AXIS_LABELS == {"x": "twist", "y": "spread", "z": "flex"}
    for short, axes in JOINT_LIMITS_DEG.items():           # only the axes a joint has are listed
        j = SK.index(short)
        assert {a for a in AXES if mask[j, AXES.index(a)]} == set(axes), short
        assert set(NATURAL_RANGE_DEG[short]) == set(axes), short


def test_natural_range_lies_inside_the_range_of_motion():
    rom, nat = joint_limits_deg(SK), natural_range_deg(SK)
    assert np.all(rom[..., 0] <= nat[..., 0]) and np.all(nat[..., 1] <= rom[..., 1])
    assert set(NATURAL_RANGE_DEG) == set(JOINT_LIMITS_DEG)


def test_natural_range_is_the_capture_table_bit_for_bit():
    lo, hi = natural_range(SK)
    mask = SK.dof_mask()
    for j, short in enumerate(SK.short_names):
        kind = _old_kind(short)
        if kind is None:
            assert np.all(lo[j] == 0) and np.all(hi[j] == 0)
            continue
        ref = np.deg2rad(np.array(CAPTURE_LIMITS_DEG[kind], dtype=float))  # the old formula
        assert lo[j].tobytes() == (ref[:, 0] * mask[j]).tobytes(), short
        assert hi[j].tobytes() == (ref[:, 1] * mask[j]).tobytes(), short


def test_within_and_clamp():
    lim = joint_limits_deg(SK)
    j, a = SK.index("index1"), 2
    e = np.zeros((SK.num_joints, 3))
    e[j, a] = lim[j, a, 1] + 5.0
    e[SK.index("index2"), 0] = 3.0                      # an axis the joint does not have
    ok = within_limits(e, SK)
    assert not ok[j, a] and not ok[SK.index("index2"), 0] and ok.sum() == ok.size - 2
    c = clamp_to_limits(e, SK)
    assert c[j, a] == lim[j, a, 1] and c[SK.index("index2"), 0] == 0 and within_limits(c, SK).all()
    assert within_limits(np.stack([c, c]), SK).shape == (2, SK.num_joints, 3)


# --------------------------------------------------------------------------- gestures
def test_gestures_within_the_range_of_motion_and_on_existing_axes():
    assert gesture_names()[0] == "rest" and set(gesture_names()) >= {
        "rest", "relaxed", "open", "fist", "point", "pinch", "spread", "ok", "thumbs_up"}
    mask = SK.dof_mask()
    for name in gesture_names():
        deg = gesture_degrees(name, SK)
        assert within_limits(deg, SK).all(), name
        assert np.all(deg[~mask] == 0), name
        np.testing.assert_array_equal(gesture_euler(name, SK), np.deg2rad(deg))
    assert np.all(gesture_degrees("rest", SK) == 0)
    nat = natural_range_deg(SK)
    for name in CAPTURE_GESTURES:                       # the capture's gestures: inside its natural range
        deg = gesture_degrees(name, SK)
        assert np.all((nat[..., 0] <= deg) & (deg <= nat[..., 1])), name


def test_capture_gestures_are_the_old_keyframes():
    for name, old in (("fist", CAPTURE_FIST), ("spread", CAPTURE_SPREAD)):
        ref = np.zeros((SK.num_joints, 3))
        for joint, v in old.items():
            ref[SK.index(joint)] = np.deg2rad(np.asarray(v, dtype=float))
        assert gesture_euler(name, SK).tobytes() == (ref * SK.dof_mask()).tobytes(), name


def test_unknown_gesture_joint_or_axis_raise():
    with pytest.raises(KeyError, match="known gestures: rest, relaxed"):
        gesture_degrees("wave", SK)
    with pytest.raises(KeyError, match="unknown joint 'index9'"):
        pose_degrees({"index9": 10.0}, SK)
    with pytest.raises(ValueError, match="'index2' about x, which the joint does not have"):
        pose_degrees({"index2": (10.0, 0.0, 0.0)}, SK)
    with pytest.raises(ValueError, match="expected a number or"):
        pose_degrees({"index1": (1.0, 2.0)}, SK)


# --------------------------------------------------------------------------- random plausible poses
def test_random_plausible_pose_follows_its_formula():
    lo, hi = natural_range(SK)
    for seed in range(5):
        got = random_plausible_pose(SK, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)                  # the formula, written out
        ref = lo + rng.uniform(0.1, 0.75, size=lo.shape) * (hi - lo)
        for f in ("index", "middle", "ring", "pinky"):
            p, d = SK.index(f + "2"), SK.index(f + "3")
            ref[d, 2] = min(max(0.65 * ref[p, 2] + rng.normal(0, 0.08), lo[d, 2]), hi[d, 2])
        assert got.tobytes() == ref.tobytes(), seed
        assert np.all((lo <= got) & (got <= hi))
    batch = random_plausible_pose(SK, np.random.default_rng(9), batch=4)
    one = np.random.default_rng(9)
    assert batch.shape == (4, SK.num_joints, 3)
    assert all(np.array_equal(batch[b], random_plausible_pose(SK, one)) for b in range(4))


def test_unknown_joints_get_the_fallback_range_and_stay_at_rest_in_random_poses():
    sk = Skeleton(("root", "knuckle1", "tip_null"), (-1, 0, 1))
    assert np.all(joint_limits_deg(sk)[1] == [[-90, 90]] * 3)
    assert np.all(natural_range_deg(sk) == 0)


# --------------------------------------------------------------------------- the default capture
def test_default_capture_plan_is_pinned():
    """Per take of the default capture: frames, Σ euler, Σ euler², Σ wrist translation (re-recorded when
    the free take became the 64-frame, 13-pose held-out take of issue 14)."""
    recorded = [("fist", 23, 250.03848612761817, 251.6321636248672, 581.2447572938431),
                ("point", 23, 195.80310243113234, 186.7938707664702, 256.1554225050687),
                ("pinch", 23, 111.60979923810791, 44.63364773198466, 25.607193392490366),
                ("spread", 23, 28.95933287468339, 12.661272242524163, 168.4882886936092),
                ("ok", 22, 100.65546085342467, 40.98996572081545, 18.22668971894627),
                ("free", 64, 434.45574575637505, 370.49081572432493, -309.09858131384203),
                ("ROM_fingers", 22, 25.72580068081918, 57.65904667239914, 238.94251048127296)]
    seqs = default_capture_sequences()
    assert [(s.name, s.num_frames) for s in seqs] == [r[:2] for r in recorded] == plan_sequences(200)
    assert [s.name for s in seqs] == list(SEQUENCE_KINDS)
    for s, (_, _, total, squares, shift) in zip(seqs, recorded):
        np.testing.assert_allclose([s.euler.sum(), (s.euler ** 2).sum(), s.root[:, :3, 3].sum()],
                                   [total, squares, shift], rtol=1e-10, atol=1e-9, err_msg=s.name)


def test_every_frame_of_the_default_capture_is_within_the_widget_limits():
    euler = np.concatenate([s.euler for s in default_capture_sequences()])       # (200, J, 3) radians
    assert euler.shape == (200, SK.num_joints, 3)
    deg = np.rad2deg(euler)
    assert within_limits(deg, SK, atol=0.0).all()
    assert np.array_equal(clamp_to_limits(deg, SK), deg)                          # nothing to clamp
    lo, hi = natural_range(SK)
    assert np.all((lo <= euler) & (euler <= hi))


# --------------------------------------------------------------------------- help text
def test_describe_joints_lists_every_joint_in_skeleton_order():
    text = describe_joints()
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.split()[0] in
            SK.short_names]
    assert rows == list(SK.short_names)
    for word in ("MCP", "PIP", "DIP", "CMC", "IP", "twist", "spread", "flex", "palm", "_null"):
        assert word in text, word
    line = {r.split()[0]: r for r in text.splitlines() if r.startswith("  ")}
    assert "x -15..15 y -25..25 z -30..95" in line["index1"] and "MCP" in line["index1"]
    assert "z -5..110" in line["index2"] and "PIP" in line["index2"]
    assert "CMC" in line["thumb1"] and "IP" in line["thumb3"] and "no rotation" in line["index_null"]
    assert describe_joints(SK) == text
