"""Rendering: cameras (KRT_512), the seed's crop and resampling through it, a Kaolin-compatible
rasterizer, depth and shaded renders.

Conventions in one place:

- Units mm; cameras world → camera ``x_c = R x + t`` (z forward, y down), position ``-Rᵀt``,
  projection ``x/z·f + c`` (distortion ignored).
- Pixels: continuous coordinates, pixel (row i, column j) centred at ``(j + 0.5, i + 0.5)``;
  images span ``[0, W] × [0, H]`` (official images: H 512 × W 334).
- :func:`rasterize` takes Kaolin's conventions (NDC, y up, camera looking along −z) and
  Kaolin's call shape; ``backend="auto"`` uses Kaolin on CUDA where it imports, else the
  built-in PyTorch rasterizer (CPU or GPU).
- The renders (depth, face index, silhouette, shaded) take one frozen :class:`RasterSettings`
  (``near``, ``cull_backfaces``, ``backend``) as ``settings=``.
"""
from dhmlib.render.cameras import OFFICIAL_IMAGE_SIZE, CameraRecord, Cameras, KRTError, read_krt, write_krt
from dhmlib.render.crop import (Crop, bbox_from_joints, compose_affine, crop_depth, crop_from_bbox, crop_from_joints,
                                crop_image, identity_crop, invert_affine)
from dhmlib.render.depth import (ProjectedMesh, is_closed_mesh, project_mesh, render_depth, render_face_index,
                                 render_silhouette)
from dhmlib.render.rasterize import KAOLIN_UNAVAILABLE_REASON, RasterOutput, kaolin_available, rasterize
from dhmlib.render.scene import ring_cameras
from dhmlib.render.settings import RasterSettings
from dhmlib.render.shade import Light, ShadedRender, render_shaded

__all__ = [
    "OFFICIAL_IMAGE_SIZE", "CameraRecord", "Cameras", "KRTError", "read_krt", "write_krt",
    "Crop", "bbox_from_joints", "compose_affine", "crop_depth", "crop_from_bbox", "crop_from_joints", "crop_image",
    "identity_crop",
    "invert_affine", "ProjectedMesh", "is_closed_mesh", "project_mesh", "render_depth", "render_face_index", "render_silhouette",
    "KAOLIN_UNAVAILABLE_REASON", "RasterOutput", "kaolin_available", "rasterize", "RasterSettings",
    "Light", "ShadedRender", "render_shaded",
    "ring_cameras",
]
