"""Kernel-side tests of the posing widget (no browser): values pushed to pythreejs equal decode()."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toyhand import toy_hand

from dhmlib.hand.anatomy import GESTURES, gesture_degrees, gesture_names, joint_limits_deg, within_limits
from dhmlib.mesh import io as meshio
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.viz import PosingWidget, model_pose_fn
from dhmlib.viz.geometry import SKIN_RGB, NormalSolver


@pytest.fixture(scope="module")
def model():
    """A DeepHandMesh with non-zero pose/identity/skeleton correctives (zero-init would hide them)."""
    m = DeepHandMesh(toy_hand(600), ModelConfig(backbone=18))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lin in (m.skin_refine_net.fc_pose[-1], m.skin_refine_net.fc_id[-1],
                    m.skeleton_refine_net.fc_skeleton[-1]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.05)
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.5)
    return m.eval()


def decode(model, euler_rad, pose=True, identity=True):
    """Reference: (J, 3) radians → (V, 3) vertices from decode() with the given correctives."""
    chosen = {"pose"} if pose else set()
    if identity:
        chosen |= {"identity", "skeleton"}
    with torch.no_grad():
        out = model.decode(torch.as_tensor(euler_rad, dtype=torch.float32)[None], correctives=chosen)
    return out.vertices[0].numpy(), out.joints[0].numpy()


def widget(model, **kw):
    kw.setdefault("output_dir", None)
    return PosingWidget.from_model(model, **kw)


def test_sliders_follow_skeleton_and_limits(model):
    w = widget(model)
    sk = model.hand.skeleton
    mask, lim = sk.dof_mask(), joint_limits_deg(sk)
    assert len(w.sliders) == int(mask.sum()) == 28
    for (short, axis), s in w.sliders.items():
        j, a = sk.index(short), "xyz".index(axis)
        assert mask[j, a]
        assert (s.min, s.max) == tuple(lim[j, a])
        assert s.description.startswith(short)
    assert not any(s.startswith("wrist") or s.endswith("_null") for s, _ in w.sliders)
    assert [t for t in w.finger_tabs.titles] == ["thumb", "index", "middle", "ring", "pinky"]


@pytest.mark.parametrize("joint,axis,deg", [("index1", "z", 30.0), ("thumb0", "x", -12.5), ("pinky2", "z", 70.0)])
def test_slider_change_gives_decode_vertices_exactly(model, joint, axis, deg):
    w = widget(model, preset="point")
    old_position = w.view.position.array
    w.sliders[(joint, axis)].value = deg                       # as the browser does
    assert w.last_error is None
    euler = np.deg2rad(gesture_degrees("point", model.hand.skeleton))
    euler[model.hand.skeleton.index(joint), "xyz".index(axis)] = np.deg2rad(deg)
    ref, joints = decode(model, euler)
    np.testing.assert_array_equal(w.vertices, ref)
    np.testing.assert_array_equal(w.view.position.array, ref.astype(np.float32))
    assert w.view.position.array is not old_position           # a new array: pythreejs sees it
    np.testing.assert_array_equal(w.view.normal.array, NormalSolver(w.faces, len(ref))(ref))
    np.testing.assert_array_equal(w.view.joint_position.array, joints.astype(np.float32))
    np.testing.assert_allclose(w.pose, euler)


def test_presets_within_limits_and_applied(model):
    sk = model.hand.skeleton
    assert set(gesture_names()) >= {"rest", "fist", "point", "pinch", "spread", "ok", "thumbs_up"}
    w = widget(model)
    assert list(w.preset_buttons) == list(gesture_names())
    for name in GESTURES:
        deg = gesture_degrees(name, sk)
        assert within_limits(deg, sk).all(), name
        assert not (deg[~sk.dof_mask()] != 0).any(), name
        w.preset_buttons[name].click()
        assert w.last_error is None
        np.testing.assert_array_equal(w.pose_degrees, deg)
        for (short, axis), s in w.sliders.items():
            assert s.value == deg[sk.index(short), "xyz".index(axis)]
        np.testing.assert_array_equal(w.vertices, decode(model, np.deg2rad(deg))[0])
    # flexion presets bend toward the palm: the fist's fingers close (tips move toward -x)
    rest = decode(model, np.zeros((sk.num_joints, 3)))[1]
    fist = decode(model, np.deg2rad(gesture_degrees("fist", sk)))[1]
    tip = sk.index("middle_null")
    assert fist[tip, 0] < rest[tip, 0] - 20


def test_unknown_preset_raises_in_the_status_line(model):
    w = widget(model)
    w._guard(w.apply_preset, "wave")
    assert isinstance(w.last_error, KeyError) and "known gestures" in w.status.value
    with pytest.raises(KeyError, match="known gestures"):
        widget(model, preset="wave")


def test_corrective_toggles(model):
    sk = model.hand.skeleton
    w = widget(model, preset="fist")
    euler = np.deg2rad(gesture_degrees("fist", sk))
    full = decode(model, euler)[0]
    np.testing.assert_array_equal(w.vertices, full)
    w.pose_toggle.value = False
    np.testing.assert_array_equal(w.vertices, decode(model, euler, pose=False)[0])
    assert not np.allclose(w.vertices, full)
    w.id_toggle.value = False
    plain = decode(model, euler, pose=False, identity=False)[0]
    np.testing.assert_array_equal(w.vertices, plain)
    w.pose_toggle.value = True
    np.testing.assert_array_equal(w.vertices, decode(model, euler, pose=True, identity=False)[0])
    # the model is untouched: its default decode still applies every corrective
    assert model.config.correctives == {"pose", "identity", "skeleton"}
    with torch.no_grad():
        default = model.decode(torch.as_tensor(euler, dtype=torch.float32)[None]).vertices[0].numpy()
    np.testing.assert_array_equal(default, full)
    # a model whose config turns correctives off starts with those toggles off
    off = DeepHandMesh(model.hand.hand_model, ModelConfig(backbone=18, pose_corrective=False))
    off.load_state_dict(model.state_dict())
    w_off = widget(off.eval(), preset="fist")
    assert not w_off.pose_toggle.value and w_off.id_toggle.value
    np.testing.assert_array_equal(w_off.vertices, decode(model, euler, pose=False)[0])
    # without correctives everything equals the bare HandLayer (plain LBS)
    with torch.no_grad():
        lbs = model.hand(torch.as_tensor(euler, dtype=torch.float32)[None]).vertices[0].numpy()
    np.testing.assert_array_equal(plain, lbs)


def test_display_toggles(model):
    w = widget(model)
    assert not w.view.bones.visible and not w.view.material.wireframe
    w.skeleton_toggle.value = True
    assert w.view.bones.visible and w.view.joint_points.visible
    w.wireframe_toggle.value = True
    assert w.view.material.wireframe
    assert w.error_toggle.disabled                             # no ground truth given
    hl = PosingWidget.from_model(model.hand)                   # a HandLayer has no correctives
    assert hl.pose_toggle.disabled and hl.id_toggle.disabled and not hl.pose_toggle.value


def test_reset_camera(model):
    w = widget(model, compare=True)
    home = [tuple(v.camera.position) for v in w.views]
    for v in w.views:                                          # as after orbiting in the browser
        v.camera.position = (1.0, 2.0, 3.0)
        v.controls.target = (5.0, 0.0, 0.0)
    w.reset_camera_button.click()
    for v, h in zip(w.views, home):
        assert tuple(v.camera.position) == h and tuple(v.controls.target) == (0.0, 0.0, 0.0)
    # the camera looks at the hand: the orbit target (origin) is the centre of the shifted mesh
    c = np.asarray(w.view.mesh.position) + 0.5 * (w.vertices.min(0) + w.vertices.max(0))
    assert np.linalg.norm(c) < 0.5 * np.ptp(w.vertices, axis=0).max()


def test_error_colour_map(model):
    sk = model.hand.skeleton
    shift = np.array([3.0, 0.0, 4.0])                          # 5 mm everywhere
    gt = lambda euler: decode(model, euler)[0] + shift         # noqa: E731  (pose-dependent ground truth)
    w = widget(model, ground_truth=gt)
    assert not w.error_toggle.disabled
    skin = w.view.color.array.copy()
    np.testing.assert_allclose(skin, np.tile(np.float32(SKIN_RGB), (len(skin), 1)))
    w.error_max.value = 10.0
    w.error_toggle.value = True
    np.testing.assert_allclose(w.last_error_mm, 5.0, atol=1e-4)
    colors = w.view.color.array
    assert colors.shape == skin.shape and not np.allclose(colors, skin)
    np.testing.assert_allclose(colors, np.broadcast_to(colors[0], colors.shape), atol=1e-4)  # uniform error
    w.set_slider("index1", "z", 45.0)                          # the map follows the pose
    np.testing.assert_allclose(w.last_error_mm, 5.0, atol=1e-4)
    w.error_toggle.value = False
    np.testing.assert_allclose(w.view.color.array, skin)
    static = widget(model, ground_truth=decode(model, np.zeros((sk.num_joints, 3)))[0])
    static.error_toggle.value = True
    np.testing.assert_allclose(static.last_error_mm, 0.0, atol=1e-6)


def test_capture_ground_truth_error_map(tmp_path):
    """The error map is |decode − the capture's true surface|: checked against the meshes a capture wrote."""
    from dhmlib.hand.handmodel import HandModel
    from dhmlib.synth.capture import CaptureConfig, write_capture
    from dhmlib.viz import capture_ground_truth

    write_capture(tmp_path, CaptureConfig(frames=14, cameras=1, vertices=1500, image_size=(32, 21)), progress=False)
    syn = tmp_path / "annotations" / "synthetic" / "subject_1"
    hand = HandModel.read(syn / "hand_model")
    assert np.array_equal(hand.global_pose[hand.skeleton.root], np.eye(4))   # decode's root = identity
    poses = np.load(syn / "poses.npz")
    m = DeepHandMesh(hand, ModelConfig(backbone=18)).eval()
    params = json.loads((syn / "params.json").read_text())
    gt = capture_ground_truth(hand, params["identity_seed"], params["deform"])     # the capture's own strengths
    w = PosingWidget.from_model(m, ground_truth=gt)
    w.error_toggle.value = True
    mean = {}
    for f in (0, 1, 5):                                # fist take: relaxed, then the fist; a free pose
        euler, root = poses["euler"][f], poses["root"][f]
        w.set_pose(euler)
        assert w.last_error is None
        # the capture's mesh of this frame (world mm, float32) brought back to the model frame
        true = (np.load(syn / "meshes" / f"{f:06d}.npy").astype(np.float64) - root[:3, 3]) @ root[:3, :3]
        with torch.no_grad():
            v = m.decode(torch.as_tensor(euler, dtype=torch.float32)[None]).vertices[0].numpy()
        np.testing.assert_array_equal(w.vertices, v)
        np.testing.assert_allclose(w.last_error_mm, np.linalg.norm(v - true, axis=1), rtol=0, atol=5e-5)
        np.testing.assert_array_equal(w.last_error_mm, np.linalg.norm(w.vertices - gt(w.pose), axis=1))
        mean[f] = w.last_error_mm.mean()
    # LBS of the template misses the identity shape (≈1 mm everywhere) and the flexion bulges
    assert 0.5 < mean[0] < 3.0 and mean[1] > mean[0] + 0.3
    fig = w.snapshot_figure(size=2.0)
    assert [a.get_title() for a in fig.axes] == ["current pose", "ground truth"]


def test_widget_reproduces_every_frame_of_the_default_capture():
    """Every frame of ``dhm synth``'s default capture can be set in the widget exactly (no clamping,
    no slider rounding): what the pose function receives equals the frame's angles."""
    from dhmlib.hand.skeleton import official_skeleton
    from dhmlib.synth.capture import CaptureConfig
    from dhmlib.synth.poses import subject_sequences

    c = CaptureConfig()
    sk = official_skeleton()
    euler = np.concatenate([s.euler for s in subject_sequences(sk, c.frames, c.seed, 1)])     # (200, J, 3)
    assert euler.shape == (c.frames, sk.num_joints, 3)
    verts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    seen = []

    def fn(e, *, pose_corrective, id_corrective):
        seen.append(np.array(e))
        return verts, faces

    w = PosingWidget(fn, sk, correctives=False)
    mask = sk.dof_mask()
    for e in euler:
        deg = np.rad2deg(e)
        assert within_limits(deg, sk, atol=0.0).all()
        w.set_pose(e)
        assert w.last_error is None
        np.testing.assert_allclose(w.pose, e, rtol=0, atol=1e-12)
        np.testing.assert_allclose(seen[-1], e, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(w.pose_degrees, np.where(mask, deg, 0.0))    # not clamped
        for (short, axis), s in w.sliders.items():      # ipywidgets keeps the value as given
            assert s.value == deg[sk.index(short), "xyz".index(axis)]


def test_compare_view_has_plain_lbs(model):
    sk = model.hand.skeleton
    w = widget(model, compare=True, preset="pinch")
    euler = np.deg2rad(gesture_degrees("pinch", sk))
    np.testing.assert_array_equal(w.vertices, decode(model, euler)[0])
    np.testing.assert_array_equal(w.plain_view.vertices, decode(model, euler, False, False)[0])
    assert "corrective" in w.status.value and len(w.views) == 2


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_export_reads_back_equal(model, tmp_path, fmt):
    w = widget(model, preset="ok", output_dir=tmp_path)
    w.export_buttons[fmt].click()
    assert w.last_error is None
    files = list(tmp_path.glob(f"*.{fmt}"))
    assert len(files) == 1 and "ok" in files[0].name
    v, f = (meshio.read_obj if fmt == "obj" else meshio.read_ply)(files[0])
    np.testing.assert_array_equal(v, w.vertices)
    np.testing.assert_array_equal(f, w.faces)


def test_export_default_dir(model, tmp_path, monkeypatch):
    monkeypatch.setenv("DHM_OUTPUT", str(tmp_path / "out"))
    p = PosingWidget.from_model(model).export("ply")
    assert p.parent == tmp_path / "out" / "vis" and p.is_file()
    with pytest.raises(ValueError, match="'obj' or 'ply'"):
        PosingWidget.from_model(model).export("stl")


def test_generic_pose_fn_and_errors(model):
    pose_fn, sk, _, _ = model_pose_fn(model)
    faces = model.hand.faces.numpy()
    calls = []

    def fn(euler, *, pose_corrective, id_corrective):
        calls.append((pose_corrective, id_corrective))
        v, _, _ = pose_fn(euler, pose_corrective=pose_corrective, id_corrective=id_corrective)
        if euler[sk.index("ring2"), 2] > 1.0:
            raise RuntimeError("boom")
        return torch.as_tensor(v), None                      # tensors and faces=None are accepted

    w = PosingWidget(fn, sk, faces=faces, preset="spread")
    assert calls[0] == (True, True)                           # the toggles start on
    assert w.last_error is None and w.faces.shape == faces.shape
    w.set_slider("ring2", "z", 80.0)                          # fn raises: shown, not lost
    assert isinstance(w.last_error, RuntimeError) and "boom" in w.status.value
    w.set_slider("ring2", "z", 10.0)
    assert w.last_error is None
    with pytest.raises(KeyError, match="no 'x'"):
        w.set_slider("ring2", "x", 5.0)
    with pytest.raises(ValueError, match="faces=None"):
        PosingWidget(fn, sk)


def test_snapshot_figure(model, tmp_path):
    import matplotlib.image as mpimg
    from mpl_toolkits.mplot3d import proj3d

    from dhmlib.viz.figures import hand_figure

    w = widget(model, compare=True, preset="fist")
    meshes = (w.vertices, w.plain_view.vertices)
    assert np.abs(meshes[0] - meshes[1]).max() > 1.0                # the correctives move the fist by mm
    fig = w.snapshot_figure(path=tmp_path / "snap.png", size=2.0, dpi=100)
    assert [a.get_title() for a in fig.axes] == ["with correctives", "without correctives"]
    img = mpimg.imread(tmp_path / "snap.png")[..., :3]
    assert img.shape == (260, 400, 3)                # 2 panels of 2 in at 100 dpi, 0.6 in above them for the titles
    skin = img[..., 0] - img[..., 2] > 0.08                          # shaded skin is red-heavy; text is grey
    H = img.shape[0]
    for ax, v, cols in zip(fig.axes, meshes, (slice(0, 200), slice(200, 400))):
        # where the panel's projection puts the mesh is where skin was drawn (within 2 px)
        x, y, _ = proj3d.proj_transform(*v.T, ax.get_proj())
        px = ax.transData.transform(np.c_[x, y])
        rows, cs = np.nonzero(skin[:, cols])
        cs = cs + cols.start
        assert abs(rows.min() - (H - px[:, 1].max())) <= 2 and abs(rows.max() - (H - px[:, 1].min())) <= 2
        assert abs(cs.min() - px[:, 0].min()) <= 2 and abs(cs.max() - px[:, 0].max()) <= 2
        assert rows.max() - rows.min() > 0.3 * H and 0.03 < skin[:, cols].mean() < 0.6   # a hand, not a speck
        assert rows.min() > 0.15 * H                                  # below the title
    # the right panel is exactly the plain mesh; the left one is not
    ref = tmp_path / "plain.png"
    hand_figure([(t, meshes[1]) for t in ("with correctives", "without correctives")], w.faces, path=ref,
                size=2.0, dpi=100)
    plain = mpimg.imread(ref)[..., :3]
    np.testing.assert_array_equal(img[:, 200:], plain[:, 200:])
    changed = np.abs(img[:, :200] - plain[:, :200]).max(-1) > 0.05
    # measured: ~1560 of ~4400 hand pixels change (silhouette and shading)
    assert changed.sum() > 0.1 * skin[:, :200].sum(), "the correctives are invisible in the left panel"

