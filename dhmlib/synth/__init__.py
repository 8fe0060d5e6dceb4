"""Synthetic data: the procedural, license-free default hand model and its identities."""
from dhmlib.synth.identity import HandIdentity
from dhmlib.synth.procedural_hand import HandLayout, build_procedural_hand, hand_layout, hand_parts, official_skeleton

__all__ = ["HandIdentity", "HandLayout", "build_procedural_hand", "hand_layout", "hand_parts",
           "official_skeleton"]
