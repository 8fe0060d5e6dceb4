"""Kinematics against independent references (scipy rotations, per-vertex loops)."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from toyhand import toy_hand

from dhmlib.hand.kinematics import (KinematicTree, euler_to_matrix, forward_kinematics, linear_blend_skinning,
                                    matrix_to_euler, rigid_align, skinning_transforms)


def test_euler_convention_matches_scipy():
    rng = np.random.default_rng(0)
    e = rng.uniform(-np.pi, np.pi, size=(100, 3))
    ours = euler_to_matrix(torch.tensor(e)).numpy()
    # R = Rz @ Ry @ Rx: intrinsic Z-Y-X with angles (z, y, x), i.e. extrinsic x-y-z
    ref = Rotation.from_euler("ZYX", e[:, ::-1]).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    ref2 = Rotation.from_euler("xyz", e).as_matrix()
    np.testing.assert_allclose(ours, ref2, atol=1e-12)


def test_positive_z_rotates_x_toward_y():
    R = euler_to_matrix(torch.tensor([0.0, 0.0, np.pi / 2], dtype=torch.float64))
    np.testing.assert_allclose(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), [0, 1, 0], atol=1e-12)


def test_matrix_to_euler_inverts():
    e = torch.tensor(np.random.default_rng(1).uniform(-1.4, 1.4, size=(50, 3)))
    np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(e)), e, atol=1e-10)


def _fk_reference(local, rot, parents):
    """One joint at a time, recursion-free but per joint: G = G_parent @ L @ R."""
    J = len(parents)
    G = [None] * J
    done = 0
    while done < J:
        for j in range(J):
            if G[j] is None and (parents[j] < 0 or G[parents[j]] is not None):
                R4 = np.eye(4)
                R4[:3, :3] = rot[j]
                G[j] = (local[j] if parents[j] < 0 else G[parents[j]] @ local[j]) @ R4
                done += 1
    return np.stack(G)


def test_forward_kinematics_equals_per_joint_reference():
    hm = toy_hand(100)
    tree = KinematicTree(hm.parents)
    rng = np.random.default_rng(2)
    e = rng.uniform(-1, 1, size=(4, hm.num_joints, 3))
    rot = euler_to_matrix(torch.tensor(e))
    G = forward_kinematics(rot, torch.tensor(hm.local_pose), tree).numpy()
    for b in range(4):
        np.testing.assert_allclose(G[b], _fk_reference(hm.local_pose, rot[b].numpy(), hm.parents), atol=1e-10)


def test_lbs_equals_per_vertex_reference():
    hm = toy_hand(300)
    tree = KinematicTree(hm.parents)
    rng = np.random.default_rng(3)
    e = torch.tensor(rng.uniform(-1, 1, size=(3, hm.num_joints, 3)))
    G = forward_kinematics(euler_to_matrix(e), torch.tensor(hm.local_pose), tree)
    A = skinning_transforms(G, torch.tensor(hm.global_pose_inv))
    rest = torch.tensor(hm.vertices) + torch.tensor(rng.normal(size=(3, hm.num_vertices, 3)))
    ours = linear_blend_skinning(rest, torch.tensor(hm.skinning_weights), A).numpy()
    Gn = G.numpy()
    for b in range(3):
        for v in range(0, hm.num_vertices, 7):
            acc = np.zeros(3)
            for j in range(hm.num_joints):
                M = Gn[b, j] @ hm.global_pose_inv[j]
                acc += hm.skinning_weights[v, j] * (M @ np.append(rest[b, v].numpy(), 1.0))[:3]
            np.testing.assert_allclose(ours[b, v], acc, atol=1e-9)


@pytest.mark.parametrize("reflect", [False, True])
def test_rigid_align_recovers_transform(reflect):
    rng = np.random.default_rng(4)
    B, N = 5, 12
    src = torch.tensor(rng.normal(size=(B, N, 3)) * 30)
    R = torch.tensor(Rotation.random(B, random_state=5).as_matrix())
    t = torch.tensor(rng.normal(size=(B, 3)) * 50)
    dst = src @ R.transpose(1, 2) + t[:, None]
    if reflect:
        # a mirrored target: the best proper rotation must still have det +1
        dst = dst * torch.tensor([-1.0, 1.0, 1.0])
    Re, te = rigid_align(src, dst)
    np.testing.assert_allclose(torch.linalg.det(Re).numpy(), 1.0, atol=1e-10)
    if not reflect:
        np.testing.assert_allclose(Re.numpy(), R.numpy(), atol=1e-10)
        np.testing.assert_allclose(te.numpy(), t.numpy(), atol=1e-8)
    else:
        # compare with a brute reference: the proper rotation minimizing the residual from scipy
        for b in range(B):
            ref, _ = Rotation.align_vectors((dst[b] - dst[b].mean(0)).numpy(), (src[b] - src[b].mean(0)).numpy())
            np.testing.assert_allclose(Re[b].numpy(), ref.as_matrix(), atol=1e-8)


def test_rigid_align_weights_and_float32():
    rng = np.random.default_rng(6)
    src = torch.tensor(rng.normal(size=(2, 6, 3)), dtype=torch.float32)
    R = torch.tensor(Rotation.random(2, random_state=7).as_matrix(), dtype=torch.float32)
    dst = src @ R.transpose(1, 2)
    dst[:, 0] += 100  # an outlier with zero weight must not matter
    w = torch.tensor([0.0, 1, 1, 1, 1, 1])
    Re, te = rigid_align(src, dst, w)
    assert Re.dtype == torch.float32
    np.testing.assert_allclose(Re.numpy(), R.numpy(), atol=1e-5)


@pytest.mark.parametrize("rest_batched", [True, False])
def test_lbs_gradcheck(rest_batched):
    """The hand-written backward of the blend-and-apply step against finite differences (float64)."""
    hm = toy_hand(40, seed=5)
    tree = KinematicTree(hm.parents)
    W = torch.tensor(hm.skinning_weights)
    inv = torch.tensor(hm.global_pose_inv)
    local = torch.tensor(hm.local_pose)
    rng = np.random.default_rng(8)
    e = torch.tensor(rng.uniform(-0.5, 0.5, size=(2, hm.num_joints, 3)), requires_grad=True)
    shape = (2, hm.num_vertices, 3) if rest_batched else (hm.num_vertices, 3)
    rest = (torch.tensor(hm.vertices) + torch.tensor(rng.normal(size=shape))).requires_grad_()

    def f(e, rest):
        A = skinning_transforms(forward_kinematics(euler_to_matrix(e), local, tree), inv)
        return linear_blend_skinning(rest, W, A)

    assert torch.autograd.gradcheck(f, (e, rest), eps=1e-6, atol=1e-5)
