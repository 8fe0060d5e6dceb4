"""Per-frame pose embeddings: the pose source when there are no RGB images.

The public DeepHandMesh release withholds its RGB images, so the encoder cannot be trained on
it; instead each training frame gets its own learnable Euler vector, optimised jointly with
the decoder's correctives through the same losses. Held-out frames have no embedding: they are
evaluated by fitting (``dhmlib.network.fit``) a pose to them with the decoder frozen.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PoseEmbedding(nn.Module):
    """A learnable Euler vector (J, 3) per frame, masked by the skeleton's degrees of freedom.

    Args:
        frames: the frame numbers that get an embedding (or their count N: frames 0 … N−1).
        dof_mask: (J, 3) bool, the Euler axes each joint has (``HandLayer.dof_mask``).
        init: optional (N, J, 3) initial angles, radians (e.g. from a fit); default zeros,
            the rest pose (the root is placed by Kabsch alignment in training anyway).

    ``embedding(frame)`` maps (B,) int64 frame numbers to (B, J, 3) radians, zero on the axes a
    joint lacks. An unknown frame raises, naming it. Frames and angles are in the state dict
    (``frames`` buffer, ``euler`` parameter), so a snapshot restores the mapping too.
    """

    def __init__(self, frames: Sequence[int] | int, dof_mask: torch.Tensor, init: torch.Tensor | None = None):
        super().__init__()
        if isinstance(frames, int):
            frames = range(frames)
        frames = torch.as_tensor(list(frames), dtype=torch.long)
        if frames.dim() != 1 or frames.numel() == 0:
            raise ValueError("PoseEmbedding: expected at least one frame number")
        if frames.unique().numel() != frames.numel():
            raise ValueError("PoseEmbedding: frame numbers must be unique")
        if (frames < 0).any():
            raise ValueError(f"PoseEmbedding: frame numbers must be >= 0, got {int(frames.min())}")
        dof_mask = torch.as_tensor(dof_mask, dtype=torch.bool)
        if dof_mask.dim() != 2 or dof_mask.shape[1] != 3:
            raise ValueError(f"PoseEmbedding: dof_mask must be (J, 3), got {tuple(dof_mask.shape)}")
        N, J = frames.numel(), dof_mask.shape[0]
        if init is None:
            init = torch.zeros(N, J, 3)
        elif tuple(init.shape) != (N, J, 3):
            raise ValueError(f"PoseEmbedding: init must be ({N}, {J}, 3), got {tuple(init.shape)}")
        self.register_buffer("frames", frames)
        self.register_buffer("dof_mask", dof_mask, persistent=False)
        lookup = torch.full((int(frames.max()) + 1,), -1, dtype=torch.long)
        lookup[frames] = torch.arange(N)
        self.register_buffer("_lookup", lookup, persistent=False)
        self.euler = nn.Parameter(init.detach().clone().float() * dof_mask)

    @property
    def num_frames(self) -> int:
        return self.frames.numel()

    def rows(self, frame: torch.Tensor) -> torch.Tensor:
        """(B,) frame numbers → (B,) row indices into ``euler``; unknown frames raise."""
        frame = torch.as_tensor(frame, dtype=torch.long, device=self._lookup.device)
        inside = (frame >= 0) & (frame < self._lookup.numel())
        rows = torch.where(inside, self._lookup[frame.clamp(0, self._lookup.numel() - 1)],
                           torch.full_like(frame, -1))
        if (rows < 0).any():
            bad = frame[rows < 0].tolist()
            raise KeyError(f"PoseEmbedding: no embedding for frame(s) {bad[:5]} (held-out frames have none; "
                           "fit their pose with the decoder frozen instead)")
        return rows

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """(B,) int64 frame numbers → (B, J, 3) Euler angles, radians (DoF-masked)."""
        return self.euler[self.rows(frame)] * self.dof_mask.to(self.euler.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a snapshot's frame list may differ from the constructor's: rebuild the mapping from it
        key = prefix + "frames"
        if key in state_dict and state_dict[key].shape != self.frames.shape:
            frames = state_dict[key].to(torch.long)
            self.frames = frames.to(self.frames.device)
            self.euler = nn.Parameter(self.euler.new_zeros(frames.numel(), *self.euler.shape[1:]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        lookup = torch.full((int(self.frames.max()) + 1,), -1, dtype=torch.long, device=self.frames.device)
        lookup[self.frames] = torch.arange(self.frames.numel(), device=self.frames.device)
        self._lookup = lookup
