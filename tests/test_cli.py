"""The `dhm` command: demo, hand-model, argument errors, exit codes, help."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from toyhand import toy_hand

from dhmlib.cli import CLIError, main, parse_euler
from dhmlib.hand.handmodel import FILES, HandModel
from dhmlib.hand.layer import HandLayer
from dhmlib.mesh.io import read_obj, read_obj_uvs, read_ply, write_obj


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
    for bad in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(CLIError, match="expected a finite angle"):
            parse_euler(f"index1.z={bad}", sk)
    with pytest.raises(CLIError, match="index1.z is given twice"):
        parse_euler("index1.z=10,b_r_index1.z=20", sk)
    base = np.full((sk.num_joints, 3), 0.25)
    e = parse_euler("index1.z=90", sk, base)
    assert e[sk.index("index1"), 2] == pytest.approx(np.pi / 2) and e[sk.index("index1"), 0] == 0.25


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


def _decode(hm, euler, root=None):
    """Reference: float64 HandLayer (template + LBS), (B, J, 3) radians → (B, V, 3) mm."""
    e = torch.as_tensor(np.asarray(euler), dtype=torch.float64)
    r = None if root is None else torch.as_tensor(root, dtype=torch.float64)
    return HandLayer(hm, dtype=torch.float64)(e, root_transform=r).vertices.numpy()


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,phrase", [
    (["--device", "gpu"], "argument --device: expected cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["--device", "cuda:x"], "argument --device"),
    (["--device", "meta"], "expected cpu, cuda, cuda:N or mps"),
    (["--out", "{tmp}/x.stl"], "cannot write .stl; expected one of .obj, .ply"),
    (["--out", "{tmp}/x"], "cannot write a file without suffix"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/afile/x.obj"], "is a file, not a folder"),
    (["--euler", "index1.z=nan"], "expected a finite angle"),
    (["--euler", "index1.z=10,index1.z=20"], "given twice"),
    (["--euler", "indx1.z=1"], "unknown joint"),
    (["--rotate", "w=30"], "--rotate: axis must be x, y or z"),
    (["--rotate", "x=30,x=10"], "axis x is given twice"),
    (["--rotate", "x=inf"], "finite"),
    (["--preset", "fits"], "argument --preset: invalid choice"),
    (["--preset", "fist", "--pose-file", "{tmp}/p.npy"], "not allowed with argument"),
    (["--pose-file", "{tmp}/none.npy"], "file not found"),
    (["--pose-file", "{tmp}/afile"], "cannot be read as a numpy"),
    (["--pose-file", "{tmp}/shape.npy"], "expected Euler angles of shape (B, 22, 3)"),
    (["--pose-file", "{tmp}/nan.npy"], "pose 1, index2.z is nan"),
    (["--pose-file", "{tmp}/obj.npy"], "cannot be read as a numpy"),
    (["--pose-file", "{tmp}/other.npz"], "expected an array 'euler' in the .npz, found poses"),
    (["--pose-file", "{tmp}/p.npy", "--euler", "index1.z=3"], "--euler cannot be combined with --pose-file"),
    (["--snapshot", "{tmp}/none.pth.tar"], "snapshot file not found"),
    (["--hand-model", "{tmp}/afile"], "expected a hand_model folder"),
])
def test_demo_user_errors_are_one_line_exit_2(hand_dir, tmp_path, capsys, argv, phrase):
    (tmp_path / "afile").write_text("not a folder, not numpy")
    J = 22
    np.save(tmp_path / "p.npy", np.zeros((2, J, 3)))
    np.save(tmp_path / "shape.npy", np.zeros((2, J, 2)))
    bad = np.zeros((3, J, 3))
    bad[1, 7, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "other.npz", poses=np.zeros((1, J, 3)))
    argv = [a.format(tmp=tmp_path) for a in argv]
    base = ["demo", "--hand-model", str(hand_dir), "--out", str(tmp_path / "out" / "m.obj")]
    assert main(base + argv) == 2
    err = _err(capsys)
    assert err.strip().splitlines()[-1].startswith("dhm demo: error: ")
    assert phrase in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_demo_limits_warn_or_refuse(hand_dir, tmp_path, capsys):
    from dhmlib.hand import anatomy

    hm = HandModel.read(hand_dir)
    hi = anatomy.joint_limits_deg(hm.skeleton)[hm.skeleton.index("index1"), 2, 1]
    out = tmp_path / "m.obj"
    # within the limits: silent
    assert main(["demo", "--hand-model", str(hand_dir), "--euler", f"index1.z={hi}", "--out", str(out)]) == 0
    assert "warning" not in _err(capsys)
    assert main(["demo", "--hand-model", str(hand_dir), "--euler", "index1.z=9000", "--out", str(out)]) == 0
    err = _err(capsys)
    assert f"warning: outside the anatomical joint limits (--strict-limits refuses): index1.z = 9000° is outside" \
           in err and f"…{hi:g}°" in err
    v, _ = read_obj(out)
    e = np.zeros((1, hm.num_joints, 3))
    e[0, hm.skeleton.index("index1"), 2] = np.deg2rad(9000)
    root = np.eye(4)
    np.testing.assert_allclose(v, _decode(hm, e, root)[0], atol=1e-3)
    out.unlink()
    assert main(["demo", "--hand-model", str(hand_dir), "--euler", "index1.z=9000", "--strict-limits",
                 "--out", str(out)]) == 2
    assert "error: outside the anatomical joint limits: index1.z = 9000°" in _err(capsys)
    assert not out.exists()


def test_demo_preset_with_euler_override(hand_dir, tmp_path):
    from dhmlib.hand import anatomy

    hm = HandModel.read(hand_dir)
    sk = hm.skeleton
    out = tmp_path / "fist.obj"
    assert main(["demo", "--hand-model", str(hand_dir), "--preset", "fist", "--euler", "index2.z=0",
                 "--frame", "model", "--out", str(out)]) == 0
    e = np.array(anatomy.gesture_euler("fist", sk))
    assert abs(e[sk.index("index2"), 2]) > 0.1   # the override changes something
    e[sk.index("index2"), 2] = 0
    v, _ = read_obj(out)
    np.testing.assert_allclose(v, _decode(hm, e[None])[0], atol=1e-3)


def test_demo_pose_file_writes_a_mesh_per_row(hand_dir, tmp_path, capsys):
    hm = HandModel.read(hand_dir)
    rng = np.random.default_rng(1)
    poses = rng.uniform(-0.3, 0.3, (3, hm.num_joints, 3)) * hm.dof_mask
    np.save(tmp_path / "poses.npy", poses)
    assert main(["demo", "--hand-model", str(hand_dir), "--pose-file", str(tmp_path / "poses.npy"),
                 "--frame", "model", "--out", str(tmp_path / "o" / "hand.ply")]) == 0
    assert "3 meshes" in capsys.readouterr().out
    ref = _decode(hm, poses)
    for i in range(3):
        v, f = read_ply(tmp_path / "o" / f"hand_{i:03d}.ply")
        np.testing.assert_allclose(v, ref[i], atol=1e-3)
    assert not (tmp_path / "o" / "hand.ply").exists()
    # the capture's poses.npz layout (key 'euler'); one pose of shape (J, 3) writes --out itself
    np.savez(tmp_path / "poses.npz", euler=poses[1], frame=np.arange(1))
    assert main(["demo", "--hand-model", str(hand_dir), "--pose-file", str(tmp_path / "poses.npz"),
                 "--frame", "model", "--out", str(tmp_path / "one.obj")]) == 0
    np.testing.assert_allclose(read_obj(tmp_path / "one.obj")[0], ref[1], atol=1e-3)


@pytest.mark.parametrize("frame", ["root", "model"])
def test_demo_rotation_turns_the_hand_about_the_root(hand_dir, tmp_path, frame):
    hm = HandModel.read(hand_dir)
    a, b = tmp_path / "a.obj", tmp_path / "b.obj"
    common = ["demo", "--hand-model", str(hand_dir), "--euler", "index1.z=40", "--frame", frame]
    assert main(common + ["--out", str(a)]) == 0
    assert main(common + ["--rotate", "x=30,y=-20,z=90", "--out", str(b)]) == 0
    va, vb = read_obj(a)[0], read_obj(b)[0]
    R = Rotation.from_euler("xyz", [30, -20, 90], degrees=True).as_matrix()   # extrinsic x, y, z = Rz·Ry·Rx
    pivot = np.zeros(3) if frame == "root" else hm.global_pose[hm.skeleton.root, :3, 3]
    np.testing.assert_allclose(vb, (va - pivot) @ R.T + pivot, atol=2e-3)
    assert np.abs(vb - va).max() > 10


def test_obj_keeps_the_hand_models_uvs(hand_dir, tmp_path):
    hm = HandModel.read(hand_dir)
    out = tmp_path / "m.obj"
    assert main(["demo", "--hand-model", str(hand_dir), "--out", str(out)]) == 0
    uvs, uv_faces = read_obj_uvs(out)
    np.testing.assert_array_equal(uvs, hm.uvs)
    np.testing.assert_array_equal(uv_faces, hm.uv_faces)
    np.testing.assert_array_equal(read_obj(out)[1], hm.faces)
    # the written file is a hand.obj the hand-model reader accepts (v/vt faces), vertices in cm
    write_obj(tmp_path / "hm" / "hand.obj", hm.vertices, hm.faces, unit="cm", uvs=hm.uvs, uv_faces=hm.uv_faces)
    for name in FILES[1:]:
        (tmp_path / "hm" / name).write_bytes((hand_dir / name).read_bytes())
    back = HandModel.read(tmp_path / "hm")
    np.testing.assert_allclose(back.vertices, hm.vertices, rtol=1e-12)
    np.testing.assert_array_equal(back.uvs, hm.uvs)
    np.testing.assert_array_equal(back.uv_faces, hm.uv_faces)
    with pytest.raises(ValueError, match="go together"):
        write_obj(tmp_path / "x.obj", hm.vertices, hm.faces, uvs=hm.uvs)


@pytest.mark.parametrize("argv,phrase", [
    (["--vertices", "50"], "argument --vertices: expected an integer 200..100000, got 50"),
    (["--vertices", "1000000000"], "expected an integer 200..100000"),
    (["--vertices", "8k"], "expected an integer, got '8k'"),
    (["--seed", "-1"], "argument --seed: expected an integer at least 0, got -1"),
])
def test_hand_model_user_errors(tmp_path, capsys, argv, phrase):
    assert main(["hand-model", "--out", str(tmp_path / "hm")] + argv) == 2
    err = _err(capsys)
    assert phrase in err and err.strip().splitlines()[-1].startswith("dhm hand-model: error: ")
    assert not (tmp_path / "hm").exists()


def test_hand_model_refuses_to_replace_without_overwrite(tmp_path, capsys):
    out = tmp_path / "hand_model"
    assert main(["hand-model", "--out", str(out), "--vertices", "400"]) == 0
    first = {f: (out / f).read_bytes() for f in FILES}
    capsys.readouterr()
    assert main(["hand-model", "--out", str(out), "--vertices", "400", "--seed", "5"]) == 2
    err = _err(capsys)
    assert "already holds a hand model (hand.obj, skeleton.txt" in err and "pass --overwrite" in err
    assert {f: (out / f).read_bytes() for f in FILES} == first
    # one official file is enough to refuse (a partly copied official model)
    other = tmp_path / "official"
    other.mkdir()
    (other / "skeleton.txt").write_text("keep")
    assert main(["hand-model", "--out", str(other), "--vertices", "400"]) == 2
    assert "already holds a hand model (skeleton.txt); pass --overwrite" in _err(capsys)
    assert (other / "skeleton.txt").read_text() == "keep"
    assert main(["hand-model", "--out", str(out), "--vertices", "400", "--seed", "5", "--overwrite"]) == 0
    assert (out / "hand.obj").read_bytes() != first["hand.obj"]
    (tmp_path / "file").write_text("x")
    assert main(["hand-model", "--out", str(tmp_path / "file"), "--vertices", "400"]) == 2
    assert "is a file; expected a folder" in _err(capsys)


def test_help_shows_defaults_joints_and_presets(capsys):
    from dhmlib.hand import anatomy

    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: mm)" in out and "(default: root)" in out and "(default: cpu)" in out
    assert anatomy.describe_joints().splitlines()[0] in out
    for name in anatomy.gesture_names():
        assert name in out
    assert "radians" in out and "hand_000.obj" in out
    assert main(["hand-model", "--help"]) == 0
    assert "(default: 8000)" in capsys.readouterr().out
    assert main(["synth", "--help"]) == 0
    assert "3.3 GB" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "exit status: 0 done; 1" in capsys.readouterr().out
    assert main([]) == 2 and "required" in capsys.readouterr().err


def test_check_data_exit_codes_in_process(tmp_path, capsys):
    import dataclasses

    from dhmlib.data.check import check_dataset

    assert main(["check-data", str(tmp_path / "none"), "--no-progress"]) == 2     # a usage error, not a "problem"
    assert "no such dataset root" in capsys.readouterr().err
    rep = check_dataset(tmp_path / "none", progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.problems = ()
    assert rep.counts["images"] == 0 and len(rep.problems) == 1


def test_no_module_outside_the_cli_parses_arguments():
    """argparse and sys.exit live only in dhmlib/cli/."""
    from pathlib import Path

    import dhmlib

    root = Path(dhmlib.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.parent.name != "cli" and any(s in p.read_text() for s in ("argparse", "sys.exit", "SystemExit"))]
    assert offenders == []
