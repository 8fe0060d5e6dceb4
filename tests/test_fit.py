"""dhmlib.network.fit: pose fitting with a frozen decoder, on targets the model itself generated."""
import numpy as np
import pytest
import torch

from dhmlib.hand.anatomy import joint_limits_deg, random_plausible_pose
from dhmlib.hand.kinematics import euler_to_matrix, rigid_transform_matrix
from dhmlib.metrics.errors import depth_error
from dhmlib.network.fit import axis_angle_to_matrix, fit_pose, limit_prior
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.render import render_depth, ring_cameras
from dhmlib.synth import build_procedural_hand


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DeepHandMesh(build_procedural_hand(1500, seed=0), ModelConfig(backbone=18))
    with torch.no_grad():  # non-zero correctives, so the fit sees more than plain LBS
        for p in m.skin_refine_net.fc_pose[2].parameters():
            p.normal_(0, 0.01)
        for p in m.skin_refine_net.fc_id[2].parameters():
            p.normal_(0, 0.01)
        for p in m.skeleton_refine_net.fc_skeleton[2].parameters():
            p.normal_(0, 0.05)
    return m


def random_targets(model, B, seed):
    rng = np.random.default_rng(seed)
    euler = torch.tensor(random_plausible_pose(model.hand.skeleton, rng, B), dtype=torch.float32)
    R = euler_to_matrix(torch.tensor(rng.uniform(-np.pi, np.pi, (B, 3)), dtype=torch.float32))
    root = rigid_transform_matrix(R, torch.tensor(rng.normal(0, 100, (B, 3)), dtype=torch.float32))
    with torch.no_grad():
        return model.decode(euler, root), root


def test_axis_angle_matches_euler_rotation():
    w = torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, 0.0], [1e-6, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    R = axis_angle_to_matrix(w)
    ref = euler_to_matrix(torch.tensor([[0, 0, 0.3], [0, 0, 0], [1e-6, 0, 0]], dtype=torch.float64))
    assert torch.allclose(R, ref, atol=1e-12)
    R.sum().backward()
    assert torch.isfinite(w.grad).all()


def test_limit_prior_zero_inside_positive_outside(model):
    sk = model.hand.skeleton
    lim = torch.as_tensor(np.deg2rad(joint_limits_deg(sk)))
    lo, hi = lim[..., 0], lim[..., 1]
    mask = model.hand.dof_mask
    inside = torch.tensor(random_plausible_pose(sk, np.random.default_rng(0), 2))
    assert limit_prior(inside, lo, hi, mask).tolist() == [0.0, 0.0]
    out = inside.clone()
    j = sk.index("index2")
    out[0, j, 2] = hi[j, 2] + 0.1
    assert limit_prior(out, lo, hi, mask)[0].item() == pytest.approx(0.01 / int(mask.sum()))


def test_root_init_is_kabsch_of_the_alignment_joints(model):
    """A rigidly moved rest pose is matched by the initial root alone (no step)."""
    target, root = random_targets(model, 2, seed=5)
    with torch.no_grad():
        rest = model.decode(torch.zeros(2, model.hand.num_joints, 3), root)
    res = fit_pose(model, joints=rest.joints, steps=0)
    assert (res.joints - rest.joints).norm(dim=-1).max().item() < 1e-3
    assert torch.allclose(res.root, root, atol=1e-4)


def test_fit_joints_recovers_pose_and_joints(model):
    target, root = random_targets(model, 3, seed=1)
    res = fit_pose(model, joints=target.joints, steps=600, lr=0.05)
    err = (res.joints - target.joints).norm(dim=-1)
    assert err.max().item() < 0.5                                          # mm
    with torch.no_grad():
        again = model.decode(res.euler, res.root)
    assert torch.allclose(again.vertices, res.vertices, atol=1e-4)        # the result decodes to itself
    # angles: the joints fix every finger's flexion; the thumb base's twist (thumb0/thumb1 x) is nearly
    # unobservable from joints alone, so it is held to a looser bound
    sk = model.hand.skeleton
    diff = (res.euler - target.euler).abs().rad2deg()
    thumb = [sk.index(n) for n in ("thumb0", "thumb1")]
    others = [j for j in range(sk.num_joints) if j not in thumb]
    assert diff[:, others].max().item() < 3.0
    assert diff[:, thumb].max().item() < 20.0
    assert (res.root[:, :3, 3] - root[:, :3, 3]).norm(dim=-1).max().item() < 1.0
    assert res.history["joint"][-1] < 0.05 * res.history["joint"][0]


def test_fit_leaves_the_model_unchanged_and_is_deterministic(model):
    target, _ = random_targets(model, 2, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.skin_refine_net.fc_id[0].weight.requires_grad_(False)            # a mixed state to restore
    flags = [p.requires_grad for p in model.parameters()]
    a = fit_pose(model, joints=target.joints, steps=30)
    b = fit_pose(model, joints=target.joints, steps=30)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in model.parameters()] == flags
    model.skin_refine_net.fc_id[0].weight.requires_grad_(True)
    assert torch.equal(a.euler, b.euler) and torch.equal(a.root, b.root)


def test_batched_fit_equals_per_frame_fits(model):
    target, _ = random_targets(model, 3, seed=3)
    valid = torch.ones(3, model.hand.num_joints)
    valid[1, model.hand.skeleton.index("thumb0")] = 0
    both = fit_pose(model, joints=target.joints, joint_valid=valid, steps=100)
    for b in range(3):
        one = fit_pose(model, joints=target.joints[b:b + 1], joint_valid=valid[b:b + 1], steps=100)
        assert torch.allclose(both.euler[b], one.euler[0], atol=1e-4)
        assert torch.allclose(both.joints[b], one.joints[0], atol=1e-3)
        assert torch.allclose(both.final["joint"][b], one.final["joint"][0], atol=1e-5)


@pytest.mark.slow
def test_depth_only_fit_reduces_the_depth_error(model):
    """Two 48×48 views of a known pose; start from the pose disturbed by N(0, 0.15 rad) per DoF."""
    rng = np.random.default_rng(0)
    euler = torch.tensor(random_plausible_pose(model.hand.skeleton, rng, 1), dtype=torch.float32)
    faces = model.hand.faces
    with torch.no_grad():
        true = model.decode(euler)
    size = (48, 48)
    cams = ring_cameras(true.vertices.mean((0, 1)), 2, distance=500.0, focal=120.0, image_size=size,
                        elevations=(30.0, -30.0))
    target = render_depth(true.vertices, faces, cams, size=size)
    init = euler + torch.tensor(rng.normal(0, 0.15, euler.shape), dtype=torch.float32)
    with torch.no_grad():
        start = depth_error(render_depth(model.decode(init).vertices, faces, cams, size=size), target)
    res = fit_pose(model, depth=target, cameras=cams, init=init, steps=25, lr=0.03, lr_end=0.003)
    end = depth_error(render_depth(res.vertices, faces, cams, size=size), target)
    assert end.item() < 0.5 * start.item()
    assert res.history["depth"][-1] < res.history["depth"][0]


def test_fit_needs_an_observation(model):
    with pytest.raises(ValueError, match="joints"):
        fit_pose(model)
    with pytest.raises(ValueError, match="cameras"):
        fit_pose(model, depth=torch.zeros(1, 2, 8, 8))
