"""Official-format hand model: parse, round trip, and malformed files."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from toyhand import toy_hand

from dhmlib.hand.handmodel import HandModel, HandModelError

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_hand_model"


def test_handwritten_fixture_parses():
    m = HandModel.read(FIXTURE)
    assert m.num_vertices == 8 and len(m.faces) == 12 and m.num_joints == 5
    # cm → mm
    np.testing.assert_array_equal(m.vertices[6], [80.0, 10.0, 10.0])
    assert m.skeleton.names[m.skeleton.root] == "b_r_wrist"
    assert m.skeleton.parents == (1, 2, 3, 4, -1)
    np.testing.assert_array_equal(m.bind_joints[:, 0], [80, 70, 60, 40, 0])
    np.testing.assert_allclose(m.skinning_weights.sum(1), 1.0)
    assert m.skinning_weights[5, m.skeleton.index("index3")] == 0.75
    np.testing.assert_array_equal(m.faces[0], [0, 3, 2])
    np.testing.assert_array_equal(m.uv_faces[0], [0, 3, 2])
    # dof from names: index1 xyz, index2/3 z, null and wrist none
    np.testing.assert_array_equal(m.dof_mask.sum(1), [0, 1, 1, 3, 0])
    # outward faces: positive signed volume of the box = 80*20*20 mm³
    v = m.vertices[m.faces]
    vol = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6
    assert vol == pytest.approx(32000.0)


def test_round_trip_is_exact(tmp_path):
    m = toy_hand(500, seed=3)  # random float64 values: the hard case for cm ↔ mm
    m.write(tmp_path / "hm")
    r = HandModel.read(tmp_path / "hm")
    assert r.equals(m)
    # and again: the files are a fixed point
    r.write(tmp_path / "hm2")
    for f in ("hand.obj", "skinning_weight.txt", "global_pose.txt"):
        assert (tmp_path / "hm" / f).read_text() == (tmp_path / "hm2" / f).read_text()


def _edit(folder: Path, name: str, fn):
    p = folder / name
    p.write_text(fn(p.read_text()))


def _sub(pattern, repl):
    return lambda text: re.sub(pattern, repl, text, count=1, flags=re.M)


# (case, file, edit, expected file in message, expected line, expected phrase)
MALFORMED = [
    ("missing file", "local_pose.txt", None, "local_pose.txt", None, "missing file"),
    ("unknown joint", "skinning_weight.txt", _sub(r"^2 b_r_index2", "2 b_r_index9"),
     "skinning_weight.txt", 4, "unknown joint name 'b_r_index9'"),
    ("two roots", "skeleton.txt", _sub(r"^b_r_index1 3 4", "b_r_index1 3 -1"),
     "skeleton.txt", 6, "exactly one root"),
    ("cycle", "skeleton.txt", _sub(r"^b_r_index1 3 4", "b_r_index1 3 1"), "skeleton.txt", None, "cycle"),
    ("face out of range", "hand.obj", _sub(r"^f 2/1 7/3 6/4", "f 2/1 7/3 60/4"), "hand.obj", 28, "out of range"),
    ("negative weight", "skinning_weight.txt", _sub(r"^0 b_r_wrist 1.0", "0 b_r_wrist -1.0"),
     "skinning_weight.txt", 2, "non-negative"),
    ("weights not normalized", "skinning_weight.txt", _sub(r"^0 b_r_wrist 1.0", "0 b_r_wrist 0.9"),
     "skinning_weight.txt", 2, "sum to 0.9"),
    ("non-invertible pose", "global_pose.txt", _sub(r"^b_r_index2 1 0 0 60 0 1 0 0", "b_r_index2 0 0 0 60 0 0 0 0"),
     "global_pose.txt", 3, "not invertible"),
    ("global != FK(local)", "global_pose.txt", _sub(r"^b_r_index3 1 0 0 70", "b_r_index3 1 0 0 75"),
     "global_pose.txt", 2, "FK(local)"),
    ("inverse inconsistent", "global_pose_inv.txt", _sub(r"^b_r_index1 1 0 0 -40", "b_r_index1 1 0 0 -41"),
     "global_pose_inv.txt", 4, "not the inverse"),
    ("wrong column count", "local_pose.txt", _sub(r"^b_r_index3 1 0 0 10 ", "b_r_index3 1 0 10 "),
     "local_pose.txt", 2, "17 fields"),
    ("bad number", "hand.obj", _sub(r"^v 8 1 -1", "v 8 one -1"), "hand.obj", 5, "expected numbers"),
    ("vertex without weights", "skinning_weight.txt", _sub(r"^7 b_r_wrist 0.5 b_r_index1 0.5\n", ""),
     "skinning_weight.txt", None, "1 missing"),
    ("unit mix-up (mesh in mm)", "hand.obj", lambda t: re.sub(r"^v (\S+) (\S+) (\S+)",
                                                               lambda m: "v " + " ".join(str(float(x) * 10) for x in m.groups()),
                                                               t, flags=re.M),
     "global_pose.txt", None, "unit mix-up"),
]


@pytest.mark.parametrize("case,fname,edit,err_file,err_line,phrase", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_name_file_and_line(tmp_path, case, fname, edit, err_file, err_line, phrase):
    folder = tmp_path / "hand_model"
    shutil.copytree(FIXTURE, folder)
    if edit is None:
        (folder / fname).unlink()
    else:
        before = (folder / fname).read_text()
        _edit(folder, fname, edit)
        assert (folder / fname).read_text() != before, "the edit must change the fixture"
    with pytest.raises(HandModelError) as exc:
        HandModel.read(folder)
    msg = str(exc.value)
    assert err_file in msg and phrase in msg, msg
    assert exc.value.path.endswith(err_file)
    if err_line is not None:
        assert exc.value.line == err_line and f"{err_file}:{err_line}:" in msg, msg


def test_joint_far_outside_mesh(tmp_path):
    folder = tmp_path / "hand_model"
    shutil.copytree(FIXTURE, folder)
    # move the tip 300 mm away, consistently in all three pose files
    _edit(folder, "local_pose.txt", _sub(r"^b_r_index_null 1 0 0 10 0 1 0 0", "b_r_index_null 1 0 0 10 0 1 0 300"))
    _edit(folder, "global_pose.txt", _sub(r"^b_r_index_null 1 0 0 80 0 1 0 0", "b_r_index_null 1 0 0 80 0 1 0 300"))
    _edit(folder, "global_pose_inv.txt", _sub(r"^b_r_index_null 1 0 0 -80 0 1 0 0", "b_r_index_null 1 0 0 -80 0 1 0 -300"))
    with pytest.raises(HandModelError, match=r"global_pose.txt:1: joint 'b_r_index_null' .* far outside"):
        HandModel.read(folder)


def test_renormalize_only_with_flag(tmp_path):
    folder = tmp_path / "hand_model"
    shutil.copytree(FIXTURE, folder)
    _edit(folder, "skinning_weight.txt", _sub(r"^1 b_r_index2 0.5 b_r_index3 0.5", "1 b_r_index2 1 b_r_index3 3"))
    with pytest.raises(HandModelError, match="renormalize_weights=True"):
        HandModel.read(folder)
    m = HandModel.read(folder, renormalize_weights=True)
    row = m.skinning_weights[1]
    assert row[m.skeleton.index("index2")] == 0.25 and row[m.skeleton.index("index3")] == 0.75


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(HandModelError, match="nowhere"):
        HandModel.read(tmp_path / "nowhere")


def test_swapped_skeleton_names_blame_the_skeleton(tmp_path):
    """Two names swapped in skeleton.txt: the poses agree with each other, so skeleton.txt is named."""
    d = tmp_path / "hm"
    shutil.copytree(FIXTURE, d)
    text = (d / "skeleton.txt").read_text()
    swapped = text.replace("b_r_index3 1 2", "TMP 1 2").replace("b_r_index2 2 3", "b_r_index3 2 3") \
                  .replace("TMP 1 2", "b_r_index2 1 2")
    assert swapped != text
    (d / "skeleton.txt").write_text(swapped)
    with pytest.raises(HandModelError) as e:
        HandModel.read(d)
    msg = str(e.value)
    assert e.value.path.endswith("skeleton.txt") and "global_pose.txt:" not in msg
    assert "'b_r_index3' (line 4) has parent 'b_r_index1' in skeleton.txt but 'b_r_index2' by the poses" in msg
    assert "'b_r_index2' (line 3) has parent 'b_r_index3' in skeleton.txt but 'b_r_index1' by the poses" in msg
    assert "swapped in skeleton.txt" in msg


def test_corrupt_global_pose_still_blames_global_pose(tmp_path):
    """A global pose no tree explains is global_pose.txt's fault, with its line."""
    d = tmp_path / "hm"
    shutil.copytree(FIXTURE, d)
    lines = (d / "global_pose.txt").read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("b_r_index2 "))
    lines[i] = lines[i].replace(" 60 ", " 63 ", 1)
    (d / "global_pose.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(HandModelError, match=rf"global_pose.txt:{i + 1}: global pose of 'b_r_index2' differs"):
        HandModel.read(d)


def test_repr_is_one_line():
    r = repr(HandModel.read(FIXTURE))
    assert "\n" not in r and len(r) < 200
    assert r.startswith("HandModel(8 vertices, 12 faces, 5 joints") and "tiny_hand_model" in r
