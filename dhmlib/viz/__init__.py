"""Visualisation: static matplotlib hand figures and the interactive pythreejs posing widget.

``limits``, ``presets``, ``geometry`` and ``figures`` need only numpy/scipy/matplotlib;
:class:`PosingWidget` (``posing``) needs the ``lab`` extra (ipywidgets, pythreejs) and is
imported on first use.
"""
from .figures import hand_figure, plot_hand
from .limits import JOINT_LIMITS_DEG, clamp_to_limits, joint_limits_deg, within_limits
from .presets import PRESETS, preset_degrees, preset_euler, preset_names

__all__ = ["PosingWidget", "MeshView", "model_pose_fn", "load_posing_model", "default_output_dir",
           "latest_snapshot", "capture_ground_truth", "hand_figure", "plot_hand", "JOINT_LIMITS_DEG", "joint_limits_deg", "within_limits", "clamp_to_limits", "PRESETS",
           "preset_degrees", "preset_euler", "preset_names"]


def __getattr__(name):
    if name in ("PosingWidget", "MeshView", "model_pose_fn"):
        from . import posing
        return getattr(posing, name)
    if name in ("load_posing_model", "default_output_dir", "latest_snapshot", "capture_ground_truth"):
        from . import loading
        return getattr(loading, name)
    raise AttributeError(f"module 'dhmlib.viz' has no attribute {name!r}")
