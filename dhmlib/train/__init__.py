"""Training DeepHandMesh: configs, pose embeddings, the per-batch step and the loop.

``dhm train --preset cpu-small`` (:mod:`dhmlib.cli.train`; under torchrun every rank runs
``python -m dhmlib.cli train``) trains from the shell; :func:`train` does the same from Python or a notebook.
"""
from dhmlib.train.config import PRESETS, TrainConfig, parse_set, preset
from dhmlib.train.embedding import PoseEmbedding
from dhmlib.train.loop import TrainResult, train
from dhmlib.train.step import TERMS, StepOutput, TrainStep

__all__ = ["TrainConfig", "PRESETS", "preset", "parse_set", "PoseEmbedding", "TrainStep", "StepOutput", "TERMS",
           "train", "TrainResult"]
