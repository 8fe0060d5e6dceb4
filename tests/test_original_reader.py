"""Our hand-model files open with the original release's reading rules.

The reader below follows the facts of the original code's splitting rules, written here from
scratch: every file is split on single spaces (``line.split(' ')``); lines starting with ``#`` are
skipped; ``skeleton.txt`` lines must split into exactly three tokens (no trailing space);
``skinning_weight.txt`` and the three pose files drop the last token (so their lines must end with
a space before the newline, as in the released files); ``hand.obj`` reads tokens 1-3 of ``v``
lines (cm), ``vt`` and ``f v/vt`` triples.
"""
import numpy as np
import pytest
from toyhand import toy_hand

from dhmlib.hand.handmodel import HandModel


def _data_lines(path):
    with open(path, encoding="utf-8") as fh:
        return [line for line in fh if line[0] != "#"]


def original_rules_read(folder):
    """(names, parents, vertices mm, faces, weights, {pose file: (J, 4, 4)}) by the original's rules."""
    names, parents = {}, {}
    for line in _data_lines(folder / "skeleton.txt"):
        name, jid, pid = line.split(" ")          # exactly three tokens, or ValueError
        names[int(jid)], parents[int(jid)] = name, int(pid)
    order = [names[j] for j in range(len(names))]
    verts, faces = [], []
    for line in _data_lines(folder / "hand.obj"):
        w = line.split(" ")
        if w[0] == "v":
            verts.append([float(w[1]) * 10, float(w[2]) * 10, float(w[3]) * 10])
        elif w[0] == "f":
            faces.append([int(t.split("/")[0]) - 1 for t in w[1:4]])
    V = len(verts)
    weights = np.zeros((V, len(order)))
    for line in _data_lines(folder / "skinning_weight.txt"):
        tok = line.split(" ")[:-1]
        v = int(tok[0])
        for i in range(0, len(tok) - 1, 2):
            weights[v, order.index(tok[1 + i])] = float(tok[2 + i])
    poses = {}
    for fname in ("local_pose.txt", "global_pose.txt", "global_pose_inv.txt"):
        P = np.zeros((len(order), 4, 4))
        for line in _data_lines(folder / fname):
            tok = line.split(" ")
            P[order.index(tok[0])] = np.array([float(x) for x in tok[1:-1]]).reshape(4, 4)
        poses[fname] = P
    return order, [parents[j] for j in range(len(order))], np.array(verts), np.array(faces), weights, poses


@pytest.mark.parametrize("source", ["toy", "procedural"])
def test_written_hand_model_opens_with_the_original_rules(tmp_path, source):
    if source == "toy":
        m = toy_hand(300, seed=5)
    else:
        from dhmlib.synth import build_procedural_hand
        m = build_procedural_hand(target_vertices=1500, seed=2)
    m.write(tmp_path / "hm")
    names, parents, verts, faces, weights, poses = original_rules_read(tmp_path / "hm")
    assert tuple(names) == tuple(m.skeleton.names) and tuple(parents) == tuple(m.skeleton.parents)
    np.testing.assert_allclose(verts, m.vertices, rtol=0, atol=1e-9)   # cm × 10 in float arithmetic
    np.testing.assert_array_equal(faces, m.faces)
    np.testing.assert_array_equal(weights, m.skinning_weights)
    np.testing.assert_array_equal(poses["local_pose.txt"], m.local_pose)
    np.testing.assert_array_equal(poses["global_pose.txt"], m.global_pose)
    np.testing.assert_array_equal(poses["global_pose_inv.txt"], m.global_pose_inv)


def test_line_endings_follow_the_released_files(tmp_path):
    toy_hand(50, seed=1).write(tmp_path / "hm")
    for fname in ("skinning_weight.txt", "local_pose.txt", "global_pose.txt", "global_pose_inv.txt"):
        rows = _data_lines(tmp_path / "hm" / fname)
        assert rows and all(r.endswith(" \n") and not r.endswith("  \n") for r in rows), fname
    rows = _data_lines(tmp_path / "hm" / "skeleton.txt")
    assert rows and all(r.endswith("\n") and not r.endswith(" \n") for r in rows)


def test_both_line_forms_read(tmp_path):
    """Ours read files with and without the trailing space identically."""
    m = toy_hand(80, seed=4)
    m.write(tmp_path / "a")
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").iterdir():
        (tmp_path / "b" / f.name).write_text(f.read_text().replace(" \n", "\n"))
    assert HandModel.read(tmp_path / "a").equals(m) and HandModel.read(tmp_path / "b").equals(m)
    assert (tmp_path / "b" / "global_pose.txt").read_text() != (tmp_path / "a" / "global_pose.txt").read_text()
