"""Data over the official DeepHandMesh layout (real or virtual capture)."""
from .keypoints import KEYPOINT_NAMES, read_keypoints, write_keypoints
from .safe_pickle import UnsafePickleError, load_array_pickle, save_array_pickle

__all__ = ["KEYPOINT_NAMES", "read_keypoints", "write_keypoints", "UnsafePickleError", "load_array_pickle",
           "save_array_pickle"]
