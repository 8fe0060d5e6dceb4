"""Safe loading of depth maps and keypoint files: refusals name the file; nothing executes."""
import pickle

import numpy as np
import pytest
from toyhand import toy_hand

from dhmlib.data.keypoints import (KEYPOINT_NAMES, KeypointFileError, joints_to_keypoints, keypoints_to_joints,
                                   read_keypoints, write_keypoints)
from dhmlib.data.safe_pickle import UnsafePickleError, load_array_pickle, save_array_pickle
from dhmlib.hand.skeleton import OFFICIAL_JOINT_NAMES, Skeleton


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


class CallsFunction:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _load_payload(loader, payload, folder):
    """Write ``payload`` (with a marker file of its own in ``folder``) and load it with ``loader``.

    Returns the marker path (it exists iff the payload ran), the pickle path and the exception raised (or None).
    """
    folder.mkdir()
    marker, path = folder / "PAYLOAD_RAN", folder / "depthmap400000.pkl"
    path.write_bytes(pickle.dumps(payload(str(marker)), protocol=2))
    try:
        loader(path)
    except Exception as e:  # noqa: BLE001 - returned to the test
        return marker, path, e
    return marker, path, None


def _plain_pickle_load(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("payload", [RunsCommand, CallsFunction])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, payload):
    marker, path, err = _load_payload(load_array_pickle, payload, tmp_path / "safe")
    assert isinstance(err, UnsafePickleError) and str(path) in str(err) and "refused" in str(err), err
    assert not marker.exists(), "the payload ran"
    # control, in its own folder with its own marker: the same check catches an unrestricted unpickler,
    # so the assertion above can fail
    control, _, control_err = _load_payload(_plain_pickle_load, payload, tmp_path / "control")
    assert control != marker and control_err is None
    assert control.exists(), "control: plain pickle.load runs this payload"
    assert not marker.exists()


def test_array_hidden_in_a_dict_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "RAN"
    path = tmp_path / "d.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"depth": np.zeros((2, 2)), "x": RunsCommand(str(marker))}, fh)
    with pytest.raises(UnsafePickleError):
        load_array_pickle(path)
    assert not marker.exists()


def test_non_array_and_object_arrays_are_refused(tmp_path):
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UnsafePickleError, match="expected a numpy array, got list"):
        load_array_pickle(p)
    p.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(UnsafePickleError):
        load_array_pickle(p)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_arrays_load_at_every_protocol(tmp_path, protocol):
    a = np.random.default_rng(0).random((17, 9)).astype(np.float32)
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps(a, protocol=protocol))
    b = load_array_pickle(p)
    assert b.dtype == a.dtype and np.array_equal(a, b)


def test_round_trip_and_truncation(tmp_path):
    a = np.random.default_rng(1).random((512, 334)).astype(np.float32)
    p = save_array_pickle(tmp_path / "depthmap400001.pkl", a)
    assert np.array_equal(load_array_pickle(p), a)
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"depthmap400001.pkl: truncated or corrupt"):
        load_array_pickle(p)
    p.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="depthmap400001.pkl"):
        load_array_pickle(p)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_array_pickle(tmp_path / "missing.pkl")


def test_keypoints_round_trip_and_mapping(tmp_path):
    hm = toy_hand(100)
    sk = hm.skeleton
    joints = hm.bind_joints
    kp = joints_to_keypoints(joints, sk)
    assert kp.shape == (21, 3)
    p = write_keypoints(tmp_path / "keypoints0007.pts", kp, num_views=np.full(21, 5))
    rows = read_keypoints(p)
    assert rows.shape == (42, 5) and np.array_equal(rows[:21, :3], kp) and (rows[:21, 4] == 5).all()
    assert (rows[21:] == 0).all()
    j, valid = keypoints_to_joints(rows, sk)
    thumb0 = sk.index("thumb0")
    assert valid[thumb0] == 0 and valid.sum() == 21
    mask = np.arange(sk.num_joints) != thumb0
    np.testing.assert_array_equal(j[mask], joints[mask])
    # file order by name: the wrist is the last right-hand point
    assert KEYPOINT_NAMES[20] == "wrist" and np.array_equal(rows[20, :3], joints[sk.index("wrist")])


def test_keypoint_mapping_follows_names_not_indices():
    # a skeleton in another order maps the same rows onto the same named joints
    names = tuple(reversed(OFFICIAL_JOINT_NAMES))
    hm = toy_hand(100)
    parents_by_name = {hm.skeleton.names[j]: (hm.skeleton.names[p] if p >= 0 else None)
                       for j, p in enumerate(hm.skeleton.parents)}
    sk2 = Skeleton(names, tuple(-1 if parents_by_name[n] is None else names.index(parents_by_name[n]) for n in names))
    rows = np.zeros((42, 5))
    rows[:21, :3] = np.arange(63).reshape(21, 3)
    rows[:21, 3] = 1
    j1, _ = keypoints_to_joints(rows, hm.skeleton)
    j2, _ = keypoints_to_joints(rows, sk2)
    for n in OFFICIAL_JOINT_NAMES:
        np.testing.assert_array_equal(j1[hm.skeleton.index(n)], j2[sk2.index(n)])


def test_listed_points_are_valid_unlisted_are_not(tmp_path):
    sk = toy_hand(50).skeleton
    p = tmp_path / "keypoints0002.pts"
    p.write_text("0 1 2 3 0.0 0\n20 4 5 6 0.7 3\n")      # thumb tip with score 0, the wrist
    rows = read_keypoints(p)
    assert np.isnan(rows[5]).all()
    j, valid = keypoints_to_joints(rows, sk)
    assert valid[sk.index("thumb_null")] == 1 and valid[sk.index("wrist")] == 1 and valid.sum() == 2
    np.testing.assert_array_equal(j[sk.index("wrist")], [4, 5, 6])
    assert np.isfinite(j).all()
    _, valid = keypoints_to_joints(rows, sk, min_score=0.5)
    assert valid[sk.index("thumb_null")] == 0 and valid.sum() == 1


def test_keypoint_file_with_wrong_columns_names_line(tmp_path):
    p = tmp_path / "keypoints0001.pts"
    p.write_text("0 1 2 3 1 4\n1 1 2 3 1\n")
    with pytest.raises(KeypointFileError, match=r"keypoints0001.pts:2: expected 6 columns"):
        read_keypoints(p)
    p.write_text("0 1 2 3 1 4\n99 1 2 3 1 4\n")
    with pytest.raises(KeypointFileError, match=r":2: index 99 out of range"):
        read_keypoints(p)
    p.write_text("0 1 2 x 1 4\n")
    with pytest.raises(KeypointFileError, match=r":1: expected numbers"):
        read_keypoints(p)
