"""The masked smooth-L1 depth loss in one compiled pass forward and one backward (CPU, Numba).

:func:`dhmlib.losses.basic.depth_loss` written as PyTorch ops makes about fifteen whole-map passes
forward and as many backward (masks, ``where``, ``abs``, the two branches, their gradients); a fit
step of 64 frames × 8 views of 96² spends ~80 ms on them. Here each pixel is read once forward
(its term summed in float64 per chunk of pixels, chunks in parallel) and once backward.

The gradient is the same bit for bit as autograd's through the vectorised loss: with ``s = g / n``
(``n`` the pixel count or the valid count) it is ``(s / β)·d`` where ``|d| < β`` (autograd's two
product-rule terms are each exactly half of that) and ``s·sign(d)`` elsewhere, ``d = rendered −
target``, zero off the mask. The forward value differs from the vectorised sum by summation
order only (float64 partial sums here).
"""
from __future__ import annotations

import numpy as np
import torch

from dhmlib.render.compiled import match_torch_threads, numba

__all__ = ["compiled_depth_loss_available", "depth_loss_cpu"]

_CHUNK = 1 << 16  # pixels per partial sum

if numba is not None:
    from numba import njit, prange

    @njit(cache=True, parallel=True)
    def _forward(r, t, k, partial, counts):  # pragma: no cover - compiled
        """partial[c], counts[c] ← Σ smooth-L1 and the number of valid pixels of chunk c.

        k: (β, ½, ½·β, 0) in the work dtype (float literals would promote float32 to float64).
        """
        beta, half, half_beta, zero = k[0], k[1], k[2], k[3]
        n = r.shape[0]
        for c in prange(partial.shape[0]):
            s = 0.0
            m = 0
            for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
                ri = r[i]
                ti = t[i]
                if ri != zero and ti != zero:
                    d = ri - ti
                    a = abs(d)
                    s += (half * d * d / beta) if a < beta else (a - half_beta)
                    m += 1
            partial[c] = s
            counts[c] = m

    @njit(cache=True, parallel=True)
    def _backward(r, t, k, scale, out):  # pragma: no cover - compiled
        """out[i] ← d loss / d r[i] for ``scale`` = upstream gradient / normaliser (work dtype, shape (1,))."""
        beta, zero, one = k[0], k[3], k[4]
        s = scale[0]
        s_beta = s / beta
        n = r.shape[0]
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
                ri = r[i]
                ti = t[i]
                if ri != zero and ti != zero:
                    d = ri - ti
                    if abs(d) < beta:
                        out[i] = s_beta * d
                    else:
                        out[i] = s * (one if d > zero else (-one if d < zero else zero))
                else:
                    out[i] = zero


def compiled_depth_loss_available(rendered: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether :func:`depth_loss_cpu` can take these maps: CPU float32/float64, Numba, no gradient to the target."""
    return (numba is not None and rendered.device.type == "cpu" and target.device.type == "cpu"
            and rendered.dtype in (torch.float32, torch.float64) and not target.requires_grad)


def _constants(dtype, beta: float) -> np.ndarray:
    return torch.tensor([beta, 0.5, 0.5 * beta, 0.0, 1.0], dtype=dtype).numpy()


class _DepthLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rendered, target, beta: float, valid_only: bool):
        r = rendered.detach().contiguous().reshape(-1)
        t = target.detach().to(rendered.dtype).contiguous().reshape(-1)
        k = _constants(rendered.dtype, beta)
        chunks = max(1, (r.numel() + _CHUNK - 1) // _CHUNK)
        partial, counts = np.zeros(chunks), np.zeros(chunks, dtype=np.int64)
        match_torch_threads()
        _forward(r.numpy(), t.numpy(), k, partial, counts)
        count = int(counts.sum())
        norm = max(count, 1) if valid_only else r.numel()
        ctx.save_for_backward(r, t)
        ctx.k, ctx.norm, ctx.shape = k, norm, rendered.shape
        return torch.tensor(partial.sum(), dtype=torch.float64).to(rendered.dtype) / norm

    @staticmethod
    def backward(ctx, grad):
        r, t = ctx.saved_tensors
        scale = (grad.detach().to(r.dtype) / ctx.norm).reshape(1)     # as autograd's division backward
        out = torch.empty_like(r)
        match_torch_threads()
        _backward(r.numpy(), t.numpy(), ctx.k, scale.contiguous().numpy(), out.numpy())
        return out.reshape(ctx.shape), None, None, None


def depth_loss_cpu(rendered: torch.Tensor, target: torch.Tensor, beta: float = 1.0,
                   normalize: str = "all") -> torch.Tensor:
    """:func:`dhmlib.losses.basic.depth_loss` (same arguments, checked there) compiled for CPU tensors."""
    return _DepthLoss.apply(rendered, target, float(beta), normalize == "valid")
