"""The virtual capture's pose effects (knuckles, dorsal stretch, palmar creases, thenar, palm arch) and the
LBS-residual decomposition (:mod:`dhmlib.synth.decompose`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dhmlib.hand.anatomy import GESTURES, gesture_euler, pose_degrees
from dhmlib.hand.layer import HandLayer
from dhmlib.mesh.check import self_intersections
from dhmlib.synth import build_procedural_hand
from dhmlib.synth.decompose import decompose_lbs_residual
from dhmlib.synth.deform import POSE_EFFECTS, DeformParams, GroundTruthDeformer
from dhmlib.synth.meshops import unique_edges

NEW = [e for e in POSE_EFFECTS if e != "flexion_bulge"]
#: fist magnitudes (max |offset| over the vertices, mm) each effect must reach, and not exceed
FIST_RANGE_MM = {"knuckle": (3.0, 5.0), "dorsal_stretch": (3.5, 6.5), "palmar_fold": (1.0, 3.0),
                 "thenar": (2.0, 6.0), "palm_arch": (4.0, 9.0)}


@pytest.fixture(scope="module")
def hand():
    return build_procedural_hand(2000, seed=5)


@pytest.fixture(scope="module")
def deformer(hand):
    return GroundTruthDeformer(hand, 5)


def _offsets(deformer, euler) -> dict[str, np.ndarray]:
    e = torch.as_tensor(np.asarray(euler, dtype=np.float64)) * deformer.layer.dof_mask
    return {k: v.numpy() for k, v in deformer.pose_offsets(e).items()}


def _size(off: np.ndarray) -> np.ndarray:
    return np.linalg.norm(off, axis=-1).max(-1)                       # (T,) max over vertices, mm


def test_pose_effects_vanish_at_rest_and_under_extension(hand, deformer):
    sk = hand.skeleton
    rest = _offsets(deformer, np.zeros((1, sk.num_joints, 3)))
    assert set(rest) == set(POSE_EFFECTS)
    assert all(np.all(v == 0) for v in rest.values())
    # extending the fingers (negative flexion) folds nothing: the hinge effects and the arch stay 0
    open_ = _offsets(deformer, gesture_euler("open", sk)[None])
    for k in ("knuckle", "dorsal_stretch", "palmar_fold", "palm_arch"):
        assert np.all(open_[k] == 0), k


def test_pose_effects_grow_with_flexion(hand, deformer):
    sk = hand.skeleton
    deg = np.linspace(0, 100, 11)
    fingers = np.stack([np.deg2rad(pose_degrees({"index1": (0, 0, a), "index2": a, "index3": 0.7 * a,
                                                 "ring1": (0, 0, a), "pinky1": (0, 0, a)}, sk)) for a in deg])
    off = _offsets(deformer, fingers)
    for k in ("knuckle", "dorsal_stretch", "palmar_fold", "palm_arch"):
        size = _size(off[k])
        assert size[0] == 0 and np.all(np.diff(size) > 0), (k, size)
    thumb = np.stack([np.deg2rad(pose_degrees({"thumb0": (0, 0, 0.3 * a), "thumb1": (0, 0, 0.6 * a)}, sk))
                      for a in deg])
    size = _size(_offsets(deformer, thumb)["thenar"])
    assert size[0] == 0 and np.all(np.diff(size) > 0), size
    # continuous in the pose: 1° more flexion moves no vertex by more than 0.2 mm
    assert max(np.abs(np.diff(_size(v))).max() for v in off.values()) < 10 * 0.2


def test_fist_magnitudes_are_in_the_stated_range(hand, deformer):
    off = _offsets(deformer, gesture_euler("fist", hand.skeleton)[None])
    for k, (lo, hi) in FIST_RANGE_MM.items():
        assert lo <= _size(off[k])[0] <= hi, (k, _size(off[k])[0])


def test_pose_effects_are_smooth_over_the_surface(hand, deformer):
    """Neighbouring vertices move together: in a fist and a thumbs-up, |Δoffset| over an edge below the
    edge's length (≤ 0.6× on this 2000-vertex hand; the old flexion bulges reach 1.03× here; on the
    default capture's finer hand the new effects reach 1.2×, the old bulges 1.8×)."""
    sk = hand.skeleton
    off = _offsets(deformer, np.stack([gesture_euler("fist", sk), gesture_euler("thumbs_up", sk)]))
    e = unique_edges(hand.faces)
    length = np.linalg.norm(hand.vertices[e[:, 0]] - hand.vertices[e[:, 1]], axis=1)
    for k in NEW:
        grad = np.linalg.norm(off[k][:, e[:, 0]] - off[k][:, e[:, 1]], axis=-1) / length
        assert grad.max() < 0.9, (k, grad.max())


def test_pose_effects_add_no_self_intersections_in_the_gestures(hand):
    """LBS of the template already intersects itself in fist-like poses (fingers into the palm, the thumb
    over the fingers); the new effects must not make that worse than the ground truth without them."""
    sk = hand.skeleton
    names = [n for n in GESTURES if n != "rest"]
    E = np.stack([gesture_euler(n, sk) for n in names])
    R = np.tile(np.eye(4), (len(E), 1, 1))
    old = GroundTruthDeformer(hand, 5, DeformParams().without(*NEW))(E, R).vertices
    new = GroundTruthDeformer(hand, 5)(E, R).vertices
    for i, n in enumerate(names):
        a, b = len(self_intersections(old[i], hand.faces)), len(self_intersections(new[i], hand.faces))
        assert b <= 1.05 * a + 5, f"{n}: {b} intersecting face pairs with the pose effects, {a} without"


def test_ground_truth_without_the_new_effects_is_the_old_one(hand):
    """``without(*NEW)`` is the ground truth before the effects existed: flexion bulges + DQS only, the
    same as an explicit reference (rest surface + Σ θ · bulge field, DQS)."""
    sk = hand.skeleton
    E = gesture_euler("pinch", sk)[None]
    d = GroundTruthDeformer(hand, 5, DeformParams().without(*NEW))
    gt = d(E, np.eye(4)[None]).vertices[0]
    e = torch.as_tensor(E) * d.layer.dof_mask
    theta = e[:, d.flex_joints, 2].clamp_min(0)
    rest = d._rest + torch.einsum("tj,jvc->tvc", theta, d._flex_fields)
    _, A = d.pose(e, torch.eye(4, dtype=torch.float64)[None])
    np.testing.assert_array_equal(gt, d.skin(rest, A)[0].numpy())


def test_deform_params_round_trip_and_old_captures_have_no_new_effects():
    p = DeformParams()
    assert DeformParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    old = {k: v for k, v in p.to_dict().items() if k not in {f for e in NEW for f in POSE_EFFECTS[e]}}
    q = DeformParams.from_dict(old)
    assert q == p.without(*NEW) and q.knuckle_mm == 0 and q.bulge_inside_mm_per_rad == p.bulge_inside_mm_per_rad
    with pytest.raises(ValueError, match="unknown keys"):
        DeformParams.from_dict({**p.to_dict(), "bulge": 1})
    with pytest.raises(KeyError, match="knuckle"):
        p.without("knuckles")


def test_decomposition_against_a_hand_computation(hand):
    """Two frames; every term recomputed with the hand model's own LBS (HandLayer with vertex and joint
    offsets) and the deformer's ground truth."""
    sk = hand.skeleton
    E = np.stack([gesture_euler("fist", sk), gesture_euler("ok", sk)])
    R = np.tile(np.eye(4), (2, 1, 1))
    params = DeformParams()
    d = GroundTruthDeformer(hand, 5, params)
    dec = decompose_lbs_residual(hand, 5, E, R, params)
    layer = HandLayer(hand, dtype=torch.float64)
    e = torch.as_tensor(E)
    idv = torch.as_tensor(d.identity_offset)
    bones = torch.as_tensor(d.bone_offset)
    plain = layer(e).vertices
    shaped = layer(e, vertex_offsets=idv).vertices
    static = layer(e, vertex_offsets=idv, joint_offsets=bones).vertices
    truth = torch.as_tensor(d(E, R).vertices)
    ref = {"identity_shape": shaped - plain, "bone_lengths": static - shaped,
           "static_gap": truth - static, "plain_lbs": truth - plain}
    offs, acc, prev = d.pose_offsets(e * layer.dof_mask), idv.clone(), static
    for k, off in offs.items():
        acc = acc + off
        cur = layer(e, vertex_offsets=acc, joint_offsets=bones).vertices
        ref[f"pose:{k}"], prev = cur - prev, cur
    ref["dqs_vs_lbs"] = truth - prev
    assert [t.name for t in dec.terms] == ["identity_shape", "bone_lengths"] + [f"pose:{k}" for k in POSE_EFFECTS] \
        + ["dqs_vs_lbs", "static_gap", "plain_lbs"]
    for name, diff in ref.items():
        dist = diff.norm(dim=-1).numpy()
        t = dec[name]
        assert t.mean_mm == pytest.approx(dist.mean(), abs=1e-9) and t.max_mm == pytest.approx(dist.max(), abs=1e-9)
        assert t.p95_mm == pytest.approx(np.percentile(dist, 95), abs=1e-9)
    assert dec.frames == 2 and dec.vertices == hand.num_vertices and "| static_gap |" in dec.table()
    assert json.loads(json.dumps(dec.to_dict()))["terms"]["static_gap"]["mean_mm"] == dec["static_gap"].mean_mm
    # a ground truth that LBS with the true bones and shape expresses exactly leaves no static gap
    lbs_only = DeformParams(dual_quaternion=False).without(*POSE_EFFECTS)
    flat = decompose_lbs_residual(hand, 5, E, R, lbs_only)
    assert flat["static_gap"].max_mm < 1e-9 and flat["dqs_vs_lbs"].max_mm < 1e-9
    assert flat["plain_lbs"].mean_mm > 0.5


def test_decompose_capture_reads_a_written_capture(small_capture):
    """From disk: the hand model, identity seed, poses and deformation parameters that ``dhm synth`` wrote;
    the ground truth it recomputes is the one in ``meshes/`` (float32, hand model read back from text)."""
    from dhmlib.hand.handmodel import HandModel
    from dhmlib.synth.decompose import decompose_capture

    syn = small_capture / "annotations/synthetic/subject_1"
    meta = json.loads((syn / "params.json").read_text())
    assert DeformParams.from_dict(meta["deform"]) == DeformParams()
    dec = decompose_capture(small_capture, frames=None)
    poses = np.load(syn / "poses.npz")
    assert dec.frames == len(poses["frame"]) == 5
    hand = HandModel.read(syn / "hand_model")
    gt = GroundTruthDeformer(hand, meta["identity_seed"])(poses["euler"], poses["root"]).vertices
    stored = np.stack([np.load(syn / "meshes" / f"{f:06d}.npy") for f in poses["frame"]])
    assert np.abs(gt - stored).max() < 0.05                          # mm: text hand model, float32 meshes
    ref = decompose_lbs_residual(hand, meta["identity_seed"], poses["euler"], poses["root"])
    assert dec.to_dict() == ref.to_dict()
    assert 0 < dec["static_gap"].mean_mm < dec["plain_lbs"].mean_mm
