"""Penetration loss: dhmlib's vectorized loss vs a straightforward loop of the same semantics.

The loop is written the way the original release computes it: per sphere a min over the rest
mesh for its radius, per pair of segments one (B, 10, 10) distance grid, and per (non-rigid joint,
finger) combination a loop over the samples for the "first penetrating sphere" rule.  Both get
the same inputs (procedural hand, float32, B poses: half fists, half random plausible poses, so
both terms are non-zero), compute the radii from the rest inputs on every call, as in training,
and backpropagate into the posed joints and vertices.

    python bench/penetration.py [--vertices 1500] [--batch 8] [--repeats 10] [--out bench/results/penetration.json]

Measured on the 2-core CPU box at load ≈ 0.7, torch 2.13, B = 8, V = 1466, float32: vectorized
3.6–3.7 ms, loop 43.5 ms: 12× (goal ≥ 20× not met; earlier versions 9.8 ms → 6.0 ms → 3.6 ms).
Both agree to 6e-8 in value and gradient.  Under load ≈ 10 (another job) the timings are noise.
Branch bench9 (radii by a float64 min-reduction, centres as linear maps): one thread, CPU time
(``time.thread_time``) at load 8.5, alternating rounds: old 6.8–8.7 ms, new 4.7–6.9 ms, loop 53–83 ms:
8.6–15.7× (the old code 6.1–10.5× in the same rounds).  Not re-measured on a quiet box.
Branch pen9 (hand-written backward, skipped sphere blocks, two-level skin search): one thread, CPU time, at
load 6–7, alternating rounds: new 2.99 ms, old 4.11 ms, loop 46.1 ms (medians): 15.4× (old 11.2×).  See
bench/README.md; not re-measured on a quiet box.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhmlib.hand.anatomy import gesture_euler, random_plausible_pose  # noqa: E402
from dhmlib.losses.penetration import PenetrationLoss, root_to_leaf_paths  # noqa: E402
from dhmlib.hand.layer import HandLayer  # noqa: E402
from timing import timed, write_json  # noqa: E402


def loop_penetration(skeleton, segmentation, posed_joints, posed_vertices, rest_joints, rest_vertices, K=10,
                     non_rigid=("thumb1", "wrist")):
    """The same semantics with Python loops over spheres, pairs, combinations and samples → (rigid, nonrigid) (B,)."""
    B = posed_joints.shape[0]
    names = skeleton.short_names
    paths = root_to_leaf_paths(skeleton)
    parts = [(p[i], p[i + 1]) for p in paths for i in range(len(p) - 1)]
    rj, rv = rest_joints.detach(), rest_vertices.detach()
    centres, radii = {}, {}
    for a, b in parts:
        cs, rs = [], []
        for k in range(K):
            cs.append(posed_joints[:, a] + (k / K) * (posed_joints[:, b] - posed_joints[:, a]))
            c = rj[a] + (k / K) * (rj[b] - rj[a])
            rs.append(torch.sqrt(((rv - c) ** 2).sum(-1)).min())
        centres[a, b], radii[a, b] = torch.stack(cs, 1), torch.stack(rs)    # (B, K, 3), (K,)
    rigid, cnt = 0, 0
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            (s1, e1), (s2, e2) = parts[i], parts[j]
            if s1 == s2 or s1 == e2 or e1 == s2:
                continue
            d = torch.sqrt(((centres[s1, e1][:, :, None] - centres[s2, e2][:, None]) ** 2).sum(-1))
            thr = radii[s1, e1][:, None] + radii[s2, e2][None]
            rigid = rigid + torch.relu(thr - d).mean((1, 2))
            cnt += 1
    rigid = rigid / cnt
    seg = torch.as_tensor(segmentation)
    nonrigid, cnt = 0, 0
    for g in [skeleton.index(n) for n in non_rigid]:
        skin = posed_vertices[:, seg == g]
        for p in paths:
            a, b = p[-2], p[-1]
            if "thumb" in names[a] or "thumb" in names[b]:
                continue
            d = torch.sqrt(((skin[:, :, None] - centres[a, b][:, None]) ** 2).sum(-1)).min(1).values   # (B, K)
            r = radii[a, b]
            per = []
            for s in range(B):
                hit = torch.nonzero(d[s] < r)
                if len(hit):
                    k0 = int(hit.min())
                    per.append((d[s, k0:] - r[k0:]).mean().abs())
                else:
                    per.append(d.new_zeros(()))
            nonrigid = nonrigid + torch.stack(per)
            cnt += 1
    return rigid, nonrigid / cnt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertices", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "penetration.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dhmlib.synth import build_procedural_hand
    hand = build_procedural_hand(target_vertices=args.vertices, seed=0)
    sk = hand.skeleton
    layer = HandLayer(hand)
    B = args.batch
    rng = np.random.default_rng(0)
    euler = random_plausible_pose(sk, rng, batch=B)
    euler[: B // 2] = gesture_euler("fist", sk)
    euler[: B // 2] += rng.normal(0, 0.05, size=euler[: B // 2].shape)
    with torch.no_grad():
        rest = layer(torch.zeros(1, sk.num_joints, 3))
        pose = layer(torch.as_tensor(euler, dtype=torch.float32))
    rj, rv = rest.joints[0], rest.vertices[0]
    loss = PenetrationLoss.from_hand(hand)

    def run(fn):
        J = pose.joints.clone().requires_grad_(True)
        V = pose.vertices.clone().requires_grad_(True)
        rigid, nonrigid = fn(J, V)
        (rigid.sum() + 5 * nonrigid.sum()).backward()
        return rigid.detach(), nonrigid.detach(), J.grad, V.grad

    def ours(J, V):
        return loss(J, V, rj, rv, reduction="none")

    def loop(J, V):
        return loop_penetration(sk, hand.segmentation, J, V, rj, rv)

    a, b = run(ours), run(loop)
    diffs = {n: float((x - y).abs().max()) for n, x, y in zip(("rigid", "nonrigid", "grad_joints", "grad_vertices"), a, b)}
    t_ours = timed(lambda: run(ours), args.repeats)
    t_loop = timed(lambda: run(loop), max(3, args.repeats // 3))
    result = {
        "vertices": hand.vertices.shape[0], "batch": B, "threads": args.threads, "dtype": "float32",
        "rigid_mean": float(a[0].mean()), "nonrigid_mean": float(a[1].mean()),
        "max_abs_diff": diffs, "ours_ms": t_ours, "loop_ms": t_loop, "speedup": t_loop / t_ours,
        "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
    }
    print(f"penetration loss, forward+backward, B={B}, V={result['vertices']}, float32, {args.threads} threads")
    print(f"  terms (mean): rigid {result['rigid_mean']:.4f}, non-rigid {result['nonrigid_mean']:.4f}")
    print(f"  vectorized {t_ours:8.2f} ms   loop {t_loop:8.2f} ms   speed-up {t_loop / t_ours:6.1f}x (goal >= 20x)")
    print("  max |ours - loop|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    print(f"  wrote {write_json(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
