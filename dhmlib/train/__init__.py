"""Training DeepHandMesh: configs, pose embeddings, the per-batch step and the loop.

``python -m dhmlib.train --preset cpu-small`` (also under ``torchrun``) trains from the shell;
:func:`train` does the same from Python or a notebook.
"""
from .config import PRESETS, TrainConfig, parse_set, preset
from .embedding import PoseEmbedding
from .loop import TrainResult, train
from .step import TERMS, StepOutput, TrainStep

__all__ = ["TrainConfig", "PRESETS", "preset", "parse_set", "PoseEmbedding", "TrainStep", "StepOutput", "TERMS",
           "train", "TrainResult"]
