"""Pinhole cameras of the official capture: ``KRT_512`` files and a batched camera type.

Conventions (official DeepHandMesh release):

- Extrinsics ``[R | t]`` map world → camera: ``x_cam = R @ x_world + t`` (mm).
  The camera looks along its +z axis; x right, y down (OpenCV style).
- Camera position (centre) in world coordinates: ``-Rᵀ t``.
- Projection: ``u = x / z · f_x + c_x``, ``v = y / z · f_y + c_y`` (pixels).
  The distortion row of ``KRT_512`` is parsed and kept, but **ignored** by every
  projection here (the official code ignores it as well).
- Pixel coordinates are continuous: the image spans ``[0, W] × [0, H]`` and the
  centre of pixel (row ``i``, column ``j``) is at ``(u, v) = (j + 0.5, i + 0.5)``.
  The same convention is used by :mod:`dhmlib.render.crop`, by the rasterizer and
  by ``torch.nn.functional.grid_sample(align_corners=False)``.

``KRT_512`` layout, per camera: a name line, 3 intrinsic rows (``K``), 1
distortion row, 3 extrinsic rows (``[R | t]``, 4 numbers each), one blank line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

OFFICIAL_IMAGE_SIZE = (512, 334)  # (H, W) of the released images


class KRTError(ValueError):
    """A malformed KRT file; the message names the file, the line and what was expected."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class CameraRecord:
    """One camera exactly as stored in a KRT file (numpy, float64).

    Attributes:
        name: camera name (e.g. ``"400262"``).
        K: (3, 3) intrinsics, pixels.
        dist: (D,) distortion coefficients (ignored by projection).
        Rt: (3, 4) extrinsics world → camera, translation in mm.
    """

    name: str
    K: np.ndarray
    dist: np.ndarray
    Rt: np.ndarray


def _floats(path, lineno: int, text: str, count: int | None, what: str) -> np.ndarray:
    parts = text.split()
    try:
        vals = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise KRTError(path, lineno, f"expected {what} (numbers), got {text.strip()!r}") from None
    if count is not None and vals.size != count:
        raise KRTError(path, lineno, f"expected {what} with {count} numbers, got {vals.size}")
    if not np.all(np.isfinite(vals)):
        raise KRTError(path, lineno, f"expected finite numbers in {what}, got {text.strip()!r}")
    return vals


def read_krt(path: str | os.PathLike) -> list[CameraRecord]:
    """Parse a ``KRT_512``-style file.

    Blocks are separated by blank lines (trailing spaces allowed); a block has 8
    lines: name, 3 rows of K (3 numbers), distortion (any count), 3 rows of
    ``[R | t]`` (4 numbers). Lines starting with ``#`` are ignored.

    Returns:
        one :class:`CameraRecord` per camera, in file order.

    Raises:
        KRTError: naming file and line, on any malformed block, a non-rotation
            ``R`` (``|RᵀR − I| > 1e-3``), a non-positive focal length or a
            duplicated camera name.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    records: list[CameraRecord] = []
    block: list[tuple[int, str]] = []

    def flush():
        if not block:
            return
        if len(block) != 8:
            raise KRTError(path, block[0][0], f"expected a camera block of 8 lines (name, 3 K rows, "
                                              f"distortion, 3 [R|t] rows), got {len(block)}")
        (ln, name) = block[0]
        name = name.strip()
        if len(name.split()) != 1:
            raise KRTError(path, ln, f"expected a camera name (one word), got {name!r}")
        K = np.stack([_floats(path, l, t, 3, f"intrinsic row {r}") for r, (l, t) in enumerate(block[1:4])])
        dist = _floats(path, block[4][0], block[4][1], None, "distortion row")
        Rt = np.stack([_floats(path, l, t, 4, f"extrinsic row {r}") for r, (l, t) in enumerate(block[5:8])])
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise KRTError(path, block[1][0], f"expected positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
        R = Rt[:, :3]
        if np.abs(R.T @ R - np.eye(3)).max() > 1e-3:
            raise KRTError(path, block[5][0], "expected a rotation matrix in the extrinsic rows (RᵀR = I)")
        if any(r.name == name for r in records):
            raise KRTError(path, ln, f"duplicate camera name {name!r}")
        records.append(CameraRecord(name, K, dist, Rt))
        block.clear()

    for lineno, text in enumerate(lines, start=1):
        if text.lstrip().startswith("#"):
            continue
        if text.strip() == "":
            flush()
        else:
            block.append((lineno, text))
    flush()
    if not records:
        raise KRTError(path, None, "expected at least one camera block, found none")
    return records


def write_krt(path: str | os.PathLike, records: Sequence[CameraRecord] | "Cameras") -> None:
    """Write cameras in the ``KRT_512`` layout (``repr``-exact floats, so read → write → read is lossless).

    Args:
        path: output file.
        records: :class:`CameraRecord` list, or a :class:`Cameras` of batch shape (C,)
            (skew 0, zero distortion of 5 coefficients).
    """
    if isinstance(records, Cameras):
        records = records.to_records()
    out = []
    for r in records:
        out.append(r.name)
        out += [" ".join(repr(float(x)) for x in row) for row in np.asarray(r.K)]
        out.append(" ".join(repr(float(x)) for x in np.asarray(r.dist).reshape(-1)))
        out += [" ".join(repr(float(x)) for x in row) for row in np.asarray(r.Rt)]
        out.append("")
    Path(path).write_text("\n".join(out) + "\n")


@dataclass(frozen=True, eq=False)
class Cameras:
    """A batch of pinhole cameras (world → camera → pixel), differentiable in all tensors.

    The leading batch shape ``S`` is ``(C,)`` for a rig or ``(B, C)`` when a data
    loader stacks K views per sample. All tensors share device and dtype.

    Attributes:
        R: (*S, 3, 3) rotation world → camera.
        t: (*S, 3) translation world → camera, mm.
        focal: (*S, 2) ``(f_x, f_y)``, pixels.
        principal: (*S, 2) ``(c_x, c_y)``, pixels (continuous coordinates, see module doc).
        names: camera names of the last batch dimension (length C), or ``None``.
    """

    R: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    names: tuple[str, ...] | None = None

    def __post_init__(self):
        S = tuple(self.R.shape[:-2])
        if self.R.shape[-2:] != (3, 3):
            raise ValueError(f"Cameras.R: expected shape (*S, 3, 3), got {tuple(self.R.shape)}")
        for name, shape in (("t", S + (3,)), ("focal", S + (2,)), ("principal", S + (2,))):
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Cameras.{name}: expected shape {shape} to match R {tuple(self.R.shape)}, got {got}")
        if len(S) == 0:
            raise ValueError("Cameras: expected at least one batch dimension (C,), got a single camera; "
                             "use R[None] etc.")
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
            if len(self.names) != S[-1]:
                raise ValueError(f"Cameras.names: expected {S[-1]} names, got {len(self.names)}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_records(cls, records: Sequence[CameraRecord], dtype=torch.float32, device=None) -> "Cameras":
        """Cameras of batch shape (C,) from parsed KRT records (skew and distortion ignored)."""
        K = torch.as_tensor(np.stack([r.K for r in records]), dtype=dtype, device=device)
        Rt = torch.as_tensor(np.stack([r.Rt for r in records]), dtype=dtype, device=device)
        return cls(R=Rt[:, :, :3].contiguous(), t=Rt[:, :, 3].contiguous(),
                   focal=torch.stack([K[:, 0, 0], K[:, 1, 1]], -1),
                   principal=torch.stack([K[:, 0, 2], K[:, 1, 2]], -1),
                   names=tuple(r.name for r in records))

    @classmethod
    def from_krt(cls, path, names: Sequence[str] | None = None, dtype=torch.float32, device=None) -> "Cameras":
        """Read a KRT file; ``names`` selects (and orders) cameras, raising ``KeyError`` for unknown ones."""
        records = read_krt(path)
        if names is not None:
            by_name = {r.name: r for r in records}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise KeyError(f"{path}: cameras {missing} not found; available: {sorted(by_name)}")
            records = [by_name[n] for n in names]
        return cls.from_records(records, dtype=dtype, device=device)

    @classmethod
    def look_at(cls, eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor, focal, principal,
                names: Sequence[str] | None = None) -> "Cameras":
        """Cameras at ``eye`` (C, 3) looking at ``target`` (C, 3) or (3,), image ``-y`` along ``up``.

        ``focal`` and ``principal``: (C, 2) or (2,) pixels.
        """
        eye = torch.as_tensor(eye)
        target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device).expand_as(eye)
        up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
        z = torch.nn.functional.normalize(target - eye, dim=-1)
        # image down (camera y) = −up with its component along z removed; image right = y × z
        y = -up + (z * up).sum(-1, keepdim=True) * z
        if bool((y.norm(dim=-1) < 1e-6).any()):
            raise ValueError("Cameras.look_at: a camera looks straight along 'up'; expected a view direction "
                             "not parallel to up")
        y = torch.nn.functional.normalize(y, dim=-1)
        x = torch.linalg.cross(y, z, dim=-1)
        R = torch.stack([x, y, z], dim=-2)
        t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
        C = eye.shape[0]
        f = torch.as_tensor(focal, dtype=eye.dtype, device=eye.device).expand(C, 2)
        c = torch.as_tensor(principal, dtype=eye.dtype, device=eye.device).expand(C, 2)
        return cls(R, t, f.contiguous(), c.contiguous(), names)

    def to_records(self) -> list[CameraRecord]:
        """KRT records of a (C,)-batched rig (names default to ``cam0``, ``cam1`` …)."""
        if self.R.dim() != 3:
            raise ValueError(f"to_records: expected cameras of batch shape (C,), got {self.batch_shape}")
        names = self.names or tuple(f"cam{i}" for i in range(self.R.shape[0]))
        out = []
        for i, n in enumerate(names):
            K = np.eye(3)
            K[0, 0], K[1, 1] = self.focal[i].detach().double().cpu().numpy()
            K[0, 2], K[1, 2] = self.principal[i].detach().double().cpu().numpy()
            Rt = torch.cat([self.R[i], self.t[i, :, None]], 1).detach().double().cpu().numpy()
            out.append(CameraRecord(n, K, np.zeros(5), Rt))
        return out

    # ------------------------------------------------------------------ batching
    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.R.shape[:-2])

    @property
    def device(self) -> torch.device:
        return self.R.device

    @property
    def dtype(self) -> torch.dtype:
        return self.R.dtype

    def _map(self, fn, names=None) -> "Cameras":
        return Cameras(fn(self.R), fn(self.t), fn(self.focal), fn(self.principal),
                       self.names if names is None else names)

    def to(self, device=None, dtype=None) -> "Cameras":
        return self._map(lambda x: x.to(device=device, dtype=dtype))

    def index_select(self, index: torch.Tensor | Sequence[int]) -> "Cameras":
        """Select cameras along the last batch dimension: (C,) → (K,), or (B, C) → (B, K).

        ``index``: (K,) long, or (B, K) long for a per-sample selection of (B, C) cameras.
        """
        index = torch.as_tensor(index, device=self.device, dtype=torch.long)
        nb = len(self.batch_shape)
        if index.dim() == 1:
            names = tuple(self.names[i] for i in index.tolist()) if self.names else None
            return Cameras(*(x.index_select(nb - 1, index) for x in (self.R, self.t, self.focal, self.principal)),
                           names=names)
        if index.dim() == 2 and nb == 2:
            def take(x):
                idx = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(index.shape + x.shape[2:])
                return torch.gather(x, 1, idx)
            return Cameras(take(self.R), take(self.t), take(self.focal), take(self.principal), None)
        raise ValueError(f"index_select: expected index (K,) or (B, K) for cameras {self.batch_shape}, "
                         f"got {tuple(index.shape)}")

    @staticmethod
    def stack(cameras: Sequence["Cameras"]) -> "Cameras":
        """Stack (C,)-batched rigs into (B, C) (e.g. K views per sample in a data loader)."""
        if not cameras:
            raise ValueError("Cameras.stack: expected a non-empty sequence")
        names = cameras[0].names if all(c.names == cameras[0].names for c in cameras) else None
        return Cameras(*(torch.stack([getattr(c, a) for c in cameras]) for a in ("R", "t", "focal", "principal")),
                       names=names)

    @staticmethod
    def cat(cameras: Sequence["Cameras"]) -> "Cameras":
        """Concatenate along the first batch dimension: (C1, …), (C2, …) → (C1 + C2, …).

        Names are kept for 1-D batches (concatenated) and dropped otherwise unless all agree.
        """
        if not cameras:
            raise ValueError("Cameras.cat: expected a non-empty sequence")
        if len(cameras[0].batch_shape) == 1:
            names = (tuple(n for c in cameras for n in c.names) if all(c.names is not None for c in cameras)
                     else None)
        else:
            names = cameras[0].names if all(c.names == cameras[0].names for c in cameras) else None
        return Cameras(*(torch.cat([getattr(c, a) for c in cameras]) for a in ("R", "t", "focal", "principal")),
                       names=names)

    def expand(self, batch: int) -> "Cameras":
        """(C,) → (B, C) without copying."""
        if len(self.batch_shape) != 1:
            raise ValueError(f"expand: expected cameras of batch shape (C,), got {self.batch_shape}")
        return self._map(lambda x: x.unsqueeze(0).expand(batch, *x.shape))

    def __len__(self) -> int:
        return self.batch_shape[-1]

    # ------------------------------------------------------------------ geometry
    @property
    def position(self) -> torch.Tensor:
        """(*S, 3) camera centres in world coordinates, ``-Rᵀ t`` (mm)."""
        return -(self.R.transpose(-1, -2) @ self.t.unsqueeze(-1)).squeeze(-1)

    @property
    def K(self) -> torch.Tensor:
        """(*S, 3, 3) intrinsic matrices (zero skew)."""
        K = torch.zeros(self.batch_shape + (3, 3), dtype=self.dtype, device=self.device)
        K[..., 0, 0], K[..., 1, 1] = self.focal[..., 0], self.focal[..., 1]
        K[..., 0, 2], K[..., 1, 2] = self.principal[..., 0], self.principal[..., 1]
        K[..., 2, 2] = 1
        return K

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """Points (*S', N, 3) world mm → (*S', N, 3) camera mm, ``R x + t``.

        ``S'`` must broadcast with the camera batch shape ``S``; e.g. vertices
        (B, 1, V, 3) with cameras (C,) or (B, C) give (B, C, V, 3). The result has the
        points' dtype and device (camera tensors are converted, differentiably).
        """
        R, t = self.R.to(points), self.t.to(points)
        return points @ R.transpose(-1, -2) + t.unsqueeze(-2)

    def camera_to_pixel(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-space points (*S', N, 3) → pixels (*S', N, 2): ``x / z · f + c`` (no distortion).

        Points with ``z ≤ 0`` give meaningless (possibly infinite) pixels; the
        renderers drop faces closer than their ``near`` plane before this matters.
        """
        f, c = self.focal.to(points_cam), self.principal.to(points_cam)
        return points_cam[..., :2] / points_cam[..., 2:3] * f.unsqueeze(-2) + c.unsqueeze(-2)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """World points (*S', N, 3) mm → pixels (*S', N, 2) (continuous, pixel centres at +0.5)."""
        return self.camera_to_pixel(self.world_to_camera(points))
