"""ModelConfig's training options (corrective basis, skeleton corrective mode, pose gauge, pose kind),
HandPose.offsets, rest_pose and root_from_joints, against explicit formulas written here."""
import numpy as np
import pytest
import torch
from toyhand import toy_hand

from dhmlib.hand.kinematics import rigid_transform_matrix
from dhmlib.hand.layer import HandLayer
from dhmlib.mesh.normals import vertex_normals
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.snapshot import SnapshotError, model_from_snapshot, save_snapshot


@pytest.fixture(scope="module")
def hand():
    return toy_hand(3000, seed=1)


def random_model(hand, dtype=torch.float32, **kw):
    """Non-zero correctives: every Linear of the correctives random (biases too)."""
    torch.manual_seed(0)
    m = DeepHandMesh(hand, ModelConfig(backbone=18, **kw))
    for fc in (m.skin_refine_net.fc_pose, m.skin_refine_net.fc_id, m.skeleton_refine_net.fc_skeleton):
        for layer in (fc[0], fc[2]):
            torch.nn.init.normal_(layer.weight, std=0.05)
            torch.nn.init.normal_(layer.bias, std=0.5)
    return m.to(dtype)


def mlp(fc, x):
    """The two-layer MLP written out: W₂ relu(W₁ x + b₁) + b₂."""
    h = torch.relu(x @ fc[0].weight.T + fc[0].bias)
    return h @ fc[2].weight.T + fc[2].bias


def raw_outputs(m, euler):
    """(B,V,3) pose, (V,3) identity, (J,3) skeleton network outputs before any option."""
    V, J = m.hand.num_vertices, m.hand.num_joints
    e = (euler * m.hand.dof_mask.to(euler.dtype)).reshape(euler.shape[0], -1)
    return (mlp(m.skin_refine_net.fc_pose, e).view(-1, V, 3), mlp(m.skin_refine_net.fc_id, m.id_code).view(V, 3),
            mlp(m.skeleton_refine_net.fc_skeleton, m.id_code).view(J, 3))


def ref_normals(hand):
    v = torch.tensor(hand.vertices, dtype=torch.float64)[None]
    return vertex_normals(v, torch.tensor(hand.faces))[0]


def project(x, n):
    return (x * n).sum(-1, keepdim=True) * n


def random_euler(B, J, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    return ((torch.rand(B, J, 3, generator=g, dtype=torch.float64) - 0.5) * 1.2).to(dtype)


def test_defaults_decode_as_the_original_formulas(hand):
    m = random_model(hand).eval()
    e = random_euler(3, hand.num_joints)
    with torch.no_grad():
        out = m.decode(e)
        pose, ident, skel = raw_outputs(m, e)
        ref = HandLayer(hand)(e, joint_offsets=skel, rest_vertices=m.hand.template + ident + pose)
    c = ModelConfig()
    assert (c.corrective_basis, c.skeleton_corrective_mode, c.pose_corrective_gauge) == ("free", "free", "none")
    assert m.template_normals is None and m.bone_directions is None   # nothing extra to hold
    assert (pose.abs().max() > 1) and (ident.abs().max() > 1) and (skel.abs().max() > 0.5)
    # float32, different summation order than the folded GEMM: a few ulps at ~100 mm
    assert (out.vertices - ref.vertices).abs().max() <= 2e-4
    assert (out.joints - ref.joints).abs().max() <= 2e-4
    assert out.offsets.shape == (3, hand.num_vertices, 3)
    # offsets = rest − template: the float32 rounding of ~100 mm rest positions (ulp 7.6e-6 mm), a few ulps
    assert (out.offsets - (ident + pose)).abs().max() <= 5e-5
    assert torch.isfinite(out.offsets).all()
    with torch.no_grad():
        assert m.decode(e, correctives=()).offsets is None
        assert m.decode(e, correctives=("skeleton",)).offsets is None
        only_id = m.decode(e, correctives=("identity",)).offsets
    assert only_id.shape == (3, hand.num_vertices, 3) and (only_id - ident).abs().max() <= 5e-5


def test_normal_basis_projects_skin_correctives_on_template_normals(hand):
    m = random_model(hand, torch.float64, corrective_basis="normal")
    n = ref_normals(hand)
    assert (m.template_normals - n).abs().max() <= 1e-12   # float64 after .to(float64), not float32-rounded
    referenced = torch.zeros(hand.num_vertices, dtype=torch.bool)
    referenced[torch.tensor(hand.faces).reshape(-1)] = True
    assert torch.allclose(m.template_normals[referenced].norm(dim=-1), torch.ones(1, dtype=torch.float64))
    e = random_euler(2, hand.num_joints, torch.float64)
    with torch.no_grad():
        pose, ident, skel = raw_outputs(m, e)
        p, i = m.pose_corrective(e), m.identity_corrective()
        out = m.decode(e)
        ref = HandLayer(hand, torch.float64)(e, joint_offsets=skel,
                                             rest_vertices=m.hand.template + project(ident, n) + project(pose, n))
    for x in (p, i):
        assert x.abs().max() > 0.1
        assert torch.linalg.cross(x, n.expand_as(x), dim=-1).abs().max() <= 1e-12   # parallel to the normals
    assert (p - project(pose, n)).abs().max() <= 1e-12 and (i - project(ident, n)).abs().max() <= 1e-12
    assert (out.vertices - ref.vertices).abs().max() <= 1e-10
    assert (out.offsets - (project(ident, n) + project(pose, n))).abs().max() <= 1e-10


def test_bone_length_mode_keeps_bone_directions(hand):
    m = random_model(hand, torch.float64, skeleton_corrective_mode="bone_length")
    t = torch.tensor(hand.local_pose)[:, :3, 3]
    d = t / t.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        _, _, skel = raw_outputs(m, random_euler(1, hand.num_joints, torch.float64))
        s = m.skeleton_corrective()
        out = m.decode(random_euler(1, hand.num_joints, torch.float64))
    nonroot = [j for j in range(hand.num_joints) if j != hand.skeleton.root]
    assert s[nonroot].abs().max() > 0.1
    assert torch.linalg.cross(s, d, dim=-1)[nonroot].abs().max() <= 1e-12
    assert (s - project(skel, d))[nonroot].abs().max() <= 1e-12
    # the refined bones point where the bind bones do, only their lengths changed
    G = m.hand.rest_transforms(s)[0]
    for j in nonroot:
        bone = G[j, :3, 3] - G[hand.skeleton.parents[j], :3, 3]
        bind = torch.tensor(hand.global_pose[j, :3, 3] - hand.global_pose[hand.skeleton.parents[j], :3, 3])
        assert torch.linalg.cross(bone, bind, dim=-1).norm() <= 1e-9 * bind.norm() ** 2
    assert torch.isfinite(out.vertices).all()


def test_zero_at_rest_gauge(hand):
    for basis in ("free", "normal"):
        m = random_model(hand, corrective_basis=basis, pose_corrective_gauge="zero_at_rest")
        free = random_model(hand, corrective_basis=basis)     # same weights, original gauge
        zero = torch.zeros(1, hand.num_joints, 3)
        e = random_euler(3, hand.num_joints)
        with torch.no_grad():
            assert free.pose_corrective(zero).abs().max() > 0.5       # the bias a gauge must remove
            assert torch.equal(m.pose_corrective(zero), torch.zeros(1, hand.num_vertices, 3))   # exactly
            rest = m.rest_pose()
            assert (rest.offsets[0] - m.identity_corrective()).abs().max() <= 5e-5
            expect = free.pose_corrective(e) - free.pose_corrective(zero)
            assert (m.pose_corrective(e) - expect).abs().max() <= 1e-5
            got = m.decode(e).offsets
            assert (got - (m.identity_corrective() + expect)).abs().max() <= 5e-5
    # the last bias is gauge: it gets no gradient, the others do
    m = random_model(hand, pose_corrective_gauge="zero_at_rest")
    m.decode(random_euler(2, hand.num_joints)).vertices.square().sum().backward()
    last = m.skin_refine_net.fc_pose[2]
    assert last.bias.grad is None or torch.equal(last.bias.grad, torch.zeros_like(last.bias))
    assert last.weight.grad.abs().max() > 0 and m.skin_refine_net.fc_pose[0].bias.grad.abs().max() > 0
    # ... and it is the model's one gauge-fixed parameter (the trainer freezes what this returns)
    assert [id(p) for p in m.gauge_fixed_parameters()] == [id(last.bias)]
    assert random_model(hand).gauge_fixed_parameters() == []
    linear = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="linear_rotmat",
                                            pose_corrective_gauge="zero_at_rest"))
    assert linear.gauge_fixed_parameters() == []


def test_rest_pose_is_the_refined_skeleton_at_zero_angles(hand):
    m = random_model(hand, torch.float64)
    with torch.no_grad():
        rest = m.rest_pose()
        _, ident, skel = raw_outputs(m, torch.zeros(1, hand.num_joints, 3, dtype=torch.float64))
    # the original's global_pose_refined: bind root, children G_parent @ L_refined, written as a loop
    L = torch.tensor(hand.local_pose).clone()
    L[:, :3, 3] += skel
    G = [None] * hand.num_joints
    root = hand.skeleton.root
    G[root] = torch.tensor(hand.global_pose[root])
    for j in sorted(range(hand.num_joints), key=lambda j: hand.skeleton.depth[j]):
        if j != root:
            G[j] = G[hand.skeleton.parents[j]] @ L[j]
    joints = torch.stack(G)[:, :3, 3]
    assert rest.joints.shape == (1, hand.num_joints, 3) and rest.vertices.shape == (1, hand.num_vertices, 3)
    assert (rest.joints[0] - joints).abs().max() <= 1e-9
    assert rest.offsets.shape == (1, hand.num_vertices, 3)
    assert (skel.abs().max() > 0.5) and (rest.joints[0] - torch.tensor(hand.bind_joints)).abs().max() > 0.1


def rigid(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.linalg.det(Q))
    return rigid_transform_matrix(Q[None], 100 * torch.randn(1, 3, generator=g, dtype=torch.float64)).to(dtype)


def test_root_from_joints_recovers_a_rigid_placement(hand):
    m = random_model(hand, torch.float64)
    J = hand.num_joints
    with torch.no_grad():
        G_rest = m.hand.rest_transforms(m.skeleton_corrective())[0]
        T = torch.cat([rigid(s) for s in range(3)])                       # (3, 4, 4) random rigid motions
        root_true = T @ G_rest[hand.skeleton.root]
        gt = m.decode(random_euler(3, J, torch.float64), root_transform=root_true).joints
        root = m.root_from_joints(gt)
    assert root.shape == (3, 4, 4)
    assert (root - root_true).abs().max() <= 1e-5
    # invalid joints are ignored: garbage there changes nothing
    valid = torch.ones(3, J, dtype=torch.bool)
    bad = [hand.skeleton.index("index1"), hand.skeleton.index("pinky1")]
    valid[0, bad[0]] = valid[1, bad[1]] = False
    junk = gt.clone()
    junk[0, bad[0]] += 40.0
    junk[1, bad[1]] = 0.0
    with torch.no_grad():
        assert (m.root_from_joints(junk) - root_true).abs().max() > 1.0          # junk matters when valid
        assert (m.root_from_joints(junk, valid) - root_true).abs().max() <= 1e-5
        assert (m.root_from_joints(junk, valid.double()) - root_true).abs().max() <= 1e-5
        # without the skeleton corrective the bind skeleton is aligned instead
        plain = m.root_from_joints(gt, correctives=("pose", "identity"))
    assert (plain - root_true).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"joints_gt: expected shape \(B, 22, 3\)"):
        m.root_from_joints(gt[:, :5])


def test_root_from_joints_matches_the_original_unweighted_alignment(hand):
    """Noisy targets: the original's procedure (rest refined alignment joints, Kabsch, then mat @ root)."""
    m = random_model(hand, torch.float64)
    g = torch.Generator().manual_seed(1)
    gt = torch.randn(2, hand.num_joints, 3, generator=g, dtype=torch.float64) * 3 + \
        torch.tensor(hand.bind_joints)[None]
    with torch.no_grad():
        got = m.root_from_joints(gt)
        G = m.hand.rest_transforms(m.skeleton_corrective())[0]
    align = hand.skeleton.alignment_joints()
    assert sorted(hand.skeleton.short_names[j] for j in align) == ["index1", "middle1", "pinky1", "ring1", "wrist"]
    for b in range(2):   # Kabsch by hand: SVD of the cross-covariance, reflection fixed
        A, B = G[align, :3, 3], gt[b, align]
        H = (A - A.mean(0)).T @ (B - B.mean(0))
        U, _, Vh = torch.linalg.svd(H)
        D = torch.diag(torch.tensor([1.0, 1.0, float(torch.sign(torch.linalg.det(Vh.T @ U.T)))], dtype=H.dtype))
        R = Vh.T @ D @ U.T
        t = B.mean(0) - R @ A.mean(0)
        expect = rigid_transform_matrix(R[None], t[None])[0] @ G[hand.skeleton.root]
        assert (got[b] - expect).abs().max() <= 1e-9


def test_root_from_joints_gradient_reaches_the_skeleton_corrective(hand):
    m = random_model(hand)
    J = hand.num_joints
    with torch.no_grad():
        gt = m.decode(random_euler(2, J), root_transform=rigid(3, torch.float32)).joints
        gt = gt + torch.randn(gt.shape, generator=torch.Generator().manual_seed(2))
    root = m.root_from_joints(gt, torch.ones(2, J))
    out = m.decode(random_euler(2, J), root_transform=root)
    (out.joints - gt).abs().mean().backward()
    w = m.skeleton_refine_net.fc_skeleton[2].weight.grad
    assert w is not None and torch.isfinite(w).all() and w.abs().max() > 0
    # the alignment alone (through the rest skeleton) carries gradient too
    m.zero_grad()
    m.root_from_joints(gt)[:, :3, 3].sum().backward()
    assert m.skeleton_refine_net.fc_skeleton[2].weight.grad.abs().max() > 0


def test_option_validation_and_snapshot_round_trip(hand, tmp_path):
    for field, allowed in (("corrective_basis", "'free', 'normal'"),
                           ("skeleton_corrective_mode", "'free', 'bone_length'"),
                           ("pose_corrective_gauge", "'none', 'zero_at_rest'"),
                           ("pose_corrective_kind", "'mlp', 'linear_rotmat', 'local'")):
        for bad in ("Normal", 1, None, True):
            with pytest.raises(ValueError, match=rf"ModelConfig\.{field}: expected one of {allowed}, got"):
                ModelConfig(**{field: bad})
    c = ModelConfig(backbone=18, corrective_basis="normal", skeleton_corrective_mode="bone_length",
                    pose_corrective_gauge="zero_at_rest")
    assert ModelConfig.from_dict(c.to_dict()) == c and type(ModelConfig(corrective_basis=np.str_("normal"))
                                                            .corrective_basis) is str
    m = random_model(hand, **{k: v for k, v in c.to_dict().items() if k != "backbone"}).eval()
    path = save_snapshot(tmp_path / "snapshot_3.pth.tar", m, epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["model_config"]["corrective_basis"] == "normal"
    assert set(raw["network"]) == {"module." + k for k in DeepHandMesh(hand, ModelConfig(backbone=18)).state_dict()}
    r = model_from_snapshot(path, hand).eval()
    assert r.config == m.config
    e = random_euler(2, hand.num_joints)
    with torch.no_grad():
        assert torch.equal(m.decode(e).vertices, r.decode(e).vertices)
    # an older dhmlib config without the new fields loads with the defaults
    old = {k: v for k, v in raw["model_config"].items()
           if k not in ("corrective_basis", "skeleton_corrective_mode", "pose_corrective_gauge")}
    torch.save({**raw, "model_config": old}, tmp_path / "snapshot_4.pth.tar")
    assert model_from_snapshot(tmp_path / "snapshot_4.pth.tar", hand).config == ModelConfig(backbone=18, seed=0)
    # a config from a newer version with a field we do not know is named, not ignored
    torch.save({**raw, "model_config": {**raw["model_config"], "future": 1}}, tmp_path / "snapshot_5.pth.tar")
    with pytest.raises(SnapshotError, match="model_config: .*unknown key 'future'"):
        model_from_snapshot(tmp_path / "snapshot_5.pth.tar", hand)
    # overrides switch the options of an official-shaped snapshot
    o = model_from_snapshot(path, hand, corrective_basis="free")
    assert o.config.corrective_basis == "free" and o.template_normals is None


def test_dtype_moves_reread_directions_exactly(hand):
    m = DeepHandMesh(hand, ModelConfig(backbone=18, corrective_basis="normal", skeleton_corrective_mode="bone_length"))
    assert m.template_normals.dtype == torch.float32
    m.double()
    assert (m.template_normals - ref_normals(hand)).abs().max() <= 1e-12
    t = torch.tensor(hand.local_pose)[:, :3, 3]
    nonroot = [j for j in range(hand.num_joints) if j != hand.skeleton.root]   # the toy root's is zero
    assert (m.bone_directions - t / t.norm(dim=-1, keepdim=True))[nonroot].abs().max() <= 1e-15
    assert torch.isfinite(m.bone_directions).all()


# ------------------------------------------------ pose_corrective_kind="linear_rotmat" (MANO-style)
def rot_ref(x, y, z):
    """Rz(z) @ Ry(y) @ Rx(x) from the elementary rotations, float64 numpy."""
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def linear_model(hand, dtype=torch.float64, std=0.3, **kw):
    """A linear_rotmat model with random blend-shape weights (the other correctives stay zero)."""
    torch.manual_seed(0)
    m = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="linear_rotmat", **kw)).to(dtype)
    with torch.no_grad():
        m.skin_refine_net.pose_blend_rotmat.weight.normal_(0, std)
    return m


def blend_loop(hand, W, euler):
    """Σ_j W_j · vec(R_j − I) written as loops over frames and joints (float64 numpy).

    The driving joints are the non-root joints with at least one Euler DoF, in joint order;
    masked axes are zero (as the kinematics applies them); W_j = the j-th block of 9 columns.
    """
    W, euler, mask = W.detach().numpy(), euler.detach().numpy(), np.asarray(hand.dof_mask)
    joints = [j for j in range(hand.num_joints) if j != hand.skeleton.root and mask[j].any()]
    out = np.zeros((euler.shape[0], W.shape[0]))
    for b in range(euler.shape[0]):
        for i, j in enumerate(joints):
            x, y, z = np.where(mask[j], euler[b, j], 0.0)
            out[b] += W[:, 9 * i:9 * i + 9] @ (rot_ref(x, y, z) - np.eye(3)).reshape(9)
    return torch.from_numpy(out).view(euler.shape[0], -1, 3)


def test_linear_rotmat_equals_the_per_joint_loop(hand):
    m = linear_model(hand)
    W = m.skin_refine_net.pose_blend_rotmat.weight
    # 16 of the 22 official joints drive it: not the root (global orientation) nor the 5 fixed _null ends
    assert W.shape == (3 * hand.num_vertices, 16 * 9) and m.skin_refine_net.pose_module is m.skin_refine_net.pose_blend_rotmat
    e = random_euler(3, hand.num_joints, torch.float64) * 3          # up to ±1.8 rad, every axis (masked ones too)
    ref = blend_loop(hand, W, e)
    with torch.no_grad():
        p = m.pose_corrective(e)
        out = m.decode(e)
        lbs = HandLayer(hand, torch.float64)(e, rest_vertices=m.hand.template + m.identity_corrective() + ref)
    assert ref.abs().max() > 1
    assert (p - ref).abs().max() <= 1e-10
    assert (out.offsets - (m.identity_corrective() + ref)).abs().max() <= 1e-10
    assert (out.vertices - lbs.vertices).abs().max() <= 1e-10
    # the state dict: the blend weights under their own key, no MLP pose corrective, the rest official
    keys = set(m.state_dict())
    official = set(DeepHandMesh(hand, ModelConfig(backbone=18)).state_dict())
    assert keys == {k for k in official if not k.startswith("skin_refine_net.fc_pose.")} | \
        {"skin_refine_net.pose_blend_rotmat.weight"}


def test_linear_rotmat_is_zero_at_rest_and_starts_at_zero(hand):
    zero = torch.zeros(2, hand.num_joints, 3, dtype=torch.float64)
    e = random_euler(2, hand.num_joints, torch.float64)
    for basis in ("free", "normal"):
        plain = None
        for gauge in ("none", "zero_at_rest"):             # the gauge is a no-op for this kind
            m = linear_model(hand, corrective_basis=basis, pose_corrective_gauge=gauge)
            with torch.no_grad():
                assert torch.equal(m.pose_corrective(zero), torch.zeros(2, hand.num_vertices, 3, dtype=torch.float64))
                assert torch.equal(m.decode(zero).vertices, m.decode(zero, correctives=("identity", "skeleton")).vertices)
                assert torch.equal(m.rest_pose().offsets[0], m.identity_corrective())
                p = m.pose_corrective(e)
            assert p.abs().max() > 0.5
            if plain is None:
                plain = p
            else:
                assert torch.equal(p, plain)
    fresh = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="linear_rotmat"))
    assert torch.equal(fresh.skin_refine_net.pose_blend_rotmat.weight, torch.zeros(3 * hand.num_vertices, 144))
    assert fresh.skin_refine_net.pose_blend_rotmat.bias is None
    with torch.no_grad():
        e = random_euler(2, hand.num_joints)
        assert torch.equal(fresh.decode(e).vertices, fresh.decode(e, correctives=("identity", "skeleton")).vertices)


def test_linear_rotmat_follows_the_normal_basis(hand):
    m = linear_model(hand, corrective_basis="normal")
    n = ref_normals(hand)
    e = random_euler(3, hand.num_joints, torch.float64) * 2
    ref = blend_loop(hand, m.skin_refine_net.pose_blend_rotmat.weight, e)
    with torch.no_grad():
        p = m.pose_corrective(e)
        off = m.decode(e).offsets
    assert p.abs().max() > 0.5
    assert torch.linalg.cross(p, n.expand_as(p), dim=-1).abs().max() <= 1e-12
    assert (p - project(ref, n)).abs().max() <= 1e-10
    assert (off - m.identity_corrective() - project(ref, n)).abs().max() <= 1e-10


def test_linear_rotmat_gradient_reaches_the_weights(hand):
    m = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="linear_rotmat",
                                       detach_pose_corrective_input=False)).double()
    e = random_euler(2, hand.num_joints, torch.float64).requires_grad_(True)
    target = torch.randn(2, hand.num_vertices, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (m.decode(e).vertices - target).square().sum().backward()
    W = m.skin_refine_net.pose_blend_rotmat.weight
    assert W.grad is not None and W.grad.abs().max() > 0
    # ∂L/∂W = Σ_b g_b ⊗ features_b, with g the gradient at the (un-skinned) rest offsets
    assert W.grad.shape == W.shape and torch.isfinite(W.grad).all()
    # columns of always-zero features (a 1-DoF joint's rotation axis row/column) get exactly no gradient
    feats = m.skin_refine_net.rotmat_features(e.detach() * m.hand.dof_mask.double())
    dead = (feats == 0).all(0)
    assert dead.any() and (W.grad[:, dead] == 0).all() and (W.grad[:, ~dead].abs().sum(0) > 0).all()
    # at the rest pose the weights get no gradient (R − I = 0): nothing can be learnt there
    m.zero_grad()
    (m.decode(torch.zeros_like(e)).vertices - target).square().sum().backward()
    assert W.grad is None or torch.equal(W.grad, torch.zeros_like(W))


def test_linear_rotmat_snapshot_round_trip(hand, tmp_path):
    m = linear_model(hand, torch.float32, corrective_basis="normal", pose_corrective_gauge="zero_at_rest")
    path = save_snapshot(tmp_path / "snapshot_1.pth.tar", m, epoch=1)
    raw = torch.load(path, weights_only=True)
    assert raw["model_config"]["pose_corrective_kind"] == "linear_rotmat"
    assert "module.skin_refine_net.pose_blend_rotmat.weight" in raw["network"]
    assert not any(".fc_pose." in k for k in raw["network"])
    r = model_from_snapshot(path, hand)
    assert r.config == m.config
    e = random_euler(2, hand.num_joints)
    with torch.no_grad():
        assert torch.equal(m.decode(e).vertices, r.decode(e).vertices)
    # a config that says linear_rotmat on a snapshot without the tensor: the key is named
    mlp_model = random_model(hand)
    mlp_path = save_snapshot(tmp_path / "snapshot_2.pth.tar", mlp_model, epoch=2)
    raw2 = torch.load(mlp_path, weights_only=True)
    torch.save({**raw2, "model_config": {**raw2["model_config"], "pose_corrective_kind": "linear_rotmat"}},
               tmp_path / "snapshot_3.pth.tar")
    with pytest.raises(SnapshotError, match=r"snapshot_3.pth.tar: missing tensor "
                                            r"'skin_refine_net.pose_blend_rotmat.weight' \(expected shape "
                                            r"\(9000, 144\)\): .*linear_rotmat.* holds the MLP pose corrective"):
        model_from_snapshot(tmp_path / "snapshot_3.pth.tar", hand)
    with pytest.raises(SnapshotError, match="missing tensor 'skin_refine_net.pose_blend_rotmat.weight'"):
        model_from_snapshot(mlp_path, hand, pose_corrective_kind="linear_rotmat")
    # and the other way: an mlp config on the linear snapshot names the missing MLP tensor
    torch.save({**raw, "model_config": {**raw["model_config"], "pose_corrective_kind": "mlp"}},
               tmp_path / "snapshot_4.pth.tar")
    with pytest.raises(SnapshotError, match=r"missing tensor 'skin_refine_net.fc_pose.0.weight'"):
        model_from_snapshot(tmp_path / "snapshot_4.pth.tar", hand)


def pre_option_pose_plus(fc_pose, euler, base, zero_at_rest, normals):
    """SkinRefineNet.pose_plus as it was before pose_corrective_kind existed (same ops, same order)."""
    from dhmlib.network.correctives import _BatchLastLinear

    first, relu, last = fc_pose
    hidden = relu(first(euler.reshape(euler.shape[0], -1)))
    if zero_at_rest:
        hidden, bias = hidden - torch.relu(first.bias), None
    else:
        bias = last.bias
    V = base.shape[0]
    if normals is None:
        b = base.reshape(-1) if bias is None else bias + base.reshape(-1)
        out = _BatchLastLinear.apply(hidden, last.weight, b).view(V, 3, -1)
    else:
        b = torch.zeros_like(last.bias) if bias is None else bias
        raw = _BatchLastLinear.apply(hidden, last.weight, b).view(V, 3, -1)
        n = normals.unsqueeze(-1)
        out = torch.addcmul(base.unsqueeze(-1), n, (raw * n).sum(1, keepdim=True))
    return out.permute(2, 0, 1)


@pytest.mark.parametrize("options", [{}, {"corrective_basis": "normal", "pose_corrective_gauge": "zero_at_rest"},
                                     {"pose_corrective_gauge": "zero_at_rest"}, {"corrective_basis": "normal"}])
def test_mlp_kind_decodes_bit_identically_to_before_the_option(hand, options):
    m = random_model(hand, **options)
    assert m.config == ModelConfig(backbone=18, pose_corrective_kind="mlp", **options)
    assert m.skin_refine_net.pose_module is m.skin_refine_net.fc_pose and not hasattr(m.skin_refine_net, "pose_blend_rotmat")
    e = random_euler(3, hand.num_joints)
    with torch.no_grad():
        out = m.decode(e)
        rest = m.hand.template + m.identity_corrective()
        pose_in = e * m.hand.dof_mask.to(e.dtype)
        before = pre_option_pose_plus(m.skin_refine_net.fc_pose, pose_in, rest,
                                      options.get("pose_corrective_gauge") == "zero_at_rest", m.template_normals)
        ref = m.hand(e, joint_offsets=m.skeleton_corrective(), rest_vertices=before)
    assert torch.equal(out.vertices, ref.vertices) and torch.equal(out.joints, ref.joints)
    # the same seed draws the same initial weights for every shared module in both kinds (a fair ablation)
    torch.manual_seed(0)
    a = DeepHandMesh(hand, ModelConfig(backbone=18, **options)).state_dict()
    torch.manual_seed(0)
    b = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="linear_rotmat", **options)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b if k != "skin_refine_net.pose_blend_rotmat.weight")
