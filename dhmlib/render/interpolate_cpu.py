"""Perspective-correct interpolation of vertex features at the covered pixels, compiled (CPU).

:func:`dhmlib.render.rasterize.interpolate_vertex_features` in vectorised PyTorch makes some forty
(P,) temporaries per call, forward and backward, for P covered pixels; this module does the same
arithmetic per pixel in compiled code (Numba), views in parallel. The forward repeats the
vectorised path's operations in their order (the same values bit for bit); the backward is the
same formulas (see :class:`dhmlib.render.rasterize._Interpolate`), accumulated per view into that
view's vertices (views own disjoint rows, so the parallel loop has no races).
"""
from __future__ import annotations

import torch

from dhmlib.render.compiled import match_torch_threads, numba
from dhmlib.render.zbuffer_cpu import zbuffer_available

__all__ = ["interpolate_vertex_features_cpu"]

if numba is not None:
    from numba import njit, prange

    @njit(cache=True, inline="always")
    def _pixel(ndc, z, faces, n, f, x, y, one):  # pragma: no cover - compiled
        """Face f's vertices, their offsets from pixel (x, y) (NDC), the perspective-correct barycentrics
        and 1 / Σu of view n's pixel, in the vectorised path's order of operations."""
        q0, q1, q2 = faces[f, 0], faces[f, 1], faces[f, 2]
        dx0, dy0 = ndc[n, q0, 0] - x, ndc[n, q0, 1] - y
        dx1, dy1 = ndc[n, q1, 0] - x, ndc[n, q1, 1] - y
        dx2, dy2 = ndc[n, q2, 0] - x, ndc[n, q2, 1] - y
        u0 = (dx1 * dy2 - dx2 * dy1) / z[n, q0]
        u1 = (dx2 * dy0 - dx0 * dy2) / z[n, q1]
        u2 = (dx0 * dy1 - dx1 * dy0) / z[n, q2]
        inv_s = one / (u0 + u1 + u2)
        return q0, q1, q2, dx0, dy0, dx1, dy1, dx2, dy2, u0 * inv_s, u1 * inv_s, u2 * inv_s, inv_s

    @njit(cache=True, parallel=True)
    def _forward(ndc, z, feat, faces, gid, c, ramp, out):  # pragma: no cover - compiled
        """out (N, H, W, D) ← features at the covered pixels (0 elsewhere).

        c: (1, 2, H, W) and ramp: 0, 1, 2 … in the dtype (integers as floats without a cast, which
        Numba would promote to float64).
        """
        N, H, W = gid.shape
        one, two, hf, wf = c[0], c[1], c[2], c[3]
        F = faces.shape[0]
        D = feat.shape[2]
        for n in prange(N):
            for i in range(H):
                y = one - (two * ramp[i] + one) / hf
                for j in range(W):
                    g = gid[n, i, j]
                    if g < 0:
                        for d in range(D):
                            out[n, i, j, d] = 0
                        continue
                    q0, q1, q2, _, _, _, _, _, _, b0, b1, b2, _ = _pixel(ndc, z, faces, n, g - n * F,
                                                                          (two * ramp[j] + one) / wf - one, y, one)
                    for d in range(D):
                        out[n, i, j, d] = b0 * feat[n, q0, d] + b1 * feat[n, q1, d] + b2 * feat[n, q2, d]

    @njit(cache=True, parallel=True)
    def _backward(ndc, z, feat, faces, gid, grad, c, ramp, g_ndc, g_z, g_feat):  # pragma: no cover
        """Gradients of Σ grad·out into g_ndc (N, V, 2), g_z (N, V), g_feat (N, V, D) (zero on entry)."""
        N, H, W = gid.shape
        one, two, hf, wf = c[0], c[1], c[2], c[3]
        F = faces.shape[0]
        D = feat.shape[2]
        for n in prange(N):
            for i in range(H):
                y = one - (two * ramp[i] + one) / hf
                for j in range(W):
                    g = gid[n, i, j]
                    if g < 0:
                        continue
                    q0, q1, q2, dx0, dy0, dx1, dy1, dx2, dy2, b0, b1, b2, inv_s = _pixel(
                        ndc, z, faces, n, g - n * F, (two * ramp[j] + one) / wf - one, y, one)
                    z0, z1, z2 = z[n, q0], z[n, q1], z[n, q2]
                    gb0 = gb1 = gb2 = 0 * one
                    for d in range(D):
                        gd = grad[n, i, j, d]
                        g_feat[n, q0, d] += b0 * gd
                        g_feat[n, q1, d] += b1 * gd
                        g_feat[n, q2, d] += b2 * gd
                        gb0 += gd * feat[n, q0, d]
                        gb1 += gd * feat[n, q1, d]
                        gb2 += gd * feat[n, q2, d]
                    gbar = b0 * gb0 + b1 * gb1 + b2 * gb2
                    ge0 = (gb0 - gbar) * inv_s / z0
                    ge1 = (gb1 - gbar) * inv_s / z1
                    ge2 = (gb2 - gbar) * inv_s / z2
                    g_z[n, q0] += -ge0 * b0 / inv_s
                    g_z[n, q1] += -ge1 * b1 / inv_s
                    g_z[n, q2] += -ge2 * b2 / inv_s
                    g_ndc[n, q0, 0] += ge2 * dy1 - ge1 * dy2
                    g_ndc[n, q0, 1] += ge1 * dx2 - ge2 * dx1
                    g_ndc[n, q1, 0] += ge0 * dy2 - ge2 * dy0
                    g_ndc[n, q1, 1] += ge2 * dx0 - ge0 * dx2
                    g_ndc[n, q2, 0] += ge1 * dy0 - ge0 * dy1
                    g_ndc[n, q2, 1] += ge0 * dx1 - ge1 * dx0


def _consts(dtype, H: int, W: int):
    c = torch.tensor([1.0, 2.0, H, W], dtype=dtype).numpy()
    return c, torch.arange(max(H, W), dtype=dtype).numpy()


class _VertexInterpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ndc, z, feat, faces, gid):
        N, H, W = gid.shape
        c, ramp = _consts(ndc.dtype, H, W)
        out = torch.empty(N, H, W, feat.shape[-1], dtype=ndc.dtype)
        match_torch_threads()
        _forward(ndc.detach().numpy(), z.detach().numpy(), feat.detach().numpy(), faces.numpy(), gid.numpy(), c, ramp,
                 out.numpy())
        ctx.save_for_backward(ndc, z, feat, faces, gid)
        return out

    @staticmethod
    def backward(ctx, grad):
        ndc, z, feat, faces, gid = ctx.saved_tensors
        c, ramp = _consts(ndc.dtype, *gid.shape[1:])
        g_ndc, g_z, g_feat = torch.zeros_like(ndc), torch.zeros_like(z), torch.zeros_like(feat)
        match_torch_threads()
        _backward(ndc.detach().numpy(), z.detach().numpy(), feat.detach().numpy(), faces.numpy(), gid.numpy(),
                  grad.to(ndc.dtype).contiguous().numpy(), c, ramp, g_ndc.numpy(), g_z.numpy(), g_feat.numpy())
        return g_ndc, g_z, g_feat, None, None


def interpolate_vertex_features_cpu(vertices_image: torch.Tensor, vertices_z: torch.Tensor,
                                    vertex_features: torch.Tensor, faces: torch.Tensor,
                                    gid: torch.Tensor) -> torch.Tensor:
    """(N, H, W, D) features at the pixels of ``gid`` (N, H, W) (-1: background → 0), differentiable.

    vertices_image (N, V, 2) NDC, vertices_z (N, V) Kaolin z (< 0 in front), vertex_features
    (N, V, D), faces (F, 3) long: as :func:`~dhmlib.render.rasterize.interpolate_vertex_features`
    (CPU tensors; Numba must import, see :func:`~dhmlib.render.zbuffer_cpu.zbuffer_available`).
    """
    if not zbuffer_available():  # pragma: no cover
        raise RuntimeError("interpolate_vertex_features_cpu needs numba")
    dtype = torch.promote_types(torch.promote_types(vertices_image.dtype, vertices_z.dtype), vertex_features.dtype)
    return _VertexInterpolate.apply(vertices_image.to(dtype).contiguous(), vertices_z.to(dtype).contiguous(),
                                    vertex_features.to(dtype).contiguous(), faces.to(torch.int64).contiguous(),
                                    gid.contiguous())
