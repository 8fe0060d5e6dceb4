"""Data over the official DeepHandMesh layout (real or virtual capture)."""
from dhmlib.data.keypoints import KEYPOINT_NAMES, read_keypoints, write_keypoints
from dhmlib.data.safe_pickle import UnsafePickleError, load_array_pickle, save_array_pickle
from dhmlib.data.scans import ScanError, read_scan, write_scan
from dhmlib.data.split import FrameSplit, SplitError, split_frames

__all__ = ["KEYPOINT_NAMES", "read_keypoints", "write_keypoints", "UnsafePickleError", "load_array_pickle",
           "save_array_pickle", "ScanError", "read_scan", "write_scan", "FrameSplit", "SplitError", "split_frames"]
