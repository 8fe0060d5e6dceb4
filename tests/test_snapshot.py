"""Official snapshot layout: export → import, DataParallel keys, loss buffers, errors."""
import pickle

import pytest
import torch

from dhmlib.model import DeepHandMesh
from dhmlib.snapshot import SnapshotError, load_snapshot, model_from_snapshot, save_snapshot
from toyhand import toy_hand


@pytest.fixture(scope="module")
def hand():
    return toy_hand(1500, seed=2)


def trained_like(hand, depth=18):
    torch.manual_seed(3)
    m = DeepHandMesh(hand, backbone=depth, seed=7)
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
    assert r.backbone_depth == 18
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
    r = DeepHandMesh(hand, backbone=50, seed=99)
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
    other = DeepHandMesh(toy_hand(1000), backbone=18)
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
        load_snapshot(DeepHandMesh(hand, backbone=18), tmp_path / "s.pth.tar")


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_snapshot_with_code_is_refused(hand, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth.tar", "wb") as fh:
        pickle.dump({"epoch": 0, "network": {}, "x": _Payload()}, fh)
    with pytest.raises(SnapshotError, match="weights-only"):
        load_snapshot(DeepHandMesh(hand, backbone=18), tmp_path / "evil.pth.tar")
    assert not (tmp_path / "PWNED").exists()


def test_not_a_snapshot(hand, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(SnapshotError, match="expected a dict with key 'network'"):
        load_snapshot(DeepHandMesh(hand, backbone=18), tmp_path / "x.pth")
