"""The landmark-error experiment (dhmlib.photo.limits) and the landmark offsets (dhmlib.photo.calibrate) on the
small virtual capture, without a detector: the replaced landmarks have the error asked for (measured by
dhmlib.photo.evaluate's own projection of the truth), exact landmarks fit closely, more error fits worse, a
fixed offset is removed by ``debiased``; known offsets in the joints' frames are found again; their file."""
import numpy as np
import pytest
import torch

from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout
from dhmlib.hand.handmodel import HandModel
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.photo.camera import capture_camera, capture_view
from dhmlib.photo.detect import MEDIAPIPE_NAMES, Detection
from dhmlib.photo.evaluate import CaptureDetections, evaluate_photo_fit, frame_images
from dhmlib.photo.image import load_photo
from dhmlib.photo.limits import landmark_error_sweep, needed_error, replaced_detections, true_landmarks
from dhmlib.photo.pipeline import PhotoView

torch.set_num_threads(1)
FRAMES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def setup(small_capture):
    hand = HandModel.read(small_capture / "hand_model")
    model = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                           skeleton_corrective=False)).eval()
    views = []
    for f, paths in frame_images(small_capture, FRAMES, 4).items():
        for p in paths:
            photo = load_photo(p)
            cap = capture_view(p)
            # a placeholder detection (a right hand, as MediaPipe labels it in an unmirrored photo: "Left")
            det = Detection(np.zeros((21, 2)), np.zeros(21), "Left", 1.0)
            views.append(PhotoView(photo, det, capture_camera(cap, photo.scale), "KRT", cap))
    return model, CaptureDetections(FRAMES, tuple(v.photo.path for v in views), tuple(views), 0.0)


def _evaluate(model, root, d):
    return evaluate_photo_fit(model, root, FRAMES, views=4, detections=d, log=lambda m: None).summary()


def test_true_landmarks_are_the_keypoints_in_mediapipe_order(small_capture, setup):
    model, d = setup
    sk = model.hand.skeleton
    v = d.found[0]
    joints, _ = keypoints_to_joints(read_keypoints(Layout(small_capture).keypoints_path(v.capture.frame)), sk)
    px, depth, size = true_landmarks(v, joints, sk)
    cam = capture_camera(v.capture, v.photo.scale, dtype=torch.float64)
    for i in (0, 4, 8, 20):
        j = sk.index(MEDIAPIPE_NAMES[i])
        want = cam.project(torch.as_tensor(joints[j:j + 1], dtype=torch.float64)[None])[0, 0].numpy()
        np.testing.assert_allclose(px[i], want, atol=1e-6)
    assert depth[0] == 0.0 and 50 < size < 512


def test_replaced_landmarks_have_the_error_asked_and_fit_accordingly(small_capture, setup):
    model, d = setup
    exact = _evaluate(model, small_capture, replaced_detections(model, small_capture, d, 0.0))
    noisy = _evaluate(model, small_capture, replaced_detections(model, small_capture, d, 0.06, seed=1))
    assert exact["landmark_error_frac"] < 1e-4
    # evaluate measures the error on its own (the truth projected in skeleton order, its own hand size)
    assert noisy["landmark_error_frac"] == pytest.approx(0.06, rel=0.15)
    assert exact["4 views"]["pa_mpjpe_mm"] < 3.0
    assert noisy["4 views"]["pa_mpjpe_mm"] > exact["4 views"]["pa_mpjpe_mm"] + 1.0
    assert noisy["1 view"]["pa_mpjpe_mm"] > noisy["4 views"]["pa_mpjpe_mm"]


def test_debiased_removes_a_fixed_offset(small_capture, setup):
    model, d = setup
    rng = np.random.default_rng(0)
    offset = rng.normal(0, 0.05, (21, 2))                       # per landmark, hand sizes
    biased = []
    for v in replaced_detections(model, small_capture, d, 0.0).found:
        size = float(np.max(v.detection.pixels.max(0) - v.detection.pixels.min(0)))
        px = v.detection.pixels + offset * size + rng.normal(0, 0.005 * size, (21, 2))
        biased.append(type(v)(v.photo, Detection(px, v.detection.depth, "Left", 1.0), v.camera, v.camera_note,
                              v.capture))
    b = type(d)(d.frames, d.paths, tuple(biased), 0.0)
    before = _evaluate(model, small_capture, b)["landmark_error_frac"]
    after = _evaluate(model, small_capture, replaced_detections(model, small_capture, b, None, debiased=True))
    assert before > 0.04 and after["landmark_error_frac"] < 0.25 * before
    with pytest.raises(ValueError, match="error_frac"):
        replaced_detections(model, small_capture, d, None)


def test_needed_error_interpolates_the_goal():
    rows = [{"error_frac": x, "1 view": {"pa_mpjpe_mm": y}} for x, y in
            ((0.0, 2.0), (0.05, 6.0), (0.05, 6.2), (0.1, 10.0))]
    assert needed_error(rows, "1 view", 8.0) == pytest.approx(0.05 + (8.0 - 6.1) / 3.9 * 0.05)
    assert needed_error(rows, "1 view", 1.0) is None            # not even exact landmarks
    assert needed_error(rows, "1 view", 12.0) == 0.1            # met everywhere swept


@pytest.mark.slow
def test_the_sweep_reports_every_row(small_capture, setup):
    model, d = setup
    d = replaced_detections(model, small_capture, d, 0.03, seed=5)    # stands in for MediaPipe's landmarks
    r = landmark_error_sweep(model, small_capture, d, fractions=(0.0, 0.08), seeds=(0, 1), log=lambda m: None)
    assert set(r) == {"mediapipe", "mediapipe debiased", "noise"}
    assert [(x["error_frac"], x["seed"]) for x in r["noise"]] == [(0.0, 0), (0.08, 0), (0.08, 1)]
    pa = [x["4 views"]["pa_mpjpe_mm"] for x in r["noise"]]
    assert pa[1] > pa[0] and pa[2] > pa[0]


def _offset_landmarks(model, root, d, offsets):
    """``d`` with each view's landmarks at the true keypoints moved by ``offsets`` (J, 3) in the joints' frames."""
    from dataclasses import replace

    from dhmlib.data.ground_truth import true_poses
    from dhmlib.network.fit import _pose_skeleton
    from dhmlib.photo.fit2d import landmark_points

    sk = model.hand.skeleton
    frames = sorted({v.capture.frame for v in d.found})
    poses = true_poses(root, 1, frames, "cpu")
    G = _pose_skeleton(model, poses.euler, poses.root, False).transforms.double()
    out = []
    for v in d.found:
        i = frames.index(v.capture.frame)
        joints, _ = keypoints_to_joints(read_keypoints(Layout(root).keypoints_path(v.capture.frame)), sk)
        pts = landmark_points(torch.as_tensor(joints, dtype=torch.float64)[None], G[i:i + 1],
                              torch.as_tensor(offsets, dtype=torch.float64))[0]
        cam = capture_camera(v.capture, v.photo.scale, dtype=torch.float64)
        px = cam.project(pts[[sk.index(n) for n in MEDIAPIPE_NAMES]][None])[0].numpy()
        out.append(replace(v, detection=replace(v.detection, pixels=px)))
    return replace(d, found=tuple(out))


def test_calibration_recovers_known_offsets(small_capture, setup):
    """Landmarks made from the truth with known offsets in the joints' frames: the fit finds those offsets."""
    from dhmlib.photo.calibrate import calibrate_landmark_offsets, landmark_error

    model, d = setup
    sk = model.hand.skeleton
    want = np.random.default_rng(1).normal(0, 3.0, (sk.num_joints, 3))
    want[sk.index("thumb0")] = 0                                   # no landmark: stays 0
    moved = _offset_landmarks(model, small_capture, d, want)
    cal = calibrate_landmark_offsets(model, small_capture, moved, steps=600, log=lambda m: None)
    assert cal.error_before > 0.02 and cal.error_after < 0.1 * cal.error_before
    np.testing.assert_allclose(cal.offsets, want, atol=0.5)
    assert landmark_error(model, small_capture, moved, want) < 1e-6
    assert landmark_error(model, small_capture, moved) == pytest.approx(cal.error_before)


def test_offsets_file_round_trip_and_errors(tmp_path, setup):
    from dhmlib.photo.calibrate import LandmarkOffsets, read_offsets, write_offsets

    model, _ = setup
    sk = model.hand.skeleton
    off = np.arange(sk.num_joints * 3, dtype=float).reshape(-1, 3) / 7
    p = write_offsets(tmp_path / "o.json", LandmarkOffsets(off, 0.1, 0.05, 3, (1, 2)), sk, note="test")
    np.testing.assert_allclose(read_offsets(p, sk), off, atol=1e-4)
    (tmp_path / "bad.json").write_text('{"offsets_mm": {"index9": [0, 0, 0]}}')
    with pytest.raises(ValueError, match=r"bad.json.*index9"):
        read_offsets(tmp_path / "bad.json", sk)
    (tmp_path / "bad2.json").write_text('{"offsets_mm": {"index1": [0, "x"]}}')
    with pytest.raises(ValueError, match=r"bad2.json.*index1.*three finite numbers"):
        read_offsets(tmp_path / "bad2.json", sk)
    (tmp_path / "bad3.json").write_text("not json")
    with pytest.raises(ValueError, match=r"bad3.json: not a landmark-offsets JSON"):
        read_offsets(tmp_path / "bad3.json", sk)
