"""Decode latency and throughput: dhmlib vs smplx's ``lbs`` vs a naive per-sample, per-joint loop.

All three run in this process on equivalent tensors: the same V, J and B, a
pose-dependent blend of about the same size (ours: J·3 → 256 → V·3 MLP; smplx:
its (J−1)·9 → V·3 ``posedirs``), a shape/identity term, FK and LBS.

    python bench/decode.py [--vertices 8000] [--repeats 30] [--out bench/results/decode.json]

Forward: inference (``torch.no_grad``, identity corrective cached, as in the
posing widget and evaluation).  Forward+backward: gradients to the pose and to
the pose-blend weights (ours additionally to the identity and skeleton
correctives), as in training.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhmlib.hand.kinematics import euler_to_matrix  # noqa: E402
from timing import timed  # noqa: E402
from dhmlib.network.model import DeepHandMesh, ModelConfig  # noqa: E402


def hand_model(vertices: int):
    from dhmlib.synth import build_procedural_hand
    return build_procedural_hand(target_vertices=vertices, seed=0)


def dense_loss(vertices):
    """A loss with a dense gradient, like a real training loss.

    (``.sum()`` would hand back a stride-0 gradient that sends matmuls down slow paths.)
    """
    w = torch.linspace(-1, 1, vertices.numel()).view_as(vertices)
    return (vertices * w).sum()


# ------------------------------------------------------------------- dhmlib
def ours(model: DeepHandMesh, B: int):
    J = model.hand.num_joints
    g = torch.Generator().manual_seed(B)
    euler = (torch.rand(B, J, 3, generator=g) - 0.5)

    def forward():
        with torch.no_grad():
            return model.decode(euler).vertices

    e = euler.clone().requires_grad_()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        e.grad = None
        dense_loss(model.decode(e).vertices).backward()

    return forward, forward_backward


# -------------------------------------------------------------------- smplx
def smplx_peer(hm, B: int):
    from smplx.lbs import lbs

    J, V = hm.num_joints, hm.num_vertices
    # smplx wants the root first and parents in topological order: reorder the same skeleton
    order = [j for level in hm.skeleton.levels for j in level]
    pos = {j: i for i, j in enumerate(order)}
    parents = torch.tensor([-1 if hm.parents[j] < 0 else pos[hm.parents[j]] for j in order])
    g = torch.Generator().manual_seed(B)
    v_template = torch.tensor(hm.vertices, dtype=torch.float32)
    weights = torch.tensor(hm.skinning_weights[:, order], dtype=torch.float32)
    shapedirs = torch.randn(V, 3, 10, generator=g) * 0.1
    posedirs = torch.randn((J - 1) * 9, V * 3, generator=g) * 0.01
    # a joint regressor: each joint an average of its 8 nearest vertices
    d = torch.cdist(torch.tensor(hm.bind_joints[order], dtype=torch.float32), v_template)
    near = d.topk(8, largest=False).indices
    J_regressor = torch.zeros(J, V).scatter_(1, near, 1.0 / 8)
    betas = torch.zeros(B, 10)
    pose = (torch.rand(B, J * 3, generator=g) - 0.5)

    def forward():
        with torch.no_grad():
            return lbs(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, weights)[0]

    p = pose.clone().requires_grad_()
    pd = posedirs.clone().requires_grad_()

    def forward_backward():
        p.grad = pd.grad = None
        dense_loss(lbs(betas, p, v_template, shapedirs, pd, J_regressor, parents, weights)[0]).backward()

    return forward, forward_backward


# --------------------------------------------------------------- naive loop
def naive_peer(model: DeepHandMesh, B: int):
    """The same maths as dhmlib, one sample and one joint at a time."""
    layer = model.hand
    J = layer.num_joints
    parents = layer.skeleton.parents
    order = [j for level in layer.skeleton.levels for j in level]
    g = torch.Generator().manual_seed(B)
    euler = (torch.rand(B, J, 3, generator=g) - 0.5)
    skin = model.skin_refine_net

    def decode(e):
        outs = []
        idc = skin.identity(model.id_code)
        bone = model.skeleton_refine_net(model.id_code)
        for b in range(B):
            eb = e[b] * layer.dof_mask
            rest = layer.template + idc + skin.pose(eb[None])[0]
            G = [None] * J
            for j in order:
                L = layer.local_bind[j].clone()
                L[:3, 3] = L[:3, 3] + bone[j]
                R = torch.eye(4)
                R[:3, :3] = euler_to_matrix(eb[j])
                G[j] = (L if parents[j] < 0 else G[parents[j]] @ L) @ R
            v = torch.zeros_like(rest)
            for j in range(J):
                A = G[j] @ layer.global_bind_inv[j]
                v = v + layer.skin_weights[:, j:j + 1] * (rest @ A[:3, :3].T + A[:3, 3])
            outs.append(v)
        return torch.stack(outs)

    def forward():
        with torch.no_grad():
            return decode(euler)

    e = euler.clone().requires_grad_()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        dense_loss(decode(e)).backward()

    return forward, forward_backward


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertices", type=int, default=8000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode.json"))
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc mallopt: reuse freed large blocks (as dhm synth and training do); applies to all peers")
    args = ap.parse_args(argv)
    kept = False
    if args.keep_freed_memory:
        from dhmlib.memory import keep_freed_memory
        kept = keep_freed_memory()

    hm = hand_model(args.vertices)
    torch.manual_seed(0)
    model = DeepHandMesh(hm, ModelConfig(backbone=18))
    for fc in (model.skin_refine_net.fc_pose, model.skin_refine_net.fc_id, model.skeleton_refine_net.fc_skeleton):
        torch.nn.init.normal_(fc[-1].weight, std=1e-3)  # trained-like, non-zero correctives
    model.train(False)
    print(f"decode benchmark: V={hm.num_vertices}, J={hm.num_joints}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, keep freed memory {kept}")
    rows = []
    for B in args.batches:
        peers = {"dhmlib": ours(model, B), "smplx.lbs": smplx_peer(hm, B), "naive loop": naive_peer(model, B)}
        for mode, k in (("forward", 0), ("forward+backward", 1)):
            res = {}
            for name, fns in peers.items():
                reps = max(3, args.repeats // (4 if name == "naive loop" else 1))
                res[name] = timed(fns[k], reps)
            rows.append({"B": B, "mode": mode, **{f"{n} ms": round(t, 3) for n, t in res.items()},
                         "throughput dhmlib (samples/s)": round(B / res["dhmlib"] * 1e3, 1),
                         "x smplx": round(res["smplx.lbs"] / res["dhmlib"], 2),
                         "x naive": round(res["naive loop"] / res["dhmlib"], 1)})
            r = rows[-1]
            print(f"B={B:3d} {mode:17s} dhmlib {r['dhmlib ms']:8.3f} ms | smplx {r['smplx.lbs ms']:8.3f} ms "
                  f"({r['x smplx']:.2f}x) | naive {r['naive loop ms']:9.2f} ms ({r['x naive']:.1f}x) | "
                  f"{r['throughput dhmlib (samples/s)']:.0f} samples/s")
    goals = {
        "B=1 forward <= 3 ms": next(r for r in rows if r["B"] == 1 and r["mode"] == "forward")["dhmlib ms"] <= 3.0
        if 1 in args.batches else None,
        ">= 1.5x smplx at B=64 (forward and forward+backward)":
            all(r["x smplx"] >= 1.5 for r in rows if r["B"] == 64) if 64 in args.batches else None,
        ">= 10x naive loop (all rows)": all(r["x naive"] >= 10 for r in rows),
    }
    for g, ok in goals.items():
        print(f"goal {g}: {'met' if ok else 'NOT met' if ok is not None else 'not measured'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vertices": hm.num_vertices, "joints": hm.num_joints,
                               "threads": torch.get_num_threads(), "torch": torch.__version__, "keep_freed_memory": kept,
                               "rows": rows, "goals": goals}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
