"""Training losses of DeepHandMesh: joint, depth, Laplacian and penetration."""
from dhmlib.losses.basic import depth_loss, joint_loss
from dhmlib.losses.laplacian import MeshLaplacian, apply_laplacian, laplacian_loss, uniform_laplacian
from dhmlib.losses.penetration import (NONRIGID_WEIGHT, RIGID_WEIGHT, PenetrationLoss, PenetrationTerms,
                                       penetration_loss, root_to_leaf_paths)

__all__ = ["joint_loss", "depth_loss", "uniform_laplacian", "apply_laplacian", "laplacian_loss",
           "MeshLaplacian", "PenetrationLoss", "PenetrationTerms", "penetration_loss", "root_to_leaf_paths",
           "RIGID_WEIGHT", "NONRIGID_WEIGHT"]
