"""How meshes are rasterized by the render functions: one frozen settings object.

:class:`RasterSettings` is taken by :func:`~dhmlib.render.depth.project_mesh`,
:func:`~dhmlib.render.depth.render_depth`, :func:`~dhmlib.render.depth.render_face_index`,
:func:`~dhmlib.render.depth.render_silhouette` and :func:`~dhmlib.render.shade.render_shaded`
(``settings=``), in the manner of PyTorch3D's ``RasterizationSettings``. The Kaolin-shaped
:func:`~dhmlib.render.rasterize.rasterize` keeps Kaolin's own arguments (``backend=`` …).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

BACKENDS = ("auto", "torch", "kaolin")


@dataclass(frozen=True)
class RasterSettings:
    """Rasterization settings shared by the depth, silhouette and shaded renders.

    Attributes:
        near: mm; a face with any vertex closer to the camera plane than ``near`` is dropped
            whole (there is no near-plane clipping), so a camera inside or behind the mesh
            sees only the faces entirely in front of it.
        cull_backfaces: drop faces turned away from the camera (counter-clockwise = outward),
            about 30 % less rasterizer work. Exact only for closed meshes without inside-out
            regions: a posed LBS hand folds inside out at the joints and then shows the wrong
            surface on ~0.05 % of the pixels (up to 9 mm off), so the default keeps all faces,
            like a ray caster.
        backend: ``"auto"``, ``"torch"`` or ``"kaolin"``, as :func:`~dhmlib.render.rasterize.rasterize`.
    """

    near: float = 1.0
    cull_backfaces: bool = False
    backend: str = "auto"

    def __post_init__(self):
        try:
            near = float(self.near)
        except (TypeError, ValueError):
            near = math.nan
        if isinstance(self.near, bool) or not math.isfinite(near) or near <= 0:
            raise ValueError(f"RasterSettings.near: expected a finite distance > 0 mm, got {self.near!r}")
        object.__setattr__(self, "near", near)
        if not isinstance(self.cull_backfaces, bool):
            raise TypeError(f"RasterSettings.cull_backfaces: expected a bool, got {self.cull_backfaces!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"RasterSettings.backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")


#: the defaults (near 1 mm, all faces, automatic backend)
DEFAULT_RASTER_SETTINGS = RasterSettings()
