"""Training losses of DeepHandMesh: joint, depth, Laplacian (and penetration, in its own module)."""
from .basic import depth_loss, joint_loss
from .laplacian import MeshLaplacian, apply_laplacian, laplacian_loss, uniform_laplacian

__all__ = ["joint_loss", "depth_loss", "uniform_laplacian", "apply_laplacian", "laplacian_loss",
           "MeshLaplacian"]
