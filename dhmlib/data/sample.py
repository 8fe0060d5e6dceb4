"""Typed dataset items: :class:`HandSample` (one item) and :class:`HandBatch` (a collated batch).

Both are small frozen dataclasses of tensors, :class:`~dhmlib.render.Cameras` and
:class:`~dhmlib.render.Crop` (as PyTorch3D's ``Fragments``): fields are named and
documented once, pickle across DataLoader workers, and move with ``.to(device)``.
:func:`collate_samples` is the ``collate_fn`` that turns samples into a batch::

    loader = DataLoader(dataset, batch_size=8, collate_fn=collate_samples)

Shape letters: B batch, J joints, K depth views per sample, (H, W) input crop,
(h, w) render crop. Units: mm, pixels. Without RGB images (the public release
withholds them) ``image``, ``input_camera``, ``input_crop`` and ``camera`` are ``None``
and ``has_image`` is ``False``; everything else is present.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch
from torch.utils.data import default_collate

from dhmlib.render.cameras import Cameras
from dhmlib.render.crop import Crop

_CAMERA_TENSORS = ("R", "t", "focal", "principal")


def _map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A copy of the dataclass ``obj`` with ``fn`` applied to every tensor (inside Cameras and Crop too)."""
    def one(x):
        if isinstance(x, torch.Tensor):
            return fn(x)
        if isinstance(x, Cameras):
            return Cameras(*(fn(getattr(x, a)) for a in _CAMERA_TENSORS), names=x.names)
        if isinstance(x, Crop):
            return Crop(fn(x.matrix), x.size)
        return x
    return replace(obj, **{f.name: one(getattr(obj, f.name)) for f in fields(obj)})


def _summary(obj) -> str:
    """One line per field: name, type and shape (tensors), batch shape and size (Cameras, Crop) or value."""
    rows = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, torch.Tensor):
            what = f"tensor {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
        elif isinstance(v, Cameras):
            what = f"Cameras {v.batch_shape}"
        elif isinstance(v, Crop):
            what = f"Crop {v.batch_shape} → {v.size[0]}×{v.size[1]}"
        else:
            what = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
        rows.append(f"{f.name:13s} {what}")
    return "\n".join(rows)


@dataclass(frozen=True, eq=False)
class HandSample:
    """One dataset item: an input view of a frame, its 3D joints and K cropped depth views.

    Attributes:
        image: (3, H, W) float32 input crop, RGB in [0, 1]; ``None`` without images.
        input_camera: the camera of the input image, batch shape (1,); ``None`` without images.
        input_crop: image pixels → input-crop pixels, batch shape (1,), size (H, W); ``None`` without images.
        joints: (J, 3) float32 3D joints, world mm (0 where not valid).
        joint_valid: (J,) float32, 1 where the keypoint file lists the joint (``thumb0``: 0).
        depth: (K, h, w) float32 camera z of the K views, mm; 0 = no surface.
        view_cameras: cameras of the K views, batch shape (K,), names = ``view_names``.
        view_crops: image pixels → render pixels of each view, batch shape (K,), size (h, w).
        view_index: (K,) int64 indices of the views into ``dataset.camera_names``.
        view_names: the K view cameras' names.
        subject: subject number N (``subject_N``).
        sequence: sequence name ("" without images: frames are not tied to a sequence).
        frame: frame number.
        camera: name of the input camera; ``None`` without images.
        index: index of the item in its dataset.
    """

    image: torch.Tensor | None
    input_camera: Cameras | None
    input_crop: Crop | None
    joints: torch.Tensor
    joint_valid: torch.Tensor
    depth: torch.Tensor
    view_cameras: Cameras
    view_crops: Crop
    view_index: torch.Tensor
    view_names: tuple[str, ...]
    subject: int
    sequence: str
    frame: int
    camera: str | None
    index: int

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def num_views(self) -> int:
        return self.depth.shape[0]

    def summary(self) -> str:
        """A table of the fields with their shapes (for notebooks)."""
        return _summary(self)

    def to(self, device, non_blocking: bool = False) -> "HandSample":
        """The same sample with every tensor on ``device``."""
        return _map_tensors(self, lambda x: x.to(device, non_blocking=non_blocking))


@dataclass(frozen=True, eq=False)
class HandBatch:
    """B collated :class:`HandSample` s; the fields of a sample with a leading batch dimension.

    Attributes:
        image: (B, 3, H, W) float32 in [0, 1]; ``None`` without images.
        input_camera: input cameras, batch shape (B,); ``None`` without images.
        input_crop: input crops, batch shape (B,), size (H, W); ``None`` without images.
        joints: (B, J, 3) float32 world mm.
        joint_valid: (B, J) float32 0/1.
        depth: (B, K, h, w) float32 mm, 0 = no surface.
        view_cameras: batch shape (B, K).
        view_crops: batch shape (B, K), size (h, w).
        view_index: (B, K) int64 into ``dataset.camera_names``.
        view_names: B tuples of K camera names.
        subject: (B,) subject numbers.
        sequence: (B,) sequence names.
        frame: (B,) int64 frame numbers (a tensor: it indexes per-frame embeddings).
        camera: (B,) input camera names (``None`` entries without images).
        index: (B,) int64 dataset indices.
    """

    image: torch.Tensor | None
    input_camera: Cameras | None
    input_crop: Crop | None
    joints: torch.Tensor
    joint_valid: torch.Tensor
    depth: torch.Tensor
    view_cameras: Cameras
    view_crops: Crop
    view_index: torch.Tensor
    view_names: tuple[tuple[str, ...], ...]
    subject: tuple[int, ...]
    sequence: tuple[str, ...]
    frame: torch.Tensor
    camera: tuple[str | None, ...]
    index: torch.Tensor

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def batch_size(self) -> int:
        return self.joints.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    def summary(self) -> str:
        """A table of the fields with their shapes (for notebooks)."""
        return _summary(self)

    def to(self, device, non_blocking: bool = False) -> "HandBatch":
        """The same batch with every tensor on ``device``."""
        return _map_tensors(self, lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "HandBatch":
        """Page-locked copy (``DataLoader(pin_memory=True)`` calls this)."""
        return _map_tensors(self, lambda x: x.pin_memory())


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    # default_collate stacks straight into shared memory inside a DataLoader worker (no copy on the way out)
    return default_collate(tensors)


class GatheredSamples(Sequence):
    """B samples fetched together (a dataset's ``__getitems__``): ``batch`` is their :class:`HandBatch`,
    already gathered in one indexing of the prepared crops; the items are the samples themselves,
    built on access (``dataset[index]``), for a ``collate_fn`` other than :func:`collate_samples`."""

    def __init__(self, dataset, indices: Sequence[int], batch: HandBatch):
        self.dataset, self.indices, self.batch = dataset, list(indices), batch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.dataset[i] for i in self.indices[k]]
        return self.dataset[self.indices[k]]


def collate_samples(samples: Sequence[HandSample]) -> HandBatch:
    """Stack samples into a :class:`HandBatch` (a ``DataLoader`` ``collate_fn``); a
    :class:`GatheredSamples` gives its ready batch.

    Raises:
        ValueError: on an empty list, samples with and without images mixed, or
            differing numbers of views or crop sizes.
    """
    if isinstance(samples, GatheredSamples):
        return samples.batch
    if not samples:
        raise ValueError("collate_samples: expected at least one sample, got none")
    with_image = {s.has_image for s in samples}
    if len(with_image) != 1:
        raise ValueError("collate_samples: expected all samples with images or all without, got both")
    views = {s.num_views for s in samples}
    if len(views) != 1:
        raise ValueError(f"collate_samples: expected one number of views K per batch, got {sorted(views)}")
    has_image = with_image.pop()
    return HandBatch(
        image=_stack([s.image for s in samples]) if has_image else None,
        input_camera=Cameras.cat([s.input_camera for s in samples]) if has_image else None,
        input_crop=Crop.cat([s.input_crop for s in samples]) if has_image else None,
        joints=_stack([s.joints for s in samples]),
        joint_valid=_stack([s.joint_valid for s in samples]),
        depth=_stack([s.depth for s in samples]),
        view_cameras=Cameras.stack([s.view_cameras for s in samples]),
        view_crops=Crop.stack([s.view_crops for s in samples]),
        view_index=_stack([s.view_index for s in samples]),
        view_names=tuple(s.view_names for s in samples),
        subject=tuple(s.subject for s in samples),
        sequence=tuple(s.sequence for s in samples),
        frame=torch.tensor([s.frame for s in samples], dtype=torch.long),
        camera=tuple(s.camera for s in samples),
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
    )
