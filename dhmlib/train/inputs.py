"""The training inputs: the split's frames, the training dataset, the capture's image size.

Used by the loop (:mod:`dhmlib.train.loop`), the evaluation (:mod:`dhmlib.evaluation.held_out`) and
the held-out probe (:mod:`dhmlib.train.probe`); kept apart from the loop so that those modules can
use each other without an import cycle.
"""
from __future__ import annotations

from collections.abc import Callable

from dhmlib.data.dataset import DeepHandMeshDataset, capture_image_size
from dhmlib.data.layout import Layout
from dhmlib.data.split import split_frames
from dhmlib.train.config import TrainConfig


def split_training_frames(data_root, config: TrainConfig, log: Callable[[str], None] = print):
    """(train frames, test frames, rule) of the configured split, ``max_frames`` applied to train."""
    s = split_frames(data_root, config.subject, config.held_out)
    train, test, rule = tuple(s.train), tuple(s.test), s.rule
    if config.max_frames is not None:
        train = train[:config.max_frames]
    if not train:
        raise ValueError(f"{data_root}: no training frames ({rule})")
    return train, test, rule


def make_dataset(data_root, config: TrainConfig, frames, skeleton=None, *, progress: bool = True,
                 log=None) -> DeepHandMeshDataset:
    """The training dataset: ``frames`` only, images only for the image source; depth crops from the
    prepared store when ``config.prepared_crops`` (built here the first time, with a progress bar)."""
    layout = Layout(data_root, config.subject)
    kwargs = dict(subject=config.subject, skeleton=skeleton, num_views=config.num_views,
                  input_size=config.input_size, render_size=config.render_size, seed=config.seed,
                  image_size=capture_image_size(layout, frames[0]), crop_mode=config.crop_mode,
                  images=config.pose_source == "image")
    dataset = DeepHandMeshDataset(data_root, frames=frames, **kwargs)
    if config.prepared_crops:
        dataset.use_prepared_crops(progress=progress, log=log)
    return dataset
