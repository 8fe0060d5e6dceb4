"""What a photo fit leaves behind: meshes, the pose file, the overlay figure and the residuals.

For a fitted pose named ``NAME`` (the photo's stem, or ``<take>_frame<frame>`` for several capture views),
:func:`write_fit` writes into one folder:

- ``NAME_world.obj`` / ``.ply``: the mesh in the world frame, mm (a photo's world is its camera's frame;
  a capture image's, the capture's), the OBJ with the hand model's texture coordinates;
- ``NAME_camera.obj`` / ``.ply``: the mesh in the (first) view's camera frame (x right, y down, z forward), mm;
- ``NAME_pose.npz``: ``euler`` (1, J, 3) rad — the file ``dhm demo --pose-file`` and the posing widget
  (``PosingWidget.set_pose``) read —, ``root`` (1, 4, 4) mm, ``scale`` (1,), ``joints`` (1, J, 3) world mm,
  ``left`` (1,) bool: a left hand's angles are those of the right hand in the mirrored photo;
- ``NAME_overlay.png``: per view the photo with the mesh's silhouette and wireframe, the landmarks and the
  reprojected joints;
- ``NAME_fit.json``: per view the camera, the detection (attempt, handedness, score, hand size px) and the
  reprojection residual of each joint in pixels (mean, max, fraction of the hand's size), the scale, time.

A left hand is the fitted right hand mirrored in its camera's frame (x → −x) with the faces' winding reversed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dhmlib.mesh.io import write_obj, write_ply
from dhmlib.photo.pipeline import PhotoFit
from dhmlib.render.cameras import Cameras


def world_mesh(fit: PhotoFit, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V, 3), joints (J, 3), faces (F, 3)) of the hand in the world frame, left hands mirrored."""
    v, j, f = fit.vertices.astype(np.float64), fit.joints.astype(np.float64), np.asarray(faces)
    if fit.left:                    # a photo's world is its camera frame: mirror x there, keep faces outward
        v, j = v * [-1.0, 1.0, 1.0], j * [-1.0, 1.0, 1.0]
        f = f[:, [0, 2, 1]]
    return v, j, f


def fit_record(fit: PhotoFit, skeleton) -> dict:
    """The JSON record of one fit (residuals in px)."""
    names = skeleton.short_names
    views = []
    for c, v in enumerate(fit.views):
        r = fit.residual_px[c]
        ok = np.isfinite(r)
        views.append({
            "image": str(v.photo.path), "image_size_hw": list(v.photo.size), "image_note": v.photo.note,
            "camera": v.camera_note, "focal_px": float(v.camera.focal[0, 0]),
            "detection": {"attempt": v.detection.attempt, "mediapipe_label": v.detection.label,
                          "handedness_score": v.detection.handedness_score, "right_hand": v.detection.is_right,
                          "hand_size_px": v.detection.size_px, "other_hands_not_fitted": v.others},
            "residual_px": {names[j]: float(r[j]) for j in np.nonzero(ok)[0]},
            "residual_mean_px": float(r[ok].mean()) if ok.any() else None,
            "residual_max_px": float(r[ok].max()) if ok.any() else None,
            "residual_mean_fraction_of_hand_size": float(r[ok].mean() / v.detection.size_px) if ok.any() else None,
        })
    return {"name": fit.name, "left_hand": fit.left, "scale": fit.scale, "views": views,
            "residual": fit.residual_summary(), "seconds": fit.seconds, **fit.extra}


def write_fit(fit: PhotoFit, out, hand, figure: bool = True) -> dict[str, Path]:
    """Write the files of the module docstring for one fit into ``out``; name → path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    faces = hand.faces.detach().cpu().numpy() if torch.is_tensor(hand.faces) else np.asarray(hand.faces)
    uvs = np.asarray(hand.uvs) if hand.uvs is not None and np.asarray(hand.uvs).any() else None
    uv_faces = None if uvs is None else np.asarray(hand.uv_faces)
    v, j, f = world_mesh(fit, faces)
    if fit.left and uv_faces is not None:
        uv_faces = uv_faces[:, [0, 2, 1]]
    cam = fit.views[0].camera
    v_cam = cam.world_to_camera(torch.as_tensor(v, dtype=torch.float64)[None, None])[0, 0].numpy()
    n = fit.name
    paths = {"world_obj": write_obj(out / f"{n}_world.obj", v, f, uvs=uvs, uv_faces=uv_faces),
             "world_ply": write_ply(out / f"{n}_world.ply", v, f),
             "camera_obj": write_obj(out / f"{n}_camera.obj", v_cam, f, uvs=uvs, uv_faces=uv_faces),
             "camera_ply": write_ply(out / f"{n}_camera.ply", v_cam, f)}
    np.savez(out / f"{n}_pose.npz", euler=fit.euler[None].astype(np.float64), root=fit.root[None].astype(np.float64),
             scale=np.array([fit.scale]), joints=j[None], left=np.array([fit.left]),
             source=np.array([str(x.photo.path) for x in fit.views]))
    paths["pose"] = out / f"{n}_pose.npz"
    rec = fit_record(fit, hand.skeleton)
    (out / f"{n}_fit.json").write_text(json.dumps(rec, indent=1))
    paths["json"] = out / f"{n}_fit.json"
    if figure:
        import matplotlib.pyplot as plt

        fig = overlay_figure(fit, hand)
        fig.savefig(out / f"{n}_overlay.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths["overlay"] = out / f"{n}_overlay.png"
    return paths


def overlay_figure(fit: PhotoFit, hand, max_render_side: int = 640):
    """A figure with one panel per view: the photo, the fitted mesh's silhouette (tinted) and wireframe, the
    detected landmarks (green dots) and the reprojected joints (red crosses on the skeleton)."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    from dhmlib.render.depth import render_silhouette

    faces = hand.faces.detach().cpu().numpy() if torch.is_tensor(hand.faces) else np.asarray(hand.faces)
    v, j, f = world_mesh(fit, faces)
    parents = hand.skeleton.parents
    C = len(fit.views)
    fig = Figure(figsize=(4.2 * C, 4.6))
    for c, view in enumerate(fit.views):
        ax = fig.add_subplot(1, C, c + 1)
        H, W = view.photo.size
        ax.imshow(view.photo.rgb)
        cam = view.camera.to(dtype=torch.float32)
        s = min(1.0, max_render_side / max(H, W))
        small = Cameras(cam.R, cam.t, cam.focal * s, cam.principal * s, cam.names)
        hs, ws = max(1, round(H * s)), max(1, round(W * s))
        vt = torch.as_tensor(v, dtype=torch.float32)[None]
        sil = render_silhouette(vt, torch.as_tensor(f), small, None, (hs, ws))[0, 0].numpy()
        tint = np.zeros((hs, ws, 4))
        tint[..., 0], tint[..., 1], tint[..., 2], tint[..., 3] = 0.2, 0.6, 1.0, 0.35 * sil
        ax.imshow(tint, extent=(0, W, H, 0), interpolation="nearest")
        px = cam.project(vt)[0].numpy()
        step = max(1, len(f) // 2500)
        tri = px[f[::step]]
        segs = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
        ax.add_collection(LineCollection(segs, colors=(1, 1, 1, 0.18), linewidths=0.3))
        rj = fit.pixels[c]
        bones = [(rj[k], rj[p]) for k, p in enumerate(parents) if p >= 0]
        ax.add_collection(LineCollection(bones, colors="red", linewidths=1.0))
        ok = fit.valid[c] > 0
        ax.scatter(fit.landmarks[c][ok, 0], fit.landmarks[c][ok, 1], s=14, c="lime", edgecolors="k", linewidths=0.4,
                   label="MediaPipe landmarks", zorder=3)
        ax.scatter(rj[ok, 0], rj[ok, 1], s=22, c="red", marker="x", linewidths=1.0, label="fitted joints", zorder=4)
        r = fit.residual_px[c]
        label = f"cam{view.capture.camera}/{view.photo.path.name}" if view.capture else view.photo.path.name
        ax.set_title(f"{label}\nresidual {np.nanmean(r):.1f} px mean, {np.nanmax(r):.1f} max",
                     fontsize=8)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.axis("off")
        if c == 0:
            ax.legend(loc="lower left", fontsize=6, framealpha=0.6)
    side = "left hand (fitted mirrored)" if fit.left else "right hand"
    fig.suptitle(f"{fit.name}: {side}, scale {fit.scale:.3f}", fontsize=9)
    return fig
