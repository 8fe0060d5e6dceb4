"""`dhm fit`: joints in (.npy, .pts), poses.npz and meshes out."""
import numpy as np
import pytest
import torch

from dhmlib.cli import main
from dhmlib.data.keypoints import joints_to_keypoints, write_keypoints
from dhmlib.hand.anatomy import random_plausible_pose
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.layer import HandLayer
from dhmlib.mesh.io import read_obj, read_obj_uvs
from dhmlib.synth import build_procedural_hand


@pytest.fixture(scope="module")
def hand_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hm") / "hand_model"
    build_procedural_hand(800, seed=1).write(d)
    return d


def test_fit_writes_poses_and_meshes(hand_dir, tmp_path, capsys):
    hand = HandModel.read(hand_dir)
    layer = HandLayer(hand)
    euler = torch.tensor(random_plausible_pose(hand.skeleton, np.random.default_rng(0), 2), dtype=torch.float32)
    with torch.no_grad():
        true = layer(euler)
    joints = true.joints.numpy().astype(np.float64)
    np.save(tmp_path / "j.npy", joints[0])
    write_keypoints(tmp_path / "keypoints0007.pts", joints_to_keypoints(joints[1], hand.skeleton))
    code = main(["fit", str(tmp_path / "j.npy"), str(tmp_path / "keypoints0007.pts"), "--hand-model", str(hand_dir),
                 "--out", str(tmp_path / "fit"), "--steps", "400"])
    assert code == 0
    assert "fitted 2 frame(s)" in capsys.readouterr().out
    z = np.load(tmp_path / "fit" / "poses.npz")
    assert z["euler"].shape == (2, hand.skeleton.num_joints, 3) and z["root"].shape == (2, 4, 4)
    assert z["joint_error"].max() < 0.5
    # the .pts file has no thumb0: the error counts the 21 annotated joints only
    v, f = read_obj(tmp_path / "fit" / "meshes" / "000001.obj")
    np.testing.assert_array_equal(f, hand.faces)
    with torch.no_grad():
        again = layer(torch.as_tensor(z["euler"][1:], dtype=torch.float32),
                      root_transform=torch.as_tensor(z["root"][1:], dtype=torch.float32)).vertices[0]
    np.testing.assert_allclose(v, again.numpy(), atol=1e-3)
    uvs, uv_faces = read_obj_uvs(tmp_path / "fit" / "meshes" / "000000.obj")
    np.testing.assert_array_equal(uv_faces, hand.uv_faces)


def test_fit_user_errors(hand_dir, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    assert main(["fit", str(tmp_path / "bad.npy"), "--hand-model", str(hand_dir), "--out", str(tmp_path / "o")]) == 2
    assert "expected joints of shape" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "nope.npy"), "--hand-model", str(hand_dir), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
