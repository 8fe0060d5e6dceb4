"""Official snapshot layout: export → import, DataParallel keys, loss buffers, errors."""
import pickle

import pytest
import torch
from toyhand import toy_hand

from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.snapshot import SnapshotError, load_snapshot, model_from_snapshot, save_snapshot


@pytest.fixture(scope="module")
def hand():
    return toy_hand(1500, seed=2)


def trained_like(hand, depth=18, **config):
    torch.manual_seed(3)
    m = DeepHandMesh(hand, ModelConfig(backbone=depth, seed=7, **config))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m.eval()


def test_export_import_gives_identical_decode(hand, tmp_path):
    m = trained_like(hand)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    path = save_snapshot(tmp_path / "snapshot_3.pth.tar", m, epoch=3, optimizer=opt)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"epoch", "network", "optimizer"} and raw["epoch"] == 3
    assert all(k.startswith("module.") for k in raw["network"])
    assert "module.skin_refine_net.fc_pose.2.weight" in raw["network"] and "module.id_code" in raw["network"]
    r = model_from_snapshot(path, hand).eval()
    assert r.config == m.config == ModelConfig(backbone=18, seed=7)
    e = (torch.rand(3, hand.num_joints, 3) - 0.5)
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.decode(e).vertices, r.decode(e).vertices)
        assert torch.equal(m(img).vertices, r(img).vertices)
    assert torch.equal(m.id_code, r.id_code)


def test_official_style_snapshot_with_loss_buffers_loads(hand, tmp_path):
    m = trained_like(hand, depth=50)
    net = {"module." + k: v for k, v in m.state_dict().items()}
    # what the original training code also keeps in its DataParallel state dict
    net["module.depthmap_loss.dummy"] = torch.zeros(3)
    net["module.penetration_loss.bone_radius"] = torch.ones(20)
    # PoseNet with one output per joint axis (J·3 rows): reduced to the skeleton's DoF rows
    w, b = net["module.pose_net.fc.2.weight"], net["module.pose_net.fc.2.bias"]
    full_w = torch.zeros(hand.num_joints * 3, w.shape[1])
    full_b = torch.zeros(hand.num_joints * 3)
    full_w[m.pose_net.dof_index], full_b[m.pose_net.dof_index] = w, b
    net["module.pose_net.fc.2.weight"], net["module.pose_net.fc.2.bias"] = full_w, full_b
    torch.save({"epoch": 34, "network": net, "optimizer": {}}, tmp_path / "snapshot_34.pth.tar")
    r = DeepHandMesh(hand, ModelConfig(backbone=50, seed=99))
    info = load_snapshot(r, tmp_path / "snapshot_34.pth.tar")
    assert info.epoch == 34
    assert sorted(info.ignored_keys) == ["depthmap_loss.dummy", "penetration_loss.bone_radius"]
    assert info.adapted_keys == ["pose_net.fc.2.weight", "pose_net.fc.2.bias"]
    img = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.eval()(img).vertices, r.eval()(img).vertices)


def test_wrong_vertex_count_names_tensor_and_shapes(hand, tmp_path):
    m = trained_like(hand)
    save_snapshot(tmp_path / "s.pth.tar", m, epoch=0)
    other = DeepHandMesh(toy_hand(1000), ModelConfig(backbone=18))
    with pytest.raises(SnapshotError) as exc:
        load_snapshot(other, tmp_path / "s.pth.tar")
    msg = str(exc.value)
    assert "s.pth.tar" in msg and "skin_refine_net.fc_pose.2.weight" in msg
    assert "(4500, 256)" in msg and "(3000, 256)" in msg and "1500-vertex" in msg


def test_missing_key_is_named(hand, tmp_path):
    m = trained_like(hand)
    net = {"module." + k: v for k, v in m.state_dict().items() if "fc_id.0.bias" not in k}
    torch.save({"epoch": 1, "network": net}, tmp_path / "s.pth.tar")
    with pytest.raises(SnapshotError, match=r"missing tensor 'skin_refine_net.fc_id.0.bias'"):
        load_snapshot(DeepHandMesh(hand, ModelConfig(backbone=18)), tmp_path / "s.pth.tar")


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def _refused(path, hand):
    with pytest.raises(SnapshotError) as exc:
        load_snapshot(DeepHandMesh(hand, ModelConfig(backbone=18)), path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg, msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__   # PyTorch's advice not chained
    return msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("form", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_snapshot_with_code_is_refused(hand, tmp_path, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth.tar"
    ckpt = {"epoch": 0, "network": {}, "x": _Payload()}
    if form == "torch.save":
        torch.save(ckpt, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(ckpt, fh, protocol=int(form[-1]))
    msg = _refused(path, hand)
    assert "refused: unpickling it would call posix.system" in msg and "nothing was run" in msg
    assert not (tmp_path / "PWNED").exists()
    # control: the same file without the payload is read (so the refusal is the payload's doing)
    torch.save({"epoch": 0, "network": {}, "x": ["touch PWNED"]}, path)
    from dhmlib.network.snapshot import read_snapshot
    assert read_snapshot(path)["x"] == ["touch PWNED"]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "text"])
def test_corrupt_snapshot_says_unreadable(hand, tmp_path, damage):
    good = save_snapshot(tmp_path / "good.pth.tar", trained_like(hand), epoch=1)
    data = good.read_bytes()
    path = tmp_path / "snapshot_1.pth.tar"
    path.write_bytes({"truncated": data[:len(data) // 2],
                      "random bytes": torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                    generator=torch.Generator().manual_seed(0)).numpy().tobytes(),
                      "empty": b"",
                      "text": b"not a snapshot\n"}[damage])
    msg = _refused(path, hand)
    assert "unreadable: the file is corrupt or truncated, or not a PyTorch snapshot" in msg, msg
    assert "would call" not in msg


def test_config_round_trip_through_a_snapshot(hand, tmp_path):
    m = trained_like(hand, id_dim=16, pose_corrective=False, detach_pose_corrective_input=False)
    path = save_snapshot(tmp_path / "snapshot_2.pth.tar", m, epoch=2)
    raw = torch.load(path, weights_only=True)                   # plain dict, weights-only loadable
    assert raw["model_config"] == m.config.to_dict()
    assert raw["model_config"] == {"backbone": 18, "id_dim": 16, "pose_corrective": False, "id_corrective": True,
                                   "skeleton_corrective": True, "detach_pose_corrective_input": False, "seed": 7,
                                   "corrective_basis": "free", "skeleton_corrective_mode": "free",
                                   "pose_corrective_gauge": "none", "pose_corrective_kind": "mlp", "linear_init": "pytorch"}
    assert set(raw) == {"epoch", "network", "optimizer", "model_config", "hand_model", "code_version"}
    assert all(k.startswith("module.") for k in raw["network"])   # the official keys are untouched
    r = model_from_snapshot(path, hand).eval()
    assert r.config == m.config
    e = (torch.rand(3, hand.num_joints, 3) - 0.5)
    with torch.no_grad():
        assert torch.equal(m.decode(e).vertices, r.decode(e).vertices)
        # the pose corrective is off by config, so the result differs from the all-on decode
        all_on = r.decode(e, correctives=("pose", "identity", "skeleton")).vertices
        assert (r.decode(e).vertices - all_on).abs().max() > 0
    # overrides replace config fields
    o = model_from_snapshot(path, hand, pose_corrective=True)
    assert o.config == m.config.replace(pose_corrective=True)
    with pytest.raises(ValueError, match="unknown key 'use_pose_corrective'"):
        model_from_snapshot(path, hand, use_pose_corrective=True)
    with pytest.raises(SnapshotError, match=r"snapshot_2.pth.tar: override: backbone=50, but the snapshot's tensors"):
        model_from_snapshot(path, hand, backbone=50)


def test_official_snapshot_without_config_is_shape_guessed(hand, tmp_path):
    m = trained_like(hand, depth=34, id_dim=20)
    save_snapshot(tmp_path / "ours.pth.tar", m, epoch=5)
    raw = torch.load(tmp_path / "ours.pth.tar", weights_only=True)
    del raw["model_config"]
    torch.save(raw, tmp_path / "snapshot_5.pth.tar")
    r = model_from_snapshot(tmp_path / "snapshot_5.pth.tar", hand)
    assert r.config == ModelConfig(backbone=34, id_dim=20)         # switches take their defaults
    e = (torch.rand(2, hand.num_joints, 3) - 0.5)
    with torch.no_grad():
        assert torch.equal(m.decode(e).vertices, r.decode(e).vertices)


@pytest.mark.parametrize("field,value,says", [
    ("backbone", 50, "model_config: backbone=50, but the snapshot's tensors are a ResNet-18"),
    ("id_dim", 8, "model_config: id_dim=8, but the snapshot's 'id_code' has 32 entries"),
    ("pose_correctve", True, "model_config: ModelConfig.from_dict: unknown key 'pose_correctve'"),
    ("backbone", 101, "model_config: ModelConfig.backbone: expected a ResNet depth"),
])
def test_config_contradicting_the_tensors_is_named(hand, tmp_path, field, value, says):
    save_snapshot(tmp_path / "ours.pth.tar", trained_like(hand), epoch=0)
    raw = torch.load(tmp_path / "ours.pth.tar", weights_only=True)
    raw["model_config"][field] = value
    torch.save(raw, tmp_path / "bad.pth.tar")
    with pytest.raises(SnapshotError) as exc:
        model_from_snapshot(tmp_path / "bad.pth.tar", hand)
    assert str(exc.value).startswith(str(tmp_path / "bad.pth.tar") + ": ") and says in str(exc.value)


def test_save_refuses_extra_keys_that_replace_its_own(hand, tmp_path):
    m = trained_like(hand)
    for key in ("network", "model_config"):          # epoch and optimizer are save_snapshot's own arguments
        with pytest.raises(ValueError, match=f"extra key '{key}'"):
            save_snapshot(tmp_path / "s.pth.tar", m, epoch=0, **{key: 1})
    path = save_snapshot(tmp_path / "s.pth.tar", m, epoch=0, note="hello")
    assert torch.load(path, weights_only=True)["note"] == "hello"
    assert load_snapshot(m, path).extra["note"] == "hello"


def test_not_a_snapshot(hand, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(SnapshotError, match="expected a dict with key 'network'"):
        load_snapshot(DeepHandMesh(hand, ModelConfig(backbone=18)), tmp_path / "x.pth")
