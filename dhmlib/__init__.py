"""dhmlib: a research workbench for DeepHandMesh-style hand mesh modeling."""
from dhmlib.hand.handmodel import HandModel, HandModelError, read_hand_model, write_hand_model
from dhmlib.hand.skeleton import OFFICIAL_JOINT_NAMES, Skeleton

__version__ = "0.1.0"
__all__ = ["HandModel", "HandModelError", "read_hand_model", "write_hand_model", "Skeleton",
           "OFFICIAL_JOINT_NAMES", "__version__"]
