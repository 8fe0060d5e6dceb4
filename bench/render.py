"""Depth-map rendering benchmark: dhmlib's PyTorch rasterizer against Open3D and DEODR, same run.

Scene: the procedural hand (≈8k vertices, ≈16k faces) in 8 random poses, 6 ring cameras,
the seed's 256² crop around the projected joints: 48 depth maps, as one training batch
(batch 8 × 6 views).

- dhmlib (``render_depth(settings=RasterSettings(backend="torch"))``): one call for all 48 maps
  ("48 maps", time ÷ 48), and 48 single-map calls ("per map"). forward+backward = depth sum
  backpropagated to the vertices.
- Open3D ``RaycastingScene`` (Embree, not differentiable): per pose a scene build
  (``add_triangles``) and one ``cast_rays`` of its 6 views through the pixel centres; the
  build is included (training must rebuild per pose); "cast only" is also reported.
- DEODR ``Scene3D.render_depth`` (Cython, float64, differentiable; its defaults: antialiased
  silhouette edges ``sigma=1``, back-face culling), one map at a time; forward+backward adds
  ``render_depth_backward``.

Ray set-up for Open3D (pixel rays from cameras and crops) is done before timing. Times are the
minimum over ``--repeat`` runs (the machine may be shared). Results: a table on stdout and
``bench/results/render.json``. Needs the ``bench`` extra (``open3d-cpu``, ``deodr``; open3d needs
Debian's ``libusb-1.0-0``); missing peers are reported as skipped.

    python bench/render.py [--repeat 5] [--threads N] [--size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dhmlib.hand.anatomy import random_plausible_pose
from dhmlib.hand.layer import HandLayer
from dhmlib.memory import keep_freed_memory  # noqa: E402
from dhmlib.render import RasterSettings, crop_from_joints, render_depth, ring_cameras
from dhmlib.synth import build_procedural_hand

TORCH = RasterSettings(backend="torch")


def best_of(fn, repeat: int) -> float:
    """Minimum wall time (s) of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_scene(size: int, batch: int = 8, views: int = 6, vertices: int = 8000):
    hand = build_procedural_hand(vertices, seed=0)
    layer = HandLayer(hand)
    with torch.no_grad():
        e = random_plausible_pose(layer.skeleton, np.random.default_rng(1), batch=batch)
        out = layer(torch.as_tensor(e, dtype=torch.float32))
    V, J = out.vertices, out.joints
    cams = ring_cameras(V.reshape(-1, 3).mean(0), views)
    crop = crop_from_joints(cams.project(J.unsqueeze(1)), size=(size, size))  # (B, C)
    return V, layer.faces, cams, crop


def pixel_rays(cams, crop, b: int, c: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through the render's pixel centres; direction has camera z = 1 (so t = depth)."""
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    p = torch.tensor(np.stack([j, i], -1).reshape(1, -1, 2), dtype=torch.float64)
    M = crop.matrix[b, c].double()
    A, t = M[:, :2], M[:, 2]
    uv = (p[0] - t) @ torch.linalg.inv(A).T  # render → image pixels
    f, pp = cams.focal[c].double(), cams.principal[c].double()
    d_cam = torch.cat([(uv - pp) / f, torch.ones(uv.shape[0], 1, dtype=torch.float64)], 1)
    R = cams.R[c].double()
    d = d_cam @ R  # Rᵀ d_cam
    o = cams.position[c].double().expand_as(d)
    return o.numpy(), d.numpy()


def bench_dhmlib(V, faces, cams, crop, size, repeat):
    B, C = crop.batch_shape
    res = {}
    res["fwd_48"] = best_of(lambda: render_depth(V, faces, cams, crop, settings=TORCH), repeat)

    def fb():
        Vg = V.detach().requires_grad_()
        render_depth(Vg, faces, cams, crop, settings=TORCH).sum().backward()
    res["fwdbwd_48"] = best_of(fb, repeat)
    singles = [(b, c) for b in range(B) for c in range(C)]
    cams1 = [cams.index_select([c]) for c in range(C)]
    crops1 = [type(crop)(crop.matrix[b, c][None], crop.size) for b, c in singles]

    def one(backward: bool):
        for k, (b, c) in enumerate(singles):
            v = V[b:b + 1].detach().requires_grad_(backward)
            d = render_depth(v, faces, cams1[c], crops1[k], settings=TORCH)
            if backward:
                d.sum().backward()
    res["fwd_single"] = best_of(lambda: one(False), max(1, repeat // 2))
    res["fwdbwd_single"] = best_of(lambda: one(True), max(1, repeat // 2))
    depth = render_depth(V, faces, cams, crop, settings=TORCH)
    return {k: v / (B * C) for k, v in res.items()}, depth


def bench_open3d(V, faces, cams, crop, size, repeat):
    try:
        import open3d as o3d
    except Exception as exc:  # pragma: no cover - optional peer
        return None, f"open3d unavailable: {exc}"
    B, C = crop.batch_shape
    rays = []
    for b in range(B):
        per = [np.concatenate(pixel_rays(cams, crop, b, c, size), 1) for c in range(C)]
        rays.append(o3d.core.Tensor(np.stack(per).reshape(C, size, size, 6).astype(np.float32)))
    F = faces.numpy().astype(np.uint32)
    Vn = [V[b].numpy().astype(np.float32) for b in range(B)]

    def build(b):
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(Vn[b]), o3d.core.Tensor(F))
        return scene

    out = {}

    def run_all():
        for b in range(B):
            out[b] = build(b).cast_rays(rays[b])["t_hit"].numpy()
    t_all = best_of(run_all, repeat)
    scenes = [build(b) for b in range(B)]
    for s, r in zip(scenes, rays):
        s.cast_rays(r)  # scenes are committed lazily on the first cast: do it before timing
    t_cast = best_of(lambda: [s.cast_rays(r) for s, r in zip(scenes, rays)], repeat)
    run_all()
    depth = np.stack([out[b] for b in range(B)])
    depth[~np.isfinite(depth)] = 0
    return {"fwd_48": t_all / (B * C), "cast_only_48": t_cast / (B * C)}, torch.tensor(depth)


def bench_deodr(V, faces, cams, crop, size, repeat):
    try:
        import deodr
        from deodr.differentiable_renderer import Camera, Scene3D
        from deodr.triangulated_mesh import ColoredTriMesh
    except Exception as exc:  # pragma: no cover - optional peer
        return None, f"deodr unavailable: {exc}"
    B, C = crop.batch_shape
    F = faces.numpy().astype(np.int32)
    Vd = [V[b].numpy().astype(np.float64) for b in range(B)]
    mesh = ColoredTriMesh(F, Vd[0], clockwise=False, colors=np.ones((Vd[0].shape[0], 3)))
    scene = Scene3D(integer_pixel_centers=False)
    scene.set_mesh(mesh)
    scene.set_background_color(np.zeros(1))
    cameras = {}
    for b in range(B):
        for c in range(C):
            M = crop.matrix[b, c].double().numpy()
            K = np.array([[cams.focal[c, 0].item(), 0, cams.principal[c, 0].item()],
                          [0, cams.focal[c, 1].item(), cams.principal[c, 1].item()], [0, 0, 1.0]])
            K2 = np.vstack([M @ K, [0, 0, 1.0]])
            Rt = torch.cat([cams.R[c], cams.t[c, :, None]], 1).double().numpy()
            cameras[b, c] = Camera(extrinsic=Rt, intrinsic=K2, height=size, width=size)
    out = {}

    def run(backward: bool):
        for b in range(B):
            mesh.set_vertices(Vd[b])
            for c in range(C):
                d = scene.render_depth(cameras[b, c])
                if backward:
                    scene.clear_gradients()
                    scene.render_depth_backward(np.ones_like(d))
                out[b, c] = d
    t_f = best_of(lambda: run(False), max(1, repeat // 2))
    t_fb = best_of(lambda: run(True), max(1, repeat // 2))
    run(False)
    depth = np.stack([np.stack([np.asarray(out[b, c]).reshape(size, size) for c in range(C)]) for b in range(B)])
    return {"fwd_48": t_f / (B * C), "fwdbwd_48": t_fb / (B * C), "version": getattr(deodr, "__version__", "?")}, \
        torch.tensor(depth)


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    both = (a > 0) & (b > 0)
    return {"mean_abs_dz_mm": float((a - b)[both].abs().mean()),
            "coverage_mismatch": float(((a > 0) != (b > 0)).double().mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc mallopt: reuse freed large blocks instead of unmapping them (as a training "
                         "process may); the default measures a plain process")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "render.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    V, faces, cams, crop = make_scene(args.size)
    print(f"scene: {V.shape[1]} vertices, {faces.shape[0]} faces, {crop.batch_shape[0]} poses × "
          f"{crop.batch_shape[1]} views at {args.size}², torch {torch.__version__} threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}, keep freed memory {kept}")
    ours, d_ours = bench_dhmlib(V, faces, cams, crop, args.size, args.repeat)
    o3d_res, d_o3d = bench_open3d(V, faces, cams, crop, args.size, args.repeat)
    deodr_res, d_deodr = bench_deodr(V, faces, cams, crop, args.size, args.repeat)
    ms = lambda s: None if s is None else round(s * 1e3, 3)  # noqa: E731
    rows = [("dhmlib torch, 48 maps in one call", ours["fwd_48"], ours["fwdbwd_48"]),
            ("dhmlib torch, 48 single-map calls", ours["fwd_single"], ours["fwdbwd_single"])]
    if isinstance(o3d_res, dict):
        rows += [("Open3D RaycastingScene (build + cast)", o3d_res["fwd_48"], None),
                 ("Open3D RaycastingScene (cast only)", o3d_res["cast_only_48"], None)]
    if isinstance(deodr_res, dict):
        rows += [("DEODR Scene3D.render_depth", deodr_res["fwd_48"], deodr_res["fwdbwd_48"])]
    ref_f, ref_fb = ours["fwd_48"], ours["fwdbwd_48"]
    print(f"\n{'method':42s} {'fwd ms/map':>11s} {'fwd+bwd ms/map':>15s} {'fwd ÷ dhmlib':>13s} {'f+b ÷ dhmlib':>13s}")
    for name, f, fb in rows:
        print(f"{name:42s} {ms(f):11.3f} {('%.3f' % ms(fb)) if fb else '—':>15s} {f / ref_f:13.2f} "
              f"{('%.2f' % (fb / ref_fb)) if fb else '—':>13s}")
    goals = {}
    if isinstance(o3d_res, dict):
        goals["fwd_48_within_1.5x_open3d_with_build"] = ours["fwd_48"] <= 1.5 * o3d_res["fwd_48"]
        print(f"\nagreement with Open3D: {agreement(d_ours, d_o3d)}")
    else:
        print(f"\nOpen3D skipped: {o3d_res}")
    if isinstance(deodr_res, dict):
        goals["fwdbwd_per_map_faster_than_deodr"] = ours["fwdbwd_48"] < deodr_res["fwdbwd_48"]
        goals["fwdbwd_single_call_faster_than_deodr"] = ours["fwdbwd_single"] < deodr_res["fwdbwd_48"]
        print(f"agreement with DEODR: {agreement(d_ours, d_deodr)}")
    else:
        print(f"DEODR skipped: {deodr_res}")
    print(f"goals: {goals}")
    result = {
        "scene": {"vertices": int(V.shape[1]), "faces": int(faces.shape[0]), "batch": crop.batch_shape[0],
                  "views": crop.batch_shape[1], "size": args.size},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "keep_freed_memory": kept,
                    "loadavg_1min": os.getloadavg()[0], "cuda": "not measured (no GPU in this run)"
                    if not torch.cuda.is_available() else torch.cuda.get_device_name()},
        "ms_per_map": {"dhmlib": {k: ms(v) for k, v in ours.items()},
                       "open3d": {k: ms(v) for k, v in o3d_res.items()} if isinstance(o3d_res, dict) else o3d_res,
                       "deodr": ({k: (ms(v) if not isinstance(v, str) else v) for k, v in deodr_res.items()}
                                 if isinstance(deodr_res, dict) else deodr_res)},
        "goals": goals,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
