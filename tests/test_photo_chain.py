"""Photos of the virtual capture through MediaPipe Hands and the fit: the landmark mapping, the whole chain of
`dhm fit --image` (detection, fit, files) against the truth, left hands, bad input. Needs the photo extra."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe", reason="the photo extra is not installed (pip install -e '.[photo]')")

from dhmlib.cli import main  # noqa: E402
from dhmlib.cli.demo import read_pose_file  # noqa: E402
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints  # noqa: E402
from dhmlib.data.layout import Layout  # noqa: E402
from dhmlib.hand.handmodel import HandModel  # noqa: E402
from dhmlib.mesh.io import read_obj, read_obj_uvs, read_ply  # noqa: E402
from dhmlib.photo.camera import capture_camera, capture_view  # noqa: E402
from dhmlib.photo.detect import MEDIAPIPE_NAMES, HandDetector, mediapipe_licence  # noqa: E402
from dhmlib.photo.image import load_photo  # noqa: E402
from dhmlib.photo.metrics import pa_error  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector():
    with HandDetector() as d:
        yield d


def _images(root, frame):
    lay = Layout(root)
    for s in lay.sequences(all_sequences=True):
        cams = lay.cameras_of(s)
        if frame in lay.image_frames(s, cams[0]):
            return [lay.image_path(s, c, frame) for c in cams]
    raise KeyError(frame)


def _truth(root, frame, skeleton):
    return keypoints_to_joints(read_keypoints(Layout(root).keypoints_path(frame)), skeleton)


def test_licence_is_apache():
    assert "Apache" in mediapipe_licence()


def test_mapping_onto_our_keypoints(small_capture, detector):
    """Each MediaPipe landmark lies nearest its mapped keypoint: on the thumb the mapping beats the chain
    read backwards and the chain shifted one joint towards the wrist (CMC → thumb0 … tip → thumb3); on the
    fingers, the fingers read pinky-first (a mirrored reading)."""
    sk = HandModel.read(small_capture / "hand_model").skeleton
    ours = np.array([sk.index(n) for n in MEDIAPIPE_NAMES])
    thumb, fingers = slice(1, 5), slice(5, 21)
    alternatives = {
        "thumb reversed": (thumb, ours[1:5][::-1]),
        "thumb shifted": (thumb, np.array([sk.index(n) for n in ("thumb0", "thumb1", "thumb2", "thumb3")])),
        "fingers mirrored": (fingers, np.concatenate([ours[17:21], ours[13:17], ours[9:13], ours[5:9]])),
    }
    errs = {k: [] for k in alternatives} | {"mapping thumb": [], "mapping fingers": [], "mapping": []}
    for frame in sorted(Layout(small_capture).keypoint_frames()):
        joints, _ = _truth(small_capture, frame, sk)
        for path in _images(small_capture, frame):
            found = detector.detect(load_photo(path), right=True)
            if not found:
                continue
            cam = capture_camera(capture_view(path))
            true_px = cam.project(torch.as_tensor(joints, dtype=torch.float32)[None])[0].numpy()
            d = found[0]

            def err(part, order):
                return np.linalg.norm(d.pixels[part] - true_px[order], axis=-1).mean() / d.size_px
            errs["mapping"].append(err(slice(0, 21), ours))
            errs["mapping thumb"].append(err(thumb, ours[thumb]))
            errs["mapping fingers"].append(err(fingers, ours[fingers]))
            for k, (part, order) in alternatives.items():
                errs[k].append(err(part, order))
    assert len(errs["mapping"]) >= 20                          # of 30 images (29 found when measured)
    m = {k: float(np.mean(v)) for k, v in errs.items()}
    assert m["mapping"] < 0.08, m                              # measured 0.058 of the hand's size
    # measured: thumb 0.063 against 0.36 reversed and 0.18 shifted; fingers 0.058 against 0.28 mirrored
    assert m["mapping thumb"] < 0.5 * min(m["thumb reversed"], m["thumb shifted"]), m
    assert m["mapping fingers"] < 0.5 * m["fingers mirrored"], m


@pytest.mark.slow
def test_whole_chain_on_capture_images(small_capture, tmp_path, capsys):
    """dhm fit --image: 6 views of a frame fitted jointly, one image of another frame alone; the files; the
    error against the truth (PA-MPJPE measured 2.1-3.1 mm from 6 views, 3-14 mm from one)."""
    hand = HandModel.read(small_capture / "hand_model")
    sk = hand.skeleton
    multi = _images(small_capture, 1)
    single = tmp_path / "single" / "photo.jpg"          # a copy outside the layout: an ordinary photo
    single.parent.mkdir()
    single.write_bytes(_images(small_capture, 3)[1].read_bytes())
    out = tmp_path / "fit"
    code = main(["fit", "--image", *map(str, multi), str(single.parent), "--out", str(out),
                 "--hand-model", str(small_capture / "hand_model")])
    text = capsys.readouterr().out
    assert code == 0, text
    name = multi[0].parts[-3] + "_frame0001"
    assert f"{name}: 6 view(s), right hand" in text and "photo: 1 view(s)" in text and "a guess: 26 mm" in text
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["fitted"]) == 2 and summary["failed"] == []
    for n in (name, "photo"):
        for suffix in ("_world.obj", "_world.ply", "_camera.obj", "_camera.ply", "_pose.npz", "_overlay.png",
                       "_fit.json"):
            assert (out / f"{n}{suffix}").is_file(), n + suffix
    # the multi-view fit against the truth (world frame = the capture's)
    pose = np.load(out / f"{name}_pose.npz")
    joints, valid = _truth(small_capture, 1, sk)
    ok = valid > 0
    assert pa_error(pose["joints"][0][ok], joints[ok]) < 6.0
    assert np.linalg.norm(pose["joints"][0][ok] - joints[ok], axis=-1).mean() < 10.0     # placed, not only shaped
    rec = json.loads((out / f"{name}_fit.json").read_text())
    assert len(rec["views"]) == 6 and rec["residual"]["mean_px"] < 15
    assert all(v["camera"].startswith("KRT_512 camera") for v in rec["views"])
    # the single photo: its shape against the truth (its camera is a guess, so no placement)
    p1 = np.load(out / "photo_pose.npz")
    joints3, _ = _truth(small_capture, 3, sk)
    assert pa_error(p1["joints"][0][ok], joints3[ok]) < 15.0
    # files: the OBJ keeps the texture coordinates; the pose file is what dhm demo --pose-file reads
    v, f = read_obj(out / f"{name}_world.obj")
    np.testing.assert_array_equal(f, hand.faces)
    assert read_obj_uvs(out / f"{name}_world.obj")[1].shape == hand.uv_faces.shape
    np.testing.assert_allclose(read_ply(out / f"{name}_world.ply")[0], v, atol=1e-3)
    assert read_pose_file(out / f"{name}_pose.npz", sk).shape == (1, sk.num_joints, 3)
    assert main(["demo", "--pose-file", str(out / f"{name}_pose.npz"), "--hand-model",
                 str(small_capture / "hand_model"), "--out", str(tmp_path / "demo.obj")]) == 0


@pytest.mark.slow
def test_a_left_hand_is_the_mirrored_right_hand(small_capture, tmp_path, capsys):
    from PIL import Image

    # MediaPipe is not mirror-equivariant: on this frame's four views the left fit is 6.3, 7.9, 11.9 and 17.8 mm
    # (mean per vertex) from the mirrored right one, because the detector's landmarks on an image and on its
    # mirror differ. This view is one where the detector agrees with itself, so what is tested is the pipeline's
    # mirroring (and the 8 mm bound is the detector's share)
    src = _images(small_capture, 2)[2]
    (tmp_path / "in").mkdir()
    Image.open(src).save(tmp_path / "in" / "right.png")
    Image.open(src).transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "in" / "left.png")
    assert main(["fit", "--image", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--fov", "40",
                 "--hand-model", str(small_capture / "hand_model")]) == 0
    text = capsys.readouterr().out
    assert "left: 1 view(s), left hand" in text and "right: 1 view(s), right hand" in text and "--fov 40" in text
    r, _ = read_obj(tmp_path / "o" / "right_camera.obj")
    left, f_left = read_obj(tmp_path / "o" / "left_camera.obj")
    mirrored = r * [-1, 1, 1]
    # the same hand mirrored in the camera frame (up to the detector's differences between the two images)
    assert np.linalg.norm(left - mirrored, axis=-1).mean() < 8.0
    hand = HandModel.read(small_capture / "hand_model")
    np.testing.assert_array_equal(f_left, hand.faces[:, [0, 2, 1]])       # faces still point outward


@pytest.mark.slow
def test_bad_input_names_the_file_and_fits_the_others(small_capture, tmp_path, capsys):
    from PIL import Image

    good = _images(small_capture, 1)[1]
    (tmp_path / "notes.jpg").write_text("shopping list")
    Image.new("RGB", (400, 300), (30, 30, 40)).save(tmp_path / "wall.png")          # no hand
    big = Image.open(good).resize((334 * 8, 512 * 8))
    big.save(tmp_path / "big.png")
    code = main(["fit", "--image", str(good), str(tmp_path / "notes.jpg"), str(tmp_path / "wall.png"),
                 str(tmp_path / "big.png"), "--out", str(tmp_path / "o"), "--hand-model",
                 str(small_capture / "hand_model"), "--no-figures"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{tmp_path / 'notes.jpg'}: not an image" in err
    assert f"{tmp_path / 'wall.png'}: no hand found" in err
    assert f"{tmp_path / 'big.png'}: downscaled 2672x4096 → 1336x2048" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert sorted(r["name"] for r in summary["fitted"]) == ["big", "image0001"]
    assert len(summary["failed"]) == 2
    # usage errors: exit 2 with one line
    hand_model = ["--hand-model", str(small_capture / "hand_model")]   # not the project's data/: a fresh clone has none
    assert main(["fit", "--image", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"), *hand_model]) == 1
    assert "file not found" in capsys.readouterr().err
    assert main(["fit", "--image", str(good), "--fov", "0", "--out", str(tmp_path / "o3"), *hand_model]) == 2
    assert "--fov" in capsys.readouterr().err


def test_landmark_offsets_option(small_capture, tmp_path, capsys):
    """dhm fit --image --landmark-offsets: a file of write_offsets is used (and recorded); a bad one is a usage
    error naming it; without --image it is refused."""
    from dhmlib.photo.calibrate import LandmarkOffsets, write_offsets

    hand = HandModel.read(small_capture / "hand_model")
    good = _images(small_capture, 1)[1]
    hand_model = ["--hand-model", str(small_capture / "hand_model")]
    runs = {}
    for name, off in (("none", None), ("shifted", np.full((hand.skeleton.num_joints, 3), 6.0))):
        args = ["fit", "--image", str(good), "--out", str(tmp_path / name), *hand_model, "--no-figures"]
        if off is not None:
            path = write_offsets(tmp_path / "offsets.json", LandmarkOffsets(off, 0.0, 0.0, 1, (1,)), hand.skeleton)
            args += ["--landmark-offsets", str(path)]
        assert main(args) == 0, capsys.readouterr()
        runs[name] = np.load(tmp_path / name / "image0001_pose.npz")["euler"]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["landmark_offsets"] == (None if off is None else str(path))
    assert not np.allclose(runs["none"], runs["shifted"], atol=1e-3)     # the offsets changed the fit
    (tmp_path / "bad.json").write_text('{"offsets_mm": {"index9": [0, 0, 0]}}')
    assert main(["fit", "--image", str(good), "--out", str(tmp_path / "o"), *hand_model,
                 "--landmark-offsets", str(tmp_path / "bad.json")]) == 2
    assert "--landmark-offsets" in (err := capsys.readouterr().err) and "bad.json" in err and "index9" in err
    assert main(["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o4"), *hand_model,
                 "--landmark-offsets", str(tmp_path / "bad.json")]) == 2
    assert "--landmark-offsets goes with --image" in capsys.readouterr().err
