"""Held-out frames (dhmlib.data.split) on a tiny virtual capture, with and without images/."""
from __future__ import annotations

import json
import shutil

import pytest

from dhmlib.data.dataset import DatasetError, DeepHandMeshDataset
from dhmlib.data.split import FrameSplit, SplitError, all_frames, sequence_frames, split_frames
from dhmlib.synth.capture import CaptureConfig, write_capture

# 16 frames over the 7 takes: 3,3,2,2,2,2,2 frames; the free take is 0005_RT_free
CFG = CaptureConfig(frames=16, cameras=2, vertices=1500, image_size=(48, 32), seed=1)
KW = dict(num_views=1, image_size=CFG.image_size, input_size=(16, 16), render_size=(16, 16))


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    write_capture(root, CFG, progress=False, log=None)
    return root


@pytest.fixture(scope="module")
def no_images(capture, tmp_path_factory):
    """The same capture without images/ (the public release's situation)."""
    root = tmp_path_factory.mktemp("split_noimg")
    for part in ("hand_model", "annotations"):
        shutil.copytree(capture / part, root / part)
    return root


def _takes(root):
    params = json.loads((root / "annotations/synthetic/subject_1/params.json").read_text())
    return {s["name"]: list(range(s["first_frame"], s["last_frame"] + 1)) for s in params["sequences"]}


def _check_partition(split, frames):
    assert set(split.train).isdisjoint(split.test)
    assert sorted(split.train + split.test) == sorted(frames)
    assert split.train and split.test


def test_default_holds_out_the_free_take(capture, no_images):
    takes = _takes(capture)
    free = [n for n in takes if n.endswith("_free")]
    assert free == ["0005_RT_free"]
    frames = all_frames(capture)
    assert frames == list(range(16))
    for root in (capture, no_images):
        s = split_frames(root)
        assert s.test == tuple(takes["0005_RT_free"]) and s.spec == "seq:0005_RT_free"
        _check_partition(s, frames)
        assert "0005_RT_free" in s.rule
        assert split_frames(root) == s                                   # deterministic
        assert FrameSplit.from_dict(json.loads(json.dumps(s.to_dict()))) == s
        assert split_frames(root, held_out=s.spec) == s                  # the spec reproduces it
    # the sequence map from images/ and from the synthetic params agree
    assert sequence_frames(capture)[0] == sequence_frames(no_images)[0] == takes


def test_seq_frames_and_last_rules(capture):
    takes = _takes(capture)
    s = split_frames(capture, held_out="seq:0000_RT_fist, *_pinch")
    assert s.test == tuple(takes["0000_RT_fist"] + takes["0002_RT_pinch"])
    _check_partition(s, range(16))
    s = split_frames(capture, held_out="frames:2-4,9,12-13")
    assert s.test == (2, 3, 4, 9, 12, 13)
    _check_partition(s, range(16))
    s = split_frames(capture, held_out="frames:14-99")                 # clipped to the frames there
    assert s.test == (14, 15)
    assert split_frames(capture, held_out="last:10%").test == (14, 15)  # ceil(1.6) = 2
    assert split_frames(capture, held_out="last:25%").test == (12, 13, 14, 15)
    assert split_frames(capture, held_out="last:3").test == (13, 14, 15)


def test_default_without_a_free_take_is_the_last_tenth(capture, tmp_path):
    root = tmp_path / "real"
    shutil.copytree(capture / "annotations" / "keypoints", root / "annotations" / "keypoints")
    shutil.copytree(capture / "annotations" / "depthmaps", root / "annotations" / "depthmaps")
    shutil.rmtree(root / "annotations" / "depthmaps" / "subject_1" / "000007")   # a frame without depth
    s = split_frames(root)
    assert s.spec == "last:10%" and s.test == (14, 15) and 7 not in s.train
    _check_partition(s, [f for f in range(16) if f != 7])
    with pytest.raises(SplitError, match=r"images.*no images folder.*frame ranges"):
        split_frames(root, held_out="seq:0005_RT_free")


@pytest.mark.parametrize("rule, message", [
    ("seq:0009_RT_nope", r"no sequence matches '0009_RT_nope'.*0000_RT_fist, 0001_RT_point"),
    ("frames:100-200", r"no frame .* is held out"),
    ("frames:0-15", r"every frame \(16\) is held out"),
    ("last:100%", r"every frame"),
    ("last:0%", r"expected 'last:P%'"),
    ("frames:3-x", r"'3-x' is not a frame or range"),
    ("frames:5-3", r"ends before it starts"),
    ("random:10%", r"unknown rule 'random'"),
    ("0005_RT_free", r"expected 'seq:NAME"),
])
def test_errors(capture, rule, message):
    with pytest.raises(SplitError, match=message):
        split_frames(capture, held_out=rule)


def test_dataset_keeps_only_the_split_frames(capture, no_images):
    s = split_frames(capture)
    for root, images in ((capture, True), (no_images, False)):
        test = DeepHandMeshDataset.from_split(root, s, "test", **KW)
        assert test.has_images is images
        assert test.frames == list(s.test)
        assert {test[i].frame for i in range(len(test))} == set(s.test)
        train = DeepHandMeshDataset(root, **KW, frames=s.train)
        kept = [f for f in s.train if images is False or f not in _takes(capture)["0006_RT_ROM_fingers"]]
        assert train.frames == kept                                    # with images ROM frames are dropped
        assert set(train.frames).isdisjoint(test.frames)
        assert DeepHandMeshDataset(root, **KW, frames=s.train, max_frames=2).frames == kept[:2]
    assert DeepHandMeshDataset.from_split(no_images, None, "test", **KW).frames == list(s.test)
    with pytest.raises(DatasetError, match=r"keypoints.*none of the 2 requested frames \(500, 501\)"):
        DeepHandMeshDataset(no_images, **KW, frames=[500, 501])
