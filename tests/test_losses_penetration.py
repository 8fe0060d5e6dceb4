"""Penetration loss: constructed cases and a slow loop reference of the original's semantics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toyhand import toy_hand

from dhmlib.hand.layer import HandLayer
from dhmlib.losses.penetration import PenetrationLoss, PenetrationTerms, penetration_loss

D = torch.float64


# ------------------------------------------------------------------ reference
def reference_terms(skeleton, segmentation, posed_joints, posed_vertices, rest_joints, rest_vertices,
                    K=10, non_rigid=("thumb1", "wrist"), stats=None):
    """The original's PenetLoss written out with Python loops over samples, pairs, spheres and vertices.

    posed (B, J, 3), (B, V, 3); rest (J, 3) or (B, J, 3), (V, 3) or (B, V, 3).  Returns (rigid, nonrigid),
    each a list of B scalars (differentiable w.r.t. the posed inputs).  ``stats`` (a dict) counts the
    non-rigid cases whose first penetrating sphere is not the first one and those whose mean is positive.
    """
    B = posed_joints.shape[0]
    names = skeleton.short_names

    def traverse(j, path, out):
        path = path + [j]
        kids = skeleton.children(j)
        if not kids:
            out.append(path)
        for c in kids:
            traverse(c, path, out)

    paths = []
    traverse(skeleton.root, [], paths)
    parts = []
    for p in paths:
        for i in range(len(p) - 1):
            parts.append((p[i], p[i + 1]))

    def point(J, a, b, k):
        return J[a] + (k / K) * (J[b] - J[a])

    def dist(x, y):
        return torch.sqrt(((x - y) ** 2).sum())

    rigid_out, nonrigid_out = [], []
    for s in range(B):
        rj = rest_joints if rest_joints.dim() == 2 else rest_joints[s]
        rv = rest_vertices if rest_vertices.dim() == 2 else rest_vertices[s]
        rv_list = [rv[v].detach() for v in range(rv.shape[0])]
        radii = {}
        for a, b in parts:
            for k in range(K):
                c = point(rj.detach(), a, b, k)
                radii[a, b, k] = min(float(dist(c, v)) for v in rv_list)

        def radius(a, b, k):
            return radii[a, b, k]

        J = posed_joints[s]
        rigid, cnt = 0.0, 0
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                (s1, e1), (s2, e2) = parts[i], parts[j]
                if s1 == s2 or s1 == e2 or e1 == s2:
                    continue
                acc = 0.0
                for k1 in range(K):
                    for k2 in range(K):
                        thr = radius(s1, e1, k1) + radius(s2, e2, k2)
                        acc = acc + torch.clamp(thr - dist(point(J, s1, e1, k1), point(J, s2, e2, k2)), min=0)
                rigid = rigid + acc / (K * K)
                cnt += 1
        rigid_out.append(torch.as_tensor(rigid / cnt, dtype=posed_joints.dtype))

        nonrigid, cnt = 0.0, 0
        for g in [skeleton.index(n) for n in non_rigid]:
            skin = [posed_vertices[s, v] for v in range(posed_vertices.shape[1]) if segmentation[v] == g]
            for p in paths:
                a, b = p[-2], p[-1]
                if "thumb" in names[a] or "thumb" in names[b]:
                    continue
                d = [min((dist(point(J, a, b, k), v) for v in skin), key=float) if skin else math.inf
                     for k in range(K)]
                r = [radius(a, b, k) for k in range(K)]
                hit = [k for k in range(K) if float(d[k]) < r[k]]
                if hit:
                    k0 = hit[0]
                    mean = sum(d[k] - r[k] for k in range(k0, K)) / (K - k0)
                    nonrigid = nonrigid + abs(mean)
                    if stats is not None:
                        stats["late_start"] += k0 > 0
                        stats["positive_mean"] += float(mean) > 0
                cnt += 1
        nonrigid_out.append(torch.as_tensor(nonrigid / cnt, dtype=posed_joints.dtype))
    return rigid_out, nonrigid_out


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def toy():
    hand = toy_hand(num_vertices=600, seed=3)
    layer = HandLayer(hand, D)
    rest = layer(torch.zeros(1, hand.num_joints if hasattr(hand, "num_joints") else 22, 3, dtype=D))
    return hand, layer, rest.joints[0], rest.vertices[0]


def _idx(hand, name):
    return hand.skeleton.index(name)


def _chain(hand, finger):
    names = ["thumb0", "thumb1", "thumb2", "thumb3", "thumb_null"] if finger == "thumb" else \
        [finger + s for s in ("1", "2", "3", "_null")]
    return [_idx(hand, n) for n in names]


def _overlap(loss, joints, radii, bones_a, bones_b):
    """Overlap of two bone sets' spheres: sum of relu(r1 + r2 - d), and all centre distances d."""
    x = loss.centres(joints)[0]
    a, b = x[bones_a].reshape(-1, 3), x[bones_b].reshape(-1, 3)
    ra, rb = radii[0, bones_a].reshape(-1), radii[0, bones_b].reshape(-1)
    d = torch.cdist(a, b)
    over = torch.relu(ra[:, None] + rb[None] - d)
    return over.sum(), d


# ------------------------------------------------------------------ structure
def test_structure_of_the_official_tree(toy):
    hand, _, _, _ = toy
    loss = PenetrationLoss.from_hand(hand)
    sk = hand.skeleton
    assert loss.num_bones == 21 and sorted(loss.bones) == sorted((p, c) for c, p in enumerate(sk.parents) if p >= 0)
    # 210 pairs minus 10 sibling pairs at the wrist minus 16 parent/child pairs
    assert loss.pair_a.numel() == 184
    for a, b in zip(loss.pair_a.tolist(), loss.pair_b.tolist()):
        assert not set(loss.bones[a]) & set(loss.bones[b])
    tips = {loss.bones[i] for i in loss.distal.tolist()}
    assert tips == {(_idx(hand, f + "3"), _idx(hand, f + "_null")) for f in ("index", "middle", "ring", "pinky")}
    assert loss.non_rigid_joints == [_idx(hand, "thumb1"), sk.root]
    seg = hand.segmentation
    assert sorted(loss.skin_index.tolist()) == np.flatnonzero(np.isin(seg, loss.non_rigid_joints)).tolist()


# ------------------------------------------------------------------ constructed cases
def test_rest_pose_and_spread_hand_give_zero(toy):
    hand, layer, rj, rv = toy
    loss = PenetrationLoss.from_hand(hand)
    euler = torch.zeros(2, 22, 3, dtype=D)
    for f, s in (("index", 1), ("ring", -1), ("pinky", -1)):   # spread the fingers apart in the palm plane
        euler[1, _idx(hand, f + "1"), 1] = 0.15 * s
    pose = layer(euler)
    t = loss(pose.joints, pose.vertices, rj, rv, reduction="none")
    assert torch.equal(t.rigid, torch.zeros(2, dtype=D)) and torch.equal(t.nonrigid, torch.zeros(2, dtype=D))


def test_procedural_hand_rest_pose_overlaps_only_in_the_palm():
    """The metacarpal spheres of a real-shaped hand overlap at rest (thumb0→thumb1 lies in the palm next to
    the wrist→index1 … bones): the rigid term has a floor there, as in the original; the fingers are free."""
    from dhmlib.synth import build_procedural_hand
    hand = build_procedural_hand(target_vertices=1500)
    layer = HandLayer(hand, D)
    rest = layer(torch.zeros(1, hand.skeleton.num_joints, 3, dtype=D))
    J = rest.joints.clone().requires_grad_(True)
    t = PenetrationLoss.from_hand(hand)(J, rest.vertices, rest.joints[0], rest.vertices[0])
    assert float(t.nonrigid.detach()) == 0.0 and float(t.rigid.detach()) > 0
    t.rigid.backward()
    distal = [hand.skeleton.index(f + s) for f in ("index", "middle", "ring", "pinky") for s in ("3", "_null")]
    distal += [hand.skeleton.index(n) for n in ("thumb3", "thumb_null")]
    assert J.grad[0, distal].abs().max() == 0 and J.grad[0, hand.skeleton.index("thumb0")].abs().max() > 0


def _rotate_about(points, centre, axis, angle):
    axis = axis / axis.norm()
    p = points - centre
    c, s = math.cos(angle), math.sin(angle)
    return centre + p * c + torch.cross(axis.expand_as(p), p, dim=-1) * s + axis * (p @ axis)[:, None] * (1 - c)


def test_crossing_chains_are_pushed_apart(toy):
    hand, _, rj, rv = toy
    loss = PenetrationLoss.from_hand(hand)
    index, middle = _chain(hand, "index"), _chain(hand, "middle")
    # swing the index finger about the palm normal (y) at index1 so that it crosses the middle finger
    J = rj.clone()
    J[index] = _rotate_about(rj[index], rj[index[0]], torch.tensor([0.0, 1.0, 0.0], dtype=D), 0.45)
    J = J[None].requires_grad_(True)
    t = loss(J, rv[None], rj, rv)
    assert float(t.rigid.detach()) > 0
    bones_i = [loss.bones.index((a, b)) for a, b in zip(index[:-1], index[1:])]
    bones_m = [loss.bones.index((a, b)) for a, b in zip(middle[:-1], middle[1:])]
    t.rigid.backward()
    g = J.grad
    assert g.abs().sum() > 0
    assert torch.all(g[0, _chain(hand, "ring")[1:]] == 0)     # ring and pinky are not involved
    with torch.no_grad():
        step = J - 0.5 * g / g.norm()
        t2 = loss(step, rv[None], rj, rv)
        assert float(t2.rigid) < float(t.rigid)
        r = loss.radii(rj, rv)
        o1, d1 = _overlap(loss, J, r, bones_i, bones_m)
        o2, d2 = _overlap(loss, step, r, bones_i, bones_m)
        assert o1 > 0 and o2 < o1
        hit = d1 < r[0, bones_i].reshape(-1, 1) + r[0, bones_m].reshape(1, -1)
        assert d2[hit].mean() > d1[hit].mean() + 0.01     # the overlapping sphere pairs move apart


def test_fingertip_in_palm_pushes_the_skin(toy):
    hand, _, rj, rv = toy
    loss = PenetrationLoss.from_hand(hand)
    seg = torch.as_tensor(hand.segmentation)
    wrist = (seg == hand.skeleton.root).nonzero().flatten()
    # lay the index distal bone (index3 → index_null) onto the palm skin, between two wrist vertices
    a = rv[wrist[0]]
    far = (rv[wrist] - a).norm(dim=1)
    b = rv[wrist[(far - 15).abs().argmin()]]
    J = rj.clone()
    J[_idx(hand, "index3")], J[_idx(hand, "index_null")] = a, b
    V = rv[None].clone().requires_grad_(True)
    t = loss(J[None], V, rj, rv)
    assert float(t.nonrigid.detach()) > 0
    t.nonrigid.backward()
    g = V.grad[0].abs().sum(1)
    nr = torch.isin(seg, torch.tensor(loss.non_rigid_joints))
    assert g[nr].sum() > 0 and torch.all(g[~nr] == 0)
    assert g[seg == hand.skeleton.root].sum() > 0
    with torch.no_grad():
        t2 = loss(J[None], V - 0.05 * V.grad / V.grad.norm(), rj, rv)
    assert float(t2.nonrigid) < float(t.nonrigid.detach())


# ------------------------------------------------------------------ reference
def _random_case(hand, rj, rv, B, seed, per_sample_rest):
    gen = torch.Generator().manual_seed(seed)
    # joints and skin squeezed towards their centroid so that many spheres collide, at various depths
    scale = torch.tensor([0.25, 0.45, 0.8], dtype=D)[:B, None, None]
    cj, cv = rj.mean(0), rv.mean(0)
    J = cj + (rj - cj) * scale + 3 * torch.randn(B, *rj.shape, generator=gen, dtype=D)
    V = cv + (rv - cv) * scale + 3 * torch.randn(B, *rv.shape, generator=gen, dtype=D)
    # each non-thumb distal bone gets one end in the non-rigid skin (the parent end or the tip, so that the
    # first penetrating sphere varies) and the other end 25 mm away in a random direction
    seg = torch.as_tensor(hand.segmentation)
    skin = torch.isin(seg, torch.tensor([hand.skeleton.index("thumb1"), hand.skeleton.root])).nonzero().flatten()
    for b in range(B):
        for f in ("index", "middle", "ring", "pinky"):
            ends = [hand.skeleton.index(f + "3"), hand.skeleton.index(f + "_null")]
            if torch.rand((), generator=gen) < 0.5:
                ends.reverse()
            v = skin[torch.randint(len(skin), (), generator=gen)]
            u = torch.randn(3, generator=gen, dtype=D)
            J[b, ends[0]] = V[b, v] + torch.randn(3, generator=gen, dtype=D)
            J[b, ends[1]] = J[b, ends[0]] + 25 * u / u.norm()
    if per_sample_rest:
        RJ = rj + torch.randn(B, *rj.shape, generator=gen, dtype=D)
        RV = rv + torch.randn(B, *rv.shape, generator=gen, dtype=D)
        return J, V, RJ, RV
    return J, V, rj, rv


@pytest.mark.parametrize("per_sample_rest", [False, True])
def test_equals_loop_reference_values_and_gradients(per_sample_rest):
    hand = toy_hand(num_vertices=150, seed=5)
    layer = HandLayer(hand, D)
    rest = layer(torch.zeros(1, 22, 3, dtype=D))
    rj, rv = rest.joints[0], rest.vertices[0]
    J, V, RJ, RV = _random_case(hand, rj, rv, 3, seed=1, per_sample_rest=per_sample_rest)
    J.requires_grad_(True)
    V.requires_grad_(True)
    loss = PenetrationLoss.from_hand(hand)
    t = loss(J, V, RJ, RV, reduction="none")
    stats = {"late_start": 0, "positive_mean": 0}
    ref_r, ref_n = reference_terms(hand.skeleton, hand.segmentation, J, V, RJ, RV, stats=stats)
    assert stats["late_start"] > 0 and stats["positive_mean"] > 0     # both branches of the original are exercised
    ref_r, ref_n = torch.stack(ref_r), torch.stack(ref_n)
    assert torch.all(ref_r > 0) and torch.all(ref_n > 0)
    torch.testing.assert_close(t.rigid, ref_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(t.nonrigid, ref_n, rtol=0, atol=1e-10)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    gJ, gV = torch.autograd.grad((w * (t.rigid + 5 * t.nonrigid)).sum(), (J, V))
    rJ, rV = torch.autograd.grad((w * (ref_r + 5 * ref_n)).sum(), (J, V))
    torch.testing.assert_close(gJ, rJ, rtol=0, atol=1e-10)
    torch.testing.assert_close(gV, rV, rtol=0, atol=1e-10)
    # the functional form and the cached rest pose give the same numbers
    f = penetration_loss(hand.skeleton, hand.segmentation, J, V, RJ, RV, reduction="none")
    assert torch.equal(f.rigid, t.rigid) and torch.equal(f.nonrigid, t.nonrigid)
    if not per_sample_rest:
        c = PenetrationLoss.from_hand(hand).set_rest(RJ, RV)(J, V)
        assert torch.equal(c.rigid, t.rigid.mean()) and torch.equal(c.nonrigid, t.nonrigid.mean())


def test_total_weights_and_reduction(toy):
    hand, _, rj, rv = toy
    J, V, _, _ = _random_case(hand, rj, rv, 2, seed=2, per_sample_rest=False)
    loss = PenetrationLoss.from_hand(hand)
    t = loss(J, V, rj, rv)
    n = loss(J, V, rj, rv, reduction="none")
    assert isinstance(t, PenetrationTerms) and t.rigid.shape == () and n.rigid.shape == (2,)
    assert torch.equal(t.total(), 1.0 * n.rigid.mean() + 5.0 * n.nonrigid.mean())


def test_runs_on_meta_and_float32(toy):
    hand, _, rj, rv = toy
    loss = PenetrationLoss.from_hand(hand).to("meta")
    t = loss(torch.empty(4, 22, 3, device="meta"), torch.empty(4, rv.shape[0], 3, device="meta"),
             torch.empty(22, 3, device="meta"), torch.empty(rv.shape[0], 3, device="meta"))
    assert t.rigid.device.type == "meta" and t.rigid.shape == () and t.nonrigid.shape == ()
    J, V, _, _ = _random_case(hand, rj, rv, 2, seed=4, per_sample_rest=False)
    loss = PenetrationLoss.from_hand(hand)
    t32 = loss(J.float(), V.float(), rj.float(), rv.float())
    t64 = loss(J, V, rj, rv)
    assert t32.rigid.dtype == torch.float32
    torch.testing.assert_close(t32.rigid.double(), t64.rigid, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t32.nonrigid.double(), t64.nonrigid, rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_argument(toy):
    hand, _, rj, rv = toy
    loss = PenetrationLoss.from_hand(hand)
    with pytest.raises(ValueError, match="posed_joints"):
        loss(rj, rv[None], rj, rv)
    with pytest.raises(ValueError, match="set_rest"):
        loss(rj[None], rv[None])


# ------------------------------------------------------------------ structure of the fast path
def test_skipped_sphere_blocks_change_nothing(toy):
    """On the CPU the rigid term evaluates only the sphere blocks that a bound cannot rule out; evaluating
    every block (``prune = False``, what CUDA does) gives the same values and gradients."""
    hand, layer, rj, rv = toy
    J, V, RJ, RV = _random_case(hand, rj, rv, 3, seed=6, per_sample_rest=True)
    gen = torch.Generator().manual_seed(0)
    near_rest = layer(0.3 * torch.randn(2, 22, 3, generator=gen, dtype=D))     # few overlaps: most blocks skipped
    J = torch.cat([J, near_rest.joints]).requires_grad_(True)
    V = torch.cat([V, near_rest.vertices]).requires_grad_(True)
    RJ, RV = torch.cat([RJ, rj.expand(2, -1, -1)]), torch.cat([RV, rv.expand(2, -1, -1)])
    out = []
    for prune in (True, False):
        loss = PenetrationLoss.from_hand(hand)
        loss.prune = prune
        t = loss(J, V, RJ, RV, reduction="none")
        w = torch.arange(1.0, 6.0, dtype=D)
        out.append((t.rigid, t.nonrigid, *torch.autograd.grad((w * (t.rigid + 5 * t.nonrigid)).sum(), (J, V))))
    assert torch.all(out[0][0][:3] > 0)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("num_steps", [5, 6])
def test_skin_groups_of_any_size_and_an_empty_one(num_steps):
    """Skin groups are padded to whole search chunks: groups of different sizes (one spanning several
    chunks), a joint that dominates no vertex, and K without (5) and with (6) sphere blocks."""
    hand = toy_hand(num_vertices=90, seed=7)
    layer = HandLayer(hand, D)
    rest = layer(torch.zeros(1, 22, 3, dtype=D))
    rj, rv = rest.joints[0], rest.vertices[0]
    seg = np.asarray(hand.segmentation).copy()
    sk = hand.skeleton
    seg[np.random.default_rng(0).choice(seg.size, 40, replace=False)] = sk.root      # wrist: > 1 chunk of 32
    groups = ("thumb1", "wrist", "middle3", "index_null")
    sizes = [int((seg == sk.index(g)).sum()) for g in groups]
    assert sizes[1] > 32 and sizes[-1] == 0 and len(set(sizes)) == 4
    J, V, _, _ = _random_case(hand, rj, rv, 2, seed=3, per_sample_rest=False)
    J.requires_grad_(True)
    V.requires_grad_(True)
    loss = PenetrationLoss(sk, seg, non_rigid_joints=groups, num_steps=num_steps)
    t = loss(J, V, rj, rv, reduction="none")
    ref_r, ref_n = (torch.stack(x) for x in reference_terms(sk, seg, J, V, rj, rv, K=num_steps, non_rigid=groups))
    assert torch.all(ref_n > 0)
    torch.testing.assert_close(t.rigid, ref_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(t.nonrigid, ref_n, rtol=0, atol=1e-10)
    w = torch.tensor([1.0, -0.5], dtype=D)
    got = torch.autograd.grad((w * (t.rigid + 5 * t.nonrigid)).sum(), (J, V))
    ref = torch.autograd.grad((w * (ref_r + 5 * ref_n)).sum(), (J, V))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
