"""The `dhm` command: demo and argument errors."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from dhmlib.cli import CLIError, main, parse_euler
from dhmlib.handmodel import HandModel
from dhmlib.meshio import read_obj, read_ply
from dhmlib.model import HandLayer
from toyhand import toy_hand


@pytest.fixture(scope="module")
def hand_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hm") / "hand_model"
    toy_hand(400).write(d)
    return d


def test_parse_euler_names_and_degrees():
    sk = toy_hand(50).skeleton
    e = parse_euler("index1.z=90, b_r_middle1.x=-30,thumb0.y=10", sk)
    assert e[sk.index("index1"), 2] == pytest.approx(np.pi / 2)
    assert e[sk.index("middle1"), 0] == pytest.approx(-np.pi / 6)
    assert np.count_nonzero(e) == 3
    with pytest.raises(CLIError, match="unknown joint 'indx1'"):
        parse_euler("indx1.z=90", sk)
    with pytest.raises(CLIError, match="'index2' has no x degree of freedom"):
        parse_euler("index2.x=10", sk)
    with pytest.raises(CLIError, match="expected items like"):
        parse_euler("index1=90", sk)


@pytest.mark.parametrize("unit,suffix", [("mm", ".obj"), ("cm", ".obj"), ("mm", ".ply")])
def test_demo_writes_the_decoded_mesh(hand_dir, tmp_path, unit, suffix):
    out = tmp_path / f"mesh{suffix}"
    assert main(["demo", "--hand-model", str(hand_dir), "--euler", "index1.z=90,middle1.z=90",
                 "--out", str(out), "--unit", unit, "--frame", "model"]) == 0
    hm = HandModel.read(hand_dir)
    e = torch.zeros(1, hm.num_joints, 3, dtype=torch.float64)
    e[0, hm.skeleton.index("index1"), 2] = e[0, hm.skeleton.index("middle1"), 2] = np.pi / 2
    ref = HandLayer(hm, dtype=torch.float64)(e).vertices[0].numpy()
    v, f = (read_ply if suffix == ".ply" else read_obj)(out, unit=unit)
    np.testing.assert_allclose(v, ref, atol=1e-3)  # float32 decode
    np.testing.assert_array_equal(f, hm.faces)
    if unit == "cm":
        raw = float(out.read_text().splitlines()[1].split()[1])
        assert raw == pytest.approx(ref[0, 0] / 10, abs=1e-4)


def test_demo_root_frame(hand_dir, tmp_path):
    out = tmp_path / "m.obj"
    assert main(["demo", "--hand-model", str(hand_dir), "--out", str(out)]) == 0
    hm = HandModel.read(hand_dir)
    v, _ = read_obj(out)
    # rest pose in the root joint's frame: template mapped by the root's inverse bind pose
    root = hm.skeleton.root
    ref = hm.vertices @ hm.global_pose_inv[root, :3, :3].T + hm.global_pose_inv[root, :3, 3]
    np.testing.assert_allclose(v, ref, atol=1e-3)


def test_demo_errors_are_reported_without_traceback(hand_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "demo", "--hand-model", str(hand_dir),
                        "--euler", "index2.y=5", "--out", str(tmp_path / "x.obj")], capture_output=True, text=True)
    assert r.returncode == 2 and "no y degree of freedom" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "demo", "--hand-model", str(tmp_path / "none"),
                        "--out", str(tmp_path / "x.obj")], capture_output=True, text=True)
    assert r.returncode == 2 and "none" in r.stderr
