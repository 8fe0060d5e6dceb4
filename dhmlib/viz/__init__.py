"""Visualisation: static matplotlib hand figures and the interactive pythreejs posing widget.

``geometry`` and ``figures`` need only numpy/scipy/matplotlib; :class:`PosingWidget`
(``posing``) needs the ``lab`` extra (ipywidgets, pythreejs) and is imported on first use.
Joint limits and the preset gestures live in :mod:`dhmlib.hand.anatomy`.
"""
from dhmlib.viz.figures import hand_figure, plot_hand

__all__ = ["PosingWidget", "MeshView", "model_pose_fn", "load_posing_model", "default_output_dir",
           "latest_snapshot", "capture_ground_truth", "hand_figure", "plot_hand"]


def __getattr__(name):
    if name in ("PosingWidget", "MeshView", "model_pose_fn"):
        from dhmlib.viz import posing  # deferred: the posing widget needs the lab extra (pythreejs)
        return getattr(posing, name)
    if name in ("load_posing_model", "default_output_dir", "latest_snapshot", "capture_ground_truth"):
        from dhmlib.viz import loading  # deferred: `import dhmlib.viz` (figures) loads neither torch nor the model
        return getattr(loading, name)
    raise AttributeError(f"module 'dhmlib.viz' has no attribute {name!r}")
