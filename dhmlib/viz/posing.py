"""Interactive posing in JupyterLab: :class:`PosingWidget` (ipywidgets 8 + pythreejs).

The widget knows nothing about the model.  It drives a *pose function*::

    pose_fn(euler, *, pose_corrective: bool, id_corrective: bool)
        -> (vertices (V, 3) mm, faces (F, 3))            or
        -> (vertices (V, 3) mm, faces (F, 3), joints (J, 3) mm)

with ``euler`` a (J, 3) float64 numpy array of Euler angles in **radians**
(the model's unit; the sliders show degrees).  :meth:`PosingWidget.from_model`
builds one around ``DeepHandMesh.decode`` or a ``HandLayer``, so the
procedural model, a trained snapshot and an official snapshot are all posed
the same way.

pythreejs only sees *assigned* arrays (in-place edits never reach the
browser), so every update assigns new position/normal/colour arrays; normals
are computed here in Python (:class:`~dhmlib.viz.geometry.NormalSolver`).
"""
from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

try:
    import ipywidgets as W
    import pythreejs as three
except ImportError as e:  # pragma: no cover - exercised only without the lab extra
    raise ImportError("dhmlib.viz.PosingWidget needs ipywidgets and pythreejs: "
                      "pip install -e '.[lab]'") from e

from dhmlib.mesh import io as meshio
from dhmlib.hand.anatomy import AXES, AXIS_LABELS, GESTURES, clamp_to_limits, gesture_degrees, joint_limits_deg
from dhmlib.hand.skeleton import FINGERS, Skeleton
from dhmlib.viz.geometry import ERROR_CMAP, SKIN_RGB, NormalSolver, error_colors, look_at_quaternion
from dhmlib.viz.loading import default_output_dir
from dhmlib.hand.layer import HandLayer
from dhmlib.network.model import DeepHandMesh
from dhmlib.viz.figures import hand_figure
from matplotlib import colormaps
import torch

log = logging.getLogger(__name__)

#: Button labels of the preset gestures (:data:`dhmlib.hand.anatomy.GESTURES`) where not the name itself.
PRESET_LABELS = {"ok": "OK", "thumbs_up": "thumbs-up"}

PoseFn = Callable[..., tuple]
_EXPORT_COUNTER = itertools.count()


def _unpack(result, faces_fallback):
    """Normalise a pose function's result to float64 (V,3) vertices, int64 (F,3) faces, (J,3) joints | None."""
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise TypeError("pose_fn must return (vertices, faces) or (vertices, faces, joints), got "
                        f"{type(result).__name__}")
    verts = np.asarray(_to_numpy(result[0]), dtype=np.float64)
    faces = result[1] if result[1] is not None else faces_fallback
    if faces is None:
        raise ValueError("pose_fn returned faces=None and the widget was given no faces")
    faces = np.asarray(_to_numpy(faces), dtype=np.int64)
    joints = np.asarray(_to_numpy(result[2]), dtype=np.float64) if len(result) == 3 and result[2] is not None else None
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"pose_fn: expected vertices of shape (V, 3), got {verts.shape}")
    if not np.isfinite(verts).all():
        raise ValueError("pose_fn returned non-finite vertices")
    return verts, faces, joints


def error_legend_html(max_mm: float, error_mm=None, cmap: str = ERROR_CMAP, width: int = 300) -> str:
    """The error map's colour bar as HTML: a gradient of ``cmap`` from 0 to ``max_mm`` with ticks, and, when
    some of ``error_mm`` lie above ``max_mm``, an arrow at the top end and the share of vertices saturated."""
    cm = colormaps[cmap]
    stops = ", ".join(f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f}) {100 * t:.0f}%"
                      for t in np.linspace(0, 1, 11) for r, g, b, _ in [cm(t)])
    over = 0.0 if error_mm is None else float(np.mean(np.asarray(error_mm) > max_mm))
    top = cm(1.0)
    arrow = (f"<span class='dhm-error-saturated' style='display:inline-block;width:0;height:0;border-top:7px solid "
             f"transparent;border-bottom:7px solid transparent;border-left:10px solid rgb({top[0] * 255:.0f},"
             f"{top[1] * 255:.0f},{top[2] * 255:.0f});vertical-align:middle'></span>" if over > 0 else "")
    ticks = "".join(f"<span style='position:absolute;left:{100 * t:.0f}%;transform:translateX(-50%)'>{v:g}</span>"
                    for t, v in zip((0, 0.5, 1), (0, round(max_mm / 2, 2), max_mm)))
    note = f" · {100 * over:.1f} % of vertices above {max_mm:g} mm" if over > 0 else ""
    return (f"<div class='dhm-error-legend' style='font-size:11px;line-height:1.3;width:{width + 12}px'>"
            f"<div>per-vertex error, mm ({cmap}){note}</div>"
            f"<div style='white-space:nowrap'><span style='display:inline-block;width:{width}px;height:12px;"
            f"vertical-align:middle;background:linear-gradient(to right, {stops})'></span>{arrow}</div>"
            f"<div style='position:relative;height:14px;width:{width}px'>{ticks}</div></div>")


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


class MeshView:
    """One lit pythreejs view of a mesh: camera with orbit controls, optional bone overlay.

    Args:
        vertices: (V, 3) mm, the initial shape (also frames the camera).
        faces: (F, 3) vertex indices.
        parents: J parent indices for the bone overlay (None: no overlay).
        joints: (J, 3) mm initial joint positions (needed with ``parents``).
        width, height: canvas size in pixels.
        title: optional caption above the canvas.
        frame: (N, 3) mm points the camera must see (default ``vertices``), e.g. the rest pose.
    """

    def __init__(self, vertices, faces, parents=None, joints=None, *, width=560, height=480,
                 title: str | None = None, background="#f4f4f4", frame=None):
        vertices = np.asarray(vertices, dtype=np.float64)
        self._faces = np.asarray(faces, dtype=np.int64)
        self._normals = NormalSolver(self._faces, len(vertices))
        self._base_colors = np.tile(np.asarray(SKIN_RGB, dtype=np.float32), (len(vertices), 1))
        self.position = three.BufferAttribute(array=vertices.astype(np.float32), normalized=False)
        self.normal = three.BufferAttribute(array=self._normals(vertices), normalized=False)
        self.color = three.BufferAttribute(array=self._base_colors, normalized=False)
        self.geometry = three.BufferGeometry(
            attributes={"position": self.position, "normal": self.normal, "color": self.color},
            index=three.BufferAttribute(array=self._faces.astype(np.uint32).reshape(-1), normalized=False))
        self.material = three.MeshStandardMaterial(vertexColors="VertexColors", roughness=0.65,
                                                   metalness=0.0, side="DoubleSide")
        self.mesh = three.Mesh(geometry=self.geometry, material=self.material, frustumCulled=False)

        self.parents = None if parents is None else np.asarray(parents)
        children = [self.mesh]
        if self.parents is not None and joints is not None:
            self._bones = np.array([(p, c) for c, p in enumerate(self.parents) if p >= 0], dtype=np.int64)
            self.bone_position = three.BufferAttribute(array=self._bone_array(joints), normalized=False)
            self.joint_position = three.BufferAttribute(array=np.asarray(joints, dtype=np.float32),
                                                        normalized=False)
            self.bones = three.LineSegments(
                geometry=three.BufferGeometry(attributes={"position": self.bone_position}),
                material=three.LineBasicMaterial(color="#c0392b", depthTest=False, linewidth=2),
                visible=False, frustumCulled=False)
            self.joint_points = three.Points(
                geometry=three.BufferGeometry(attributes={"position": self.joint_position}),
                material=three.PointsMaterial(color="#2c3e50", size=4.0, sizeAttenuation=False,
                                              depthTest=False),
                visible=False, frustumCulled=False)
            children += [self.bones, self.joint_points]
        else:
            self.bones = self.joint_points = None

        frame = vertices if frame is None else np.asarray(frame, dtype=np.float64)
        lo, hi = frame.min(0), frame.max(0)
        # the mesh objects are shifted so that the frame's centre is the world origin: the orbit
        # target then is the origin, which the browser-side controls start from anyway
        offset = (-0.5 * (lo + hi)).tolist()
        for obj in children:
            obj.position = offset
        self.center = [0.0, 0.0, 0.0]
        radius = 0.5 * float(np.linalg.norm(hi - lo)) or 1.0
        # fingers along +x point up the screen; look at the palm (+y) from slightly to the thumb side
        direction = np.array([0.0, 1.0, 0.35]) / np.linalg.norm([0.0, 1.0, 0.35])
        distance = radius / np.tan(np.deg2rad(35.0) / 2) * 0.95
        self.home_position = (np.asarray(self.center) + distance * direction).tolist()
        self.up = (1.0, 0.0, 0.0)
        self.camera = three.PerspectiveCamera(
            fov=35, aspect=width / height, near=max(distance - 4 * radius, distance * 0.01),
            far=distance + 4 * radius, position=self.home_position, up=self.up,
            quaternion=look_at_quaternion(self.home_position, self.center, self.up),
            children=[three.DirectionalLight(color="white", intensity=0.65, position=[0.3, 0.5, 1.0])])
        self.scene = three.Scene(children=children + [
            self.camera, three.AmbientLight(color="white", intensity=0.45),
            three.DirectionalLight(color="white", intensity=0.25,
                                   position=(np.asarray(self.center) - distance * direction).tolist())],
            background=background)
        self.controls = three.OrbitControls(controlling=self.camera, target=self.center)
        self.renderer = three.Renderer(camera=self.camera, scene=self.scene, controls=[self.controls],
                                       width=width, height=height, antialias=True)
        self.renderer.add_class("dhm-mesh-view")
        self.widget = W.VBox(([W.HTML(f"<b>{title}</b>")] if title else []) + [self.renderer])
        self.vertices = vertices
        self.colors = None

    def _bone_array(self, joints) -> np.ndarray:
        return np.asarray(joints, dtype=np.float32)[self._bones].reshape(-1, 3)   # (2·bones, 3)

    @property
    def faces(self) -> np.ndarray:
        return self._faces

    def set_mesh(self, vertices, faces=None, joints=None, colors=None) -> None:
        """Replace the shown mesh (new arrays are assigned; in-place edits would not reach the browser).

        Args:
            vertices: (V, 3) mm.
            faces: (F, 3) or None to keep the current faces.
            joints: (J, 3) mm for the bone overlay, or None to keep it.
            colors: (V, 3) float RGB in [0, 1], or None for the plain skin colour.
        """
        vertices = np.asarray(vertices, dtype=np.float64)
        if faces is not None and (faces.shape != self._faces.shape or not np.array_equal(faces, self._faces)):
            self._faces = np.asarray(faces, dtype=np.int64)
            self._normals = NormalSolver(self._faces, len(vertices))
            self.geometry.index = three.BufferAttribute(array=self._faces.astype(np.uint32).reshape(-1),
                                                        normalized=False)
        if len(vertices) != self._normals.num_vertices:
            raise ValueError(f"vertices: expected {self._normals.num_vertices} rows (the faces' mesh), "
                             f"got {len(vertices)}; pass the new faces too")
        self.position.array = vertices.astype(np.float32)
        self.normal.array = self._normals(vertices)
        if colors is not None:
            self.color.array = np.asarray(colors, dtype=np.float32)
        elif self.colors is not None:
            if len(self._base_colors) != len(vertices):
                self._base_colors = np.tile(np.asarray(SKIN_RGB, dtype=np.float32), (len(vertices), 1))
            self.color.array = self._base_colors
        self.colors = colors
        if joints is not None and self.bones is not None:
            self.bone_position.array = self._bone_array(joints)
            self.joint_position.array = np.asarray(joints, dtype=np.float32)
        self.vertices = vertices

    def show_skeleton(self, on: bool) -> None:
        if self.bones is not None:
            self.bones.visible = bool(on)
            self.joint_points.visible = bool(on)

    def set_wireframe(self, on: bool) -> None:
        self.material.wireframe = bool(on)

    def reset_camera(self) -> None:
        """Put the camera back where it started (position, orientation, orbit target)."""
        self.camera.position = tuple(self.home_position)
        self.camera.quaternion = look_at_quaternion(self.home_position, self.center, self.up)
        self.controls.target = tuple(self.center)


class PosingWidget:
    """Pose a hand with sliders and see the mesh live.

    Args:
        pose_fn: ``pose_fn(euler (J, 3) radians, *, pose_corrective, id_corrective)`` →
            ``(vertices (V, 3) mm, faces (F, 3)[, joints (J, 3) mm])``.
        skeleton: the joint tree (slider names and DoF come from it; slider ranges are the
            range of motion, :func:`dhmlib.hand.anatomy.joint_limits_deg`).
        faces: (F, 3) used when ``pose_fn`` returns ``faces=None``.
        ground_truth: (V, 3) mm, or a callable ``euler (J, 3) radians → (V, 3) mm``; enables the
            per-vertex error colour map.
        correctives: whether ``pose_fn`` honours the corrective flags (False greys out the toggles).
        initial_correctives: initial ``(pose, identity)`` toggle values.
        preset: initial preset: a gesture name of :data:`dhmlib.hand.anatomy.GESTURES`.
        compare: add a second view, driven by the same sliders, with both correctives off.
        width, height: canvas size in pixels.
        output_dir: where :meth:`export` writes (default ``output/vis``).
        name: file-name stem of exports.
        finger: the finger whose slider tab is open at start.
    """

    def __init__(self, pose_fn: PoseFn, skeleton: Skeleton, faces=None, *, ground_truth=None,
                 correctives: bool = True, initial_correctives: tuple[bool, bool] = (True, True),
                 preset: str = "rest", compare: bool = False, width: int = 560, height: int = 480,
                 output_dir=None, name: str = "hand", finger: str = "index"):
        self.pose_fn = pose_fn
        self.skeleton = skeleton
        self._faces_fallback = None if faces is None else np.asarray(faces, dtype=np.int64)
        self.ground_truth = ground_truth
        self.supports_correctives = bool(correctives)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.name = name
        self.compare = bool(compare)
        self.last_error: Exception | None = None
        self.last_update_ms = float("nan")
        self.last_error_mm: np.ndarray | None = None
        self._suspend = False

        J = skeleton.num_joints
        self.dof_mask = skeleton.dof_mask()
        self.limits_deg = joint_limits_deg(skeleton)                      # (J, 3, 2)
        self._deg = clamp_to_limits(gesture_degrees(preset, skeleton), skeleton) if preset else np.zeros((J, 3))
        self.preset = preset

        # --- controls ---------------------------------------------------------------
        self.sliders: dict[tuple[str, str], W.FloatSlider] = {}
        groups: dict[str, list] = {}
        for j, short in enumerate(skeleton.short_names):
            for a, axis in enumerate(AXES):
                if not self.dof_mask[j, a]:
                    continue
                lo, hi = self.limits_deg[j, a]
                s = W.FloatSlider(value=float(self._deg[j, a]), min=float(lo), max=float(hi), step=0.5,
                                  description=f"{short} {AXIS_LABELS[axis]}", readout_format=".1f",
                                  continuous_update=True, style={"description_width": "100px"},
                                  layout=W.Layout(width="330px"),
                                  tooltip=f"{skeleton.names[j]}: rotation about local {axis}, degrees")
                s.add_class(f"dhm-slider-{short}-{axis}")
                s.observe(self._slider_handler(j, a), names="value")
                self.sliders[(short, axis)] = s
                groups.setdefault(skeleton.finger_of(j) or "other", []).append(s)
        order = [f for f in FINGERS if f in groups] + [g for g in groups if g not in FINGERS]
        self.finger_tabs = W.Tab(children=[W.VBox(groups[g]) for g in order], titles=order)
        if finger in order:
            self.finger_tabs.selected_index = order.index(finger)

        self.preset_buttons = {}
        for key in GESTURES:
            b = W.Button(description=PRESET_LABELS.get(key, key), layout=W.Layout(width="auto"),
                         tooltip=f"preset pose '{key}'")
            b.add_class(f"dhm-preset-{key}")
            b.on_click(lambda _b, key=key: self._guard(self.apply_preset, key))
            self.preset_buttons[key] = b

        def toggle(desc, value, cls, disabled=False, tip=""):
            t = W.ToggleButton(value=value, description=desc, disabled=disabled, tooltip=tip,
                               layout=W.Layout(width="auto"))
            t.add_class(cls)
            return t

        pc, ic = initial_correctives if self.supports_correctives else (False, False)
        self.pose_toggle = toggle("pose corrective", bool(pc), "dhm-toggle-pose",
                                  not self.supports_correctives, "pose-dependent vertex corrective")
        self.id_toggle = toggle("identity corrective", bool(ic), "dhm-toggle-identity",
                                not self.supports_correctives,
                                "identity-dependent vertex and skeleton correctives")
        self.skeleton_toggle = toggle("skeleton", False, "dhm-toggle-skeleton", tip="bone overlay")
        self.wireframe_toggle = toggle("wireframe", False, "dhm-toggle-wireframe")
        self.error_toggle = toggle("error map", False, "dhm-toggle-error", ground_truth is None,
                                   "per-vertex distance to the ground-truth mesh")
        self.error_max = W.FloatSlider(value=10.0, min=0.5, max=50.0, step=0.5, description="error max mm",
                                       disabled=ground_truth is None, style={"description_width": "100px"},
                                       layout=W.Layout(width="330px"))
        for t in (self.pose_toggle, self.id_toggle, self.error_toggle):
            t.observe(lambda _c: self._guard(self.update), names="value")
        self.error_max.observe(lambda _c: self._guard(self.update) if self.error_toggle.value else None,
                               names="value")
        self.skeleton_toggle.observe(lambda c: [v.show_skeleton(c["new"]) for v in self.views], names="value")
        self.wireframe_toggle.observe(lambda c: [v.set_wireframe(c["new"]) for v in self.views], names="value")

        self.reset_camera_button = W.Button(description="reset camera", icon="crosshairs",
                                            layout=W.Layout(width="auto"))
        self.reset_camera_button.add_class("dhm-reset-camera")
        self.reset_camera_button.on_click(lambda _b: [v.reset_camera() for v in self.views])
        self.export_buttons = {}
        for fmt in ("obj", "ply"):
            b = W.Button(description=f"export {fmt.upper()}", icon="download", layout=W.Layout(width="auto"))
            b.add_class(f"dhm-export-{fmt}")
            b.on_click(lambda _b, fmt=fmt: self._guard(self.export, fmt))
            self.export_buttons[fmt] = b
        self.status = W.HTML()
        self.status.add_class("dhm-status")
        self.error_legend = W.HTML(layout=W.Layout(display="none"))     # the error map's colour bar
        self.error_legend.add_class("dhm-error-legend-box")

        # --- views ------------------------------------------------------------------
        main, plain = self._evaluate()
        parents = skeleton.parents if main[2] is not None else None
        # frame the camera on the open hand, so that every pose stays in view
        rest = _unpack(self.pose_fn(np.zeros((J, 3)), pose_corrective=False, id_corrective=False),
                       self._faces_fallback)[0]
        frame = np.concatenate([rest, main[0]])
        w = width // 2 if self.compare else width
        self.view = MeshView(main[0], main[1], parents, main[2], width=w, height=height, frame=frame,
                             title="with correctives (toggles)" if self.compare else None)
        self.views = [self.view]
        if self.compare:
            self.plain_view = MeshView(plain[0], plain[1], parents, plain[2], width=w, height=height,
                                       frame=frame, title="without correctives (plain LBS)")
            self.views.append(self.plain_view)
        self._show(main, plain, 0.0)

        controls = W.VBox([
            W.HBox(list(self.preset_buttons.values()), layout=W.Layout(flex_flow="row wrap")),
            self.finger_tabs,
            W.HBox([self.pose_toggle, self.id_toggle], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.skeleton_toggle, self.wireframe_toggle, self.error_toggle],
                   layout=W.Layout(flex_flow="row wrap")),
            self.error_max,
            self.error_legend,
            W.HBox([self.reset_camera_button] + list(self.export_buttons.values()),
                   layout=W.Layout(flex_flow="row wrap")),
            self.status,
        ], layout=W.Layout(width="360px", min_width="360px", flex="0 0 auto"))
        # the controls keep their width (slider values stay readable) and go below the views when the
        # output area is narrower than views + controls (the compare view)
        self.ui = W.HBox([W.HBox([v.widget for v in self.views], layout=W.Layout(flex="0 0 auto")), controls],
                         layout=W.Layout(flex_flow="row wrap"))
        self.ui.add_class("dhm-posing-widget")

    # ------------------------------------------------------------------ factory
    @classmethod
    def from_model(cls, model, **kwargs) -> "PosingWidget":
        """A widget around ``DeepHandMesh.decode`` (with corrective toggles) or a ``HandLayer``.

        For a ``DeepHandMesh`` the pose toggle chooses the ``"pose"`` corrective and the identity
        toggle the ``"identity"`` and ``"skeleton"`` correctives of each ``decode`` call
        (``decode(..., correctives=...)``; the model is not modified); the toggles start from
        the model's config.  ``threads`` (default 1) is the number of torch CPU
        threads used per decode (see :func:`model_pose_fn`).  Other keyword arguments go to the
        constructor.
        """
        pose_fn, skeleton, correctives, initial = model_pose_fn(model, threads=kwargs.pop("threads", 1))
        kwargs.setdefault("correctives", correctives)
        kwargs.setdefault("initial_correctives", initial)
        return cls(pose_fn, skeleton, **kwargs)

    # ------------------------------------------------------------------ state
    @property
    def pose_degrees(self) -> np.ndarray:
        """(J, 3) current Euler angles, degrees (a copy)."""
        return self._deg.copy()

    @property
    def pose(self) -> np.ndarray:
        """(J, 3) current Euler angles, radians (what ``pose_fn`` receives)."""
        return np.deg2rad(self._deg)

    @property
    def vertices(self) -> np.ndarray:
        """(V, 3) float64 mm: the main view's current mesh as ``pose_fn`` returned it."""
        return self.view.vertices

    @property
    def faces(self) -> np.ndarray:
        return self.view.faces

    @property
    def correctives(self) -> dict[str, bool]:
        return {"pose_corrective": bool(self.pose_toggle.value), "id_corrective": bool(self.id_toggle.value)}

    # ------------------------------------------------------------------ actions
    def set_pose(self, euler_rad) -> None:
        """Set all sliders from (J, 3) radians (clamped to the limits) and update once."""
        deg = clamp_to_limits(np.rad2deg(np.asarray(_to_numpy(euler_rad), dtype=np.float64)), self.skeleton)
        self._set_degrees(deg)

    def apply_preset(self, name: str) -> None:
        """Move the sliders to gesture ``name`` (:data:`dhmlib.hand.anatomy.GESTURES`) and update once."""
        deg = clamp_to_limits(gesture_degrees(name, self.skeleton), self.skeleton)
        self.preset = name
        self._set_degrees(deg)

    def set_slider(self, joint: str, axis: str, degrees: float) -> None:
        """Set one slider (short joint name, axis ``'x'|'y'|'z'``) as a user would."""
        key = (self.skeleton.short_names[self.skeleton.index(joint)], axis)
        if key not in self.sliders:
            raise KeyError(f"joint {joint!r} has no {axis!r} degree of freedom")
        self.sliders[key].value = degrees

    def _set_degrees(self, deg: np.ndarray) -> None:
        self._suspend = True
        try:
            for (short, axis), s in self.sliders.items():
                s.value = float(deg[self.skeleton.index(short), AXES.index(axis)])
        finally:
            self._suspend = False
        self._deg = np.where(self.dof_mask, deg, 0.0)
        self.update()

    def _slider_handler(self, j: int, a: int):
        def handler(change):
            if self._suspend:          # _set_degrees sets the pose itself
                return
            # the browser's slider echoes values with float noise (55 -> 54.999999999999986):
            # round it away, and ignore an echo of the value the pose already has
            value = round(float(change["new"]), 6)
            if value == self._deg[j, a]:
                return
            self._deg[j, a] = value
            self.preset = None
            self._guard(self.update)
        return handler

    def _guard(self, fn, *args):
        """Run a UI callback; report a failure in the status line instead of losing it in the log."""
        try:
            result = fn(*args)
            self.last_error = None
            return result
        except Exception as e:  # shown to the user; kept for tests and debugging
            self.last_error = e
            log.exception("posing widget callback failed")
            self.status.value = f"<span style='color:#c0392b'>error: {type(e).__name__}: {e}</span>"
            return None

    def _evaluate(self):
        euler = self.pose
        if self.supports_correctives:
            main = _unpack(self.pose_fn(euler, **self.correctives), self._faces_fallback)
        else:
            main = _unpack(self.pose_fn(euler, pose_corrective=False, id_corrective=False),
                           self._faces_fallback)
        plain = None
        if self.compare:
            plain = _unpack(self.pose_fn(euler, pose_corrective=False, id_corrective=False), self._faces_fallback)
        return main, plain

    def _error(self, vertices) -> np.ndarray | None:
        if self.ground_truth is None:
            return None
        gt = self.ground_truth(self.pose) if callable(self.ground_truth) else self.ground_truth
        gt = np.asarray(_to_numpy(gt), dtype=np.float64)
        if gt.shape != vertices.shape:
            raise ValueError(f"ground truth: expected shape {vertices.shape}, got {gt.shape}")
        return np.linalg.norm(vertices - gt, axis=1)

    def update(self) -> None:
        """Evaluate ``pose_fn`` at the current sliders and push the new arrays to the views."""
        t0 = time.perf_counter()
        main, plain = self._evaluate()
        self._show(main, plain, t0)

    def _show(self, main, plain, t0) -> None:
        verts, faces, joints = main
        err = self._error(verts) if self.error_toggle.value else None
        colors = error_colors(err, self.error_max.value) if err is not None else None
        self.view.set_mesh(verts, faces, joints, colors)
        if plain is not None:
            self.plain_view.set_mesh(plain[0], plain[1], plain[2])
        self.last_error_mm = err
        if err is not None:
            self.error_legend.value = error_legend_html(float(self.error_max.value), err)
            self.error_legend.layout.display = None
        else:
            self.error_legend.layout.display = "none"
        if t0:
            self.last_update_ms = 1e3 * (time.perf_counter() - t0)
        parts = [f"V {len(verts)}, F {len(faces)}"]
        if self.preset:
            parts.append(f"preset {self.preset}")
        if np.isfinite(self.last_update_ms):
            parts.append(f"update {self.last_update_ms:.1f} ms")
        if err is not None:
            parts.append(f"error mean {err.mean():.2f} / max {err.max():.2f} mm")
        if plain is not None:
            parts.append(f"corrective |Δ| max {np.linalg.norm(verts - plain[0], axis=1).max():.2f} mm")
        self.status.value = " · ".join(parts)

    def export(self, fmt: str = "obj", path=None) -> Path:
        """Write the main view's current mesh (mm) as OBJ or PLY; returns the path.

        Default path: ``output/vis/<name>_<preset|pose>_<time>.<fmt>``.  PLY files carry the
        error colours when the error map is on.
        """
        fmt = fmt.lower()
        if fmt not in ("obj", "ply"):
            raise ValueError(f"export format must be 'obj' or 'ply', got {fmt!r}")
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder = self.output_dir or default_output_dir()
            path = folder / f"{self.name}_{self.preset or 'pose'}_{stamp}_{next(_EXPORT_COUNTER)}.{fmt}"
        if fmt == "obj":
            out = meshio.write_obj(path, self.vertices, self.faces)
        else:
            colors = None
            if self.view.colors is not None:
                colors = np.round(255 * np.asarray(self.view.colors)).astype(np.uint8)
            out = meshio.write_ply(path, self.vertices, self.faces, colors=colors)
        self.status.value = f"wrote {out}"
        return out

    def snapshot_figure(self, **kwargs):
        """A static matplotlib figure of the current pose: the main view, the plain view in compare
        mode, and the ground truth when there is one.  ``kwargs`` go to :func:`~dhmlib.viz.figures.hand_figure`."""
        meshes = [("with correctives" if self.compare else "current pose", self.vertices)]
        if self.compare:
            meshes.append(("without correctives", self.plain_view.vertices))
        if self.ground_truth is not None:
            gt = self.ground_truth(self.pose) if callable(self.ground_truth) else self.ground_truth
            meshes.append(("ground truth", np.asarray(_to_numpy(gt), dtype=np.float64)))
        return hand_figure(meshes, self.faces, **kwargs)

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


def model_pose_fn(model, threads: int | None = 1):
    """``(pose_fn, skeleton, supports_correctives, initial_toggles)`` for a DeepHandMesh or HandLayer.

    ``threads``: torch CPU threads for each decode (restored afterwards; None leaves torch's
    setting).  One pose is a small problem: on a busy few-core machine a single thread is about
    3x faster than torch's default pool (bench/posing_latency.py).
    """
    if isinstance(model, DeepHandMesh):
        layer = model.hand
    elif isinstance(model, HandLayer):
        layer = model
    else:
        raise TypeError(f"expected a DeepHandMesh or HandLayer, got {type(model).__name__}")
    faces = layer.faces.detach().cpu().numpy().astype(np.int64)
    dtype, device = layer.template.dtype, layer.template.device

    def pose_fn(euler, *, pose_corrective: bool = True, id_corrective: bool = True):
        e = torch.as_tensor(np.asarray(_to_numpy(euler)), dtype=dtype, device=device)[None]   # (1, J, 3)
        previous = torch.get_num_threads()
        if threads and device.type == "cpu" and previous != threads:
            torch.set_num_threads(threads)
        try:
            return _decode(e, bool(pose_corrective), bool(id_corrective))
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    def _decode(e, pose_corrective, id_corrective):
        with torch.no_grad():
            if layer is model:
                out = layer(e)
            else:
                chosen = (("pose",) if pose_corrective else ()) + (("identity", "skeleton") if id_corrective else ())
                out = model.decode(e, correctives=chosen)
        return out.vertices[0].cpu().numpy(), faces, out.joints[0].cpu().numpy()

    if layer is model:
        return pose_fn, layer.skeleton, False, (False, False)
    on = model.config.correctives
    initial = ("pose" in on, bool(on & {"identity", "skeleton"}))
    return pose_fn, layer.skeleton, True, initial
