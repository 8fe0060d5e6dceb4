"""Decoder and network: rest pose, locality, batching, gradients."""
import numpy as np
import pytest
import torch
from toyhand import toy_hand

from dhmlib.hand.layer import HandLayer
from dhmlib.network.model import CORRECTIVES, DeepHandMesh, ModelConfig


@pytest.fixture(scope="module")
def hand():
    return toy_hand(3000, seed=1)


NO_CORRECTIVES = dict(pose_corrective=False, id_corrective=False, skeleton_corrective=False)


def random_model(hand, **kw):
    """A model whose correctives are non-zero (random last layers); ``kw`` are ModelConfig fields."""
    torch.manual_seed(0)
    m = DeepHandMesh(hand, ModelConfig(backbone=18, **kw))
    for fc in (m.skin_refine_net.fc_pose, m.skin_refine_net.fc_id, m.skeleton_refine_net.fc_skeleton):
        torch.nn.init.normal_(fc[-1].weight, std=0.05)
        torch.nn.init.normal_(fc[-1].bias, std=0.5)
    return m


def float32_rounding_error(x) -> float:
    """Largest change (mm) of ``x`` rounded to float32: what a float32 leak costs at least."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x.astype(np.float32).astype(np.float64) - x).max())


def test_rest_pose_reproduces_template(hand):
    m = random_model(hand, **NO_CORRECTIVES)
    m.hand.double()
    out = m.decode(torch.zeros(1, hand.num_joints, 3, dtype=torch.float64))
    assert out.vertices.dtype == torch.float64
    # float64 end to end: agreement to ~6e-14 mm (measured).  A float32 step anywhere (e.g. the
    # template built in float32, then .double()) costs the template's float32 rounding, 7.6e-6 mm
    # here (measured: the decode error is then that value), far above the bound below.
    assert float32_rounding_error(hand.vertices) > 1e-6
    assert (out.vertices[0] - torch.tensor(hand.vertices)).abs().max() <= 1e-9
    assert (out.joints[0] - torch.tensor(hand.bind_joints)).abs().max() <= 1e-9
    # float32: its resolution at ~100 mm is ~4e-6 mm, the skinning sums add a few ulps
    m32 = random_model(hand, **NO_CORRECTIVES)
    out = m32.decode(torch.zeros(2, hand.num_joints, 3))
    assert (out.vertices - torch.tensor(hand.vertices, dtype=torch.float32)).abs().max() <= 1e-4


def test_correctives_change_the_rest_pose_when_on(hand):
    m = random_model(hand)
    e = torch.zeros(1, hand.num_joints, 3)
    out = m.decode(e)
    assert (out.vertices[0] - torch.tensor(hand.vertices, dtype=torch.float32)).abs().max() > 0.1
    out = m.decode(e, correctives=())
    assert (out.vertices[0] - torch.tensor(hand.vertices, dtype=torch.float32)).abs().max() <= 1e-4


def test_config_validation_and_dict_round_trip():
    c = ModelConfig(backbone=34, id_dim=16, pose_corrective=False, seed=None)
    d = c.to_dict()
    assert d == {"backbone": 34, "id_dim": 16, "pose_corrective": False, "id_corrective": True,
                 "skeleton_corrective": True, "detach_pose_corrective_input": True, "seed": None,
                 "corrective_basis": "free", "skeleton_corrective_mode": "free", "pose_corrective_gauge": "none",
                 "pose_corrective_kind": "mlp", "linear_init": "pytorch"}
    assert ModelConfig.from_dict(d) == c and ModelConfig.from_dict({}) == ModelConfig()
    assert c.correctives == {"identity", "skeleton"} and ModelConfig().correctives == set(CORRECTIVES)
    assert c.replace(backbone=18) == ModelConfig(backbone=18, id_dim=16, pose_corrective=False, seed=None)
    assert type(ModelConfig(backbone=np.int64(18)).backbone) is int          # stays JSON-able
    with pytest.raises(ValueError, match=r"backbone: expected a ResNet depth in \(18, 34, 50\), got 101"):
        ModelConfig(backbone=101)
    with pytest.raises(ValueError, match="backbone"):
        c.replace(backbone=True)
    with pytest.raises(ValueError, match="id_dim: expected a positive int, got 0"):
        ModelConfig(id_dim=0)
    with pytest.raises(ValueError, match="pose_corrective: expected True or False, got 'no'"):
        ModelConfig(pose_corrective="no")
    with pytest.raises(ValueError, match="unknown key 'use_pose_corrective'; known keys: backbone, id_dim"):
        ModelConfig.from_dict({"use_pose_corrective": False})
    with pytest.raises(ValueError, match="unknown key 'depth'"):
        c.replace(depth=50)
    with pytest.raises(Exception):
        c.backbone = 50                                                       # frozen
    with pytest.raises(TypeError, match="ModelConfig"):
        DeepHandMesh(toy_hand(300), 18)


def test_per_call_correctives_equal_the_config_built_model(hand):
    e = (torch.rand(3, hand.num_joints, 3, generator=torch.Generator().manual_seed(5)) - 0.5)
    full = random_model(hand)
    with torch.no_grad():
        plain = random_model(hand, **NO_CORRECTIVES)
        assert torch.equal(full.decode(e, correctives=()).vertices, plain.decode(e).vertices)
        for name, field in zip(CORRECTIVES, ("pose_corrective", "id_corrective", "skeleton_corrective")):
            others = [c for c in CORRECTIVES if c != name]
            ref = random_model(hand, **{field: False}).decode(e)
            got = full.decode(e, correctives=others)
            assert torch.equal(got.vertices, ref.vertices) and torch.equal(got.joints, ref.joints), name
            # and each corrective changes the result (non-zero weights): the comparison can fail
            assert (got.vertices - full.decode(e).vertices).abs().max() > 1e-3, name
        assert torch.equal(full.decode(e, correctives=list(CORRECTIVES)).vertices, full.decode(e).vertices)
        img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
        assert torch.equal(full.eval()(img, correctives=set()).vertices, plain.eval()(img).vertices)
    assert full.config == ModelConfig(backbone=18)                          # nothing was switched
    with pytest.raises(ValueError, match=r"unknown name 'bones'; expected names from \('pose', 'identity', 'skel"):
        full.decode(e, correctives=("pose", "bones"))
    with pytest.raises(ValueError, match="got the string 'pose'"):
        full.decode(e, correctives="pose")


@pytest.mark.parametrize("joint", ["index1", "middle2", "thumb0", "pinky3"])
def test_one_joint_moves_only_its_vertices(hand, joint):
    layer = HandLayer(hand, dtype=torch.float64)
    sk = hand.skeleton
    j = sk.index(joint)
    e = torch.zeros(1, hand.num_joints, 3, dtype=torch.float64)
    e[0, j, 2] = 0.8
    out = layer(e)
    moved = (out.vertices[0] - layer.template).norm(dim=-1) > 1e-9
    affected = [j] + sk.descendants(j)
    weighted = hand.skinning_weights[:, affected].sum(1) > 0
    assert moved.any()
    assert not (moved.numpy() & ~weighted).any(), "a vertex without weight on the joint's subtree moved"
    assert (moved.numpy() | ~weighted).all(), "a vertex weighted to the subtree did not move"
    # joints: only the subtree's joints below j move (j itself rotates in place)
    jm = (out.joints[0] - torch.tensor(hand.bind_joints)).norm(dim=-1) > 1e-9
    assert set(np.nonzero(jm.numpy())[0]) == set(sk.descendants(j))


def test_axes_without_dof_are_ignored(hand):
    layer = HandLayer(hand, dtype=torch.float64)
    e = torch.zeros(1, hand.num_joints, 3, dtype=torch.float64)
    e[0, hand.skeleton.index("index2"), 0] = 1.0  # index2 has only z
    e[0, hand.skeleton.root] = 1.0
    assert torch.equal(layer(e).vertices, layer(torch.zeros_like(e)).vertices)


def test_batched_decode_equals_single_decodes(hand):
    m = random_model(hand)
    torch.manual_seed(1)
    e = (torch.rand(64, hand.num_joints, 3) - 0.5) * 2
    with torch.no_grad():
        batched = m.decode(e)
        singles = [m.decode(e[i:i + 1]) for i in range(64)]
    np.testing.assert_allclose(batched.vertices.numpy(), torch.cat([s.vertices for s in singles]).numpy(),
                               atol=2e-4)
    np.testing.assert_allclose(batched.joints.numpy(), torch.cat([s.joints for s in singles]).numpy(), atol=1e-4)


def test_gradients_reach_euler_and_corrective_weights(hand):
    m = random_model(hand)
    e = (torch.rand(4, hand.num_joints, 3) - 0.5).requires_grad_()
    out = m.decode(e)
    (out.vertices.square().mean() + out.joints.square().mean()).backward()
    dof = m.hand.dof_mask
    assert e.grad[:, dof].abs().min() > 0, "every DoF gets a gradient"
    assert (e.grad[:, ~dof] == 0).all()
    for name in ("skin_refine_net.fc_pose.0.weight", "skin_refine_net.fc_pose.2.weight",
                 "skin_refine_net.fc_id.0.weight", "skin_refine_net.fc_id.2.weight",
                 "skeleton_refine_net.fc_skeleton.0.weight", "skeleton_refine_net.fc_skeleton.2.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_euler_gradient_matches_finite_differences(hand):
    layer = HandLayer(hand, dtype=torch.float64)
    e = (torch.rand(1, hand.num_joints, 3, dtype=torch.float64) - 0.5)
    e.requires_grad_()
    f = lambda x: layer(x).vertices[0, ::50].sum()
    f(e).backward()
    j = hand.skeleton.index("middle1")
    h = 1e-6
    for a in range(3):
        d = torch.zeros_like(e)
        d[0, j, a] = h
        fd = (f(e.detach() + d) - f(e.detach() - d)) / (2 * h)
        assert float(e.grad[0, j, a]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)


def test_forward_from_image(hand):
    m = random_model(hand).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 128, 128))
    assert out.euler.shape == (2, hand.num_joints, 3) and out.vertices.shape == (2, hand.num_vertices, 3)
    assert out.euler.abs().max() <= np.pi
    assert (out.euler[:, ~m.hand.dof_mask] == 0).all()


@pytest.mark.parametrize("change", ["optimizer_step", "fused_adam_step", "load_state_dict", "mode_switch", "to_dtype",
                                    "clear_cache"])
def test_inference_cache_is_dropped_by_every_weight_change(hand, change):
    """The identity-dependent correctives are cached in eval mode without grad; every operation that changes
    weights drops them (an edit by hand in place needs clear_cache()), so decode always sees current weights."""
    m = random_model(hand).eval()
    e = torch.zeros(1, hand.num_joints, 3)
    fresh = random_model(hand).eval()
    with torch.no_grad():
        fresh.skin_refine_net.fc_id[2].bias.add_(1.0)
    params = list(m.skin_refine_net.fc_id.parameters()) + list(m.skeleton_refine_net.parameters())
    with torch.no_grad():
        a = m.decode(e).vertices.clone()
        assert torch.equal(a, m.decode(e).vertices)              # served from the cache
    if change in ("optimizer_step", "fused_adam_step"):
        opt = torch.optim.Adam(params, lr=0.05, fused=change == "fused_adam_step")   # fused: no version bump
        for q in params:
            q.grad = torch.ones_like(q)
        opt.step()
    elif change == "load_state_dict":
        m.load_state_dict(fresh.state_dict())
    elif change == "mode_switch":
        with torch.no_grad():
            m.skin_refine_net.fc_id[2].bias.add_(1.0)
        m.train().eval()
    elif change == "to_dtype":
        m.double()
        e = e.double()
    else:
        with torch.no_grad():
            m.skin_refine_net.fc_id[2].bias.add_(1.0)
            assert torch.equal(a, m.decode(e).vertices)          # in place by hand: still the cached value
        m.clear_cache()
    with torch.no_grad():
        after = m.decode(e).vertices
        copy = random_model(hand).eval().to(after.dtype)
        copy.load_state_dict(m.state_dict())
        expected = copy.decode(e).vertices
    if change == "to_dtype":
        assert after.dtype == torch.float64 and (after - a.double()).abs().max() < 1e-3
    else:
        assert (after - a).abs().max() > 1e-3
    assert torch.equal(after, expected)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_backbone_names_follow_torchvision(hand, depth):
    m = DeepHandMesh(hand, ModelConfig(backbone=depth))
    keys = set(m.state_dict())
    assert "backbone_net.resnet.conv1.weight" in keys and "backbone_net.resnet.layer4.0.downsample.0.weight" in keys
    assert ("backbone_net.resnet.layer1.0.conv3.weight" in keys) == (depth == 50)
    n_blocks = {18: 2, 34: 3, 50: 3}[depth]
    assert f"backbone_net.resnet.layer1.{n_blocks - 1}.conv1.weight" in keys
    assert f"backbone_net.resnet.layer1.{n_blocks}.conv1.weight" not in keys
    assert m.backbone_net.fc[0].in_features == (2048 if depth == 50 else 512)
    # parameter count of torchvision's resnet trunks (fc excluded), a published fact
    trunk = sum(p.numel() for p in m.backbone_net.resnet.parameters())
    assert trunk == {18: 11176512, 34: 21284672, 50: 23508032}[depth]


def test_rest_pose_reproduces_the_procedural_template():
    from dhmlib.synth import build_procedural_hand

    hm = build_procedural_hand(3000, seed=4)
    m = DeepHandMesh(hm, ModelConfig(backbone=18, **NO_CORRECTIVES))
    m.hand.double()
    out = m.decode(torch.zeros(1, hm.num_joints, 3, dtype=torch.float64))
    # float64 throughout: ~6e-14 mm; a float32 leak costs the template's float32 rounding (7.6e-6 mm)
    assert float32_rounding_error(hm.vertices) > 1e-6
    assert (out.vertices[0] - torch.tensor(hm.vertices)).abs().max() <= 1e-9
    assert (out.joints[0] - torch.tensor(hm.bind_joints)).abs().max() <= 1e-9
    # the root frame of the original demo is the model frame for the procedural hand (wrist at identity)
    root = m.decode(torch.zeros(1, hm.num_joints, 3, dtype=torch.float64),
                    root_transform=torch.eye(4, dtype=torch.float64))
    assert torch.allclose(root.vertices, out.vertices)


@pytest.mark.parametrize("B", [1, 3])
def test_pose_corrective_layer_gradcheck(hand, B):
    from dhmlib.network.correctives import _BatchLastLinear

    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, 5, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_BatchLastLinear.apply, (x, W, b))
    torch.testing.assert_close(_BatchLastLinear.apply(x, W, b), torch.nn.functional.linear(x, W, b).t())


def test_pose_corrective_input_is_detached_as_in_the_official_code(hand):
    m = random_model(hand)
    e0 = (torch.rand(2, hand.num_joints, 3) - 0.5)
    w = torch.linspace(-1, 1, 2 * hand.num_vertices * 3).view(2, -1, 3)

    def grad(detach):
        torch.manual_seed(0)
        md = DeepHandMesh(hand, m.config.replace(detach_pose_corrective_input=detach))
        md.load_state_dict(m.state_dict())
        e = e0.clone().requires_grad_()
        (md.decode(e).vertices * w).sum().backward()
        return e.grad

    # reference: the corrective computed from constant angles, FK and skinning differentiated
    e = e0.clone().requires_grad_()
    rest = m.hand.template + m.identity_corrective() + m.pose_corrective(e0)
    (m.hand(e, joint_offsets=m.skeleton_corrective(), rest_vertices=rest).vertices * w).sum().backward()
    torch.testing.assert_close(grad(True), e.grad, rtol=1e-4, atol=1e-4)
    assert (grad(False) - e.grad).abs().max() > 1e-3


def test_root_translation_corrective_is_ignored(hand):
    layer = HandLayer(hand, dtype=torch.float64)
    e = torch.zeros(1, hand.num_joints, 3, dtype=torch.float64)
    off = torch.zeros(hand.num_joints, 3, dtype=torch.float64)
    off[hand.skeleton.root] = 25.0
    assert torch.equal(layer(e, joint_offsets=off).vertices, layer(e).vertices)
    off[hand.skeleton.index("index2")] = torch.tensor([5.0, 0, 0], dtype=torch.float64)
    moved = layer(e, joint_offsets=off).joints - layer(e).joints
    assert moved.norm(dim=-1).max() == pytest.approx(5.0)


def test_layer_and_model_move_to_float64_and_the_meta_device(hand):
    """``.to(dtype/device)`` moves every buffer the decode reads, including the tree's index tensors."""
    e32 = (torch.rand(2, hand.num_joints, 3, generator=torch.Generator().manual_seed(8)) - 0.5)
    layer = HandLayer(hand)
    ref = layer(e32)
    layer64 = HandLayer(hand).double()
    assert layer64.template.dtype == torch.float64 and layer64.faces.dtype == torch.long
    out = layer64(e32.double())
    assert out.vertices.dtype == out.joints.dtype == torch.float64
    # float32 tolerance: float32 rounding at ~100 mm, summed over FK and skinning (measured 4.0e-5 mm)
    torch.testing.assert_close(out.vertices, ref.vertices.double(), rtol=0, atol=1e-4)
    # .double() after a float32 build equals a float64 build (no float32 rounding carried over)
    assert torch.equal(out.vertices, HandLayer(hand, torch.float64)(e32.double()).vertices)

    m = random_model(hand).eval()
    with torch.no_grad():
        ref = m.decode(e32)
        m64 = random_model(hand).double().eval()
        out = m64.decode(e32.double())
    assert out.vertices.dtype == torch.float64 and out.vertices.shape == ref.vertices.shape
    torch.testing.assert_close(out.vertices, ref.vertices.double(), rtol=0, atol=2e-4)   # measured 4.5e-5 mm
    assert (ref.vertices - m.decode(e32, correctives=()).vertices).abs().max() > 0.1   # correctives active

    meta = HandLayer(hand).to("meta")
    out = meta(e32.to("meta"))
    assert out.vertices.device.type == "meta" and out.vertices.shape == (2, hand.num_vertices, 3)
    assert out.joints.shape == (2, hand.num_joints, 3) and out.transforms.shape == (2, hand.num_joints, 4, 4)
    mm = random_model(hand).to("meta").eval()
    with torch.no_grad():
        out = mm.decode(e32.to("meta"))
        img = mm(torch.rand(1, 3, 64, 64, device="meta"))
    assert out.vertices.device.type == "meta" and out.vertices.shape == (2, hand.num_vertices, 3)
    assert img.vertices.device.type == "meta" and img.euler.shape == (1, hand.num_joints, 3)
