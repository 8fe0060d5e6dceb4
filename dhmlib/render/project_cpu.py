"""Every vertex in every view, compiled (CPU): :func:`dhmlib.render.depth._project_vertices`'s products in one pass.

The vectorised projection makes a handful of (B, 3·C, V) temporaries forward and as many again backward;
for the evaluation's fit (64 frames × 8 views × 8000 vertices) that is ~70 ms a step of memory traffic for
~15 flops a vertex. Here each (frame, view, vertex) is computed once, with the vectorised path's float
operations in its order, so the forward is the same bit for bit:

    h_r = ((q_r + P_r0·x) + P_r1·y) + P_r2·z      r = 3c, 3c+1, 3c+2  (NDC·depth, NDC·depth, depth)
    ndc = (h_0 / max(h_2, near), h_1 / max(h_2, near)),   depth = h_2

The backward (vertices only: the cameras and the crop are data here) sums each vertex's views in a fixed
order, frames and vertex blocks in parallel (they own disjoint rows, so there are no races), and a frame's
gradient does not depend on the batch it is in (DDP splits batches).
"""
from __future__ import annotations

import torch

from dhmlib.render.compiled import match_torch_threads, numba
from dhmlib.render.zbuffer_cpu import zbuffer_available

__all__ = ["project_vertices_cpu"]

_BLOCK = 1024   # vertices per parallel task of the backward

if numba is not None:
    from numba import njit, prange

    @njit(cache=True, parallel=True)
    def _forward(x, P, q, near, ndc, depth):  # pragma: no cover - compiled
        """x (B, V, 3); P (B, 3C, 3), q (B, 3C) → ndc (B, C, V, 2), depth (B, C, V)."""
        B, V = x.shape[0], x.shape[1]
        C = P.shape[1] // 3
        for t in prange(B * C):
            b, c = t // C, t % C
            r = 3 * c
            for v in range(V):
                x0, x1, x2 = x[b, v, 0], x[b, v, 1], x[b, v, 2]
                hx = ((q[b, r] + P[b, r, 0] * x0) + P[b, r, 1] * x1) + P[b, r, 2] * x2
                hy = ((q[b, r + 1] + P[b, r + 1, 0] * x0) + P[b, r + 1, 1] * x1) + P[b, r + 1, 2] * x2
                hz = ((q[b, r + 2] + P[b, r + 2, 0] * x0) + P[b, r + 2, 1] * x1) + P[b, r + 2, 2] * x2
                safe = max(hz, near)
                ndc[b, c, v, 0] = hx / safe
                ndc[b, c, v, 1] = hy / safe
                depth[b, c, v] = hz

    @njit(cache=True, parallel=True)
    def _backward(x, P, q, near, g_ndc, g_depth, g_x, block):  # pragma: no cover - compiled
        """g_x (B, V, 3) ← the vertices' gradient of Σ g_ndc·ndc + g_depth·depth."""
        B, V = x.shape[0], x.shape[1]
        C = P.shape[1] // 3
        nblk = (V + block - 1) // block
        for t in prange(B * nblk):
            b, k = t // nblk, t % nblk
            for v in range(k * block, min(V, (k + 1) * block)):
                x0, x1, x2 = x[b, v, 0], x[b, v, 1], x[b, v, 2]
                s0 = s1 = s2 = 0 * x0
                for c in range(C):
                    r = 3 * c
                    hx = ((q[b, r] + P[b, r, 0] * x0) + P[b, r, 1] * x1) + P[b, r, 2] * x2
                    hy = ((q[b, r + 1] + P[b, r + 1, 0] * x0) + P[b, r + 1, 1] * x1) + P[b, r + 1, 2] * x2
                    hz = ((q[b, r + 2] + P[b, r + 2, 0] * x0) + P[b, r + 2, 1] * x1) + P[b, r + 2, 2] * x2
                    gx, gy = g_ndc[b, c, v, 0], g_ndc[b, c, v, 1]
                    gz = g_depth[b, c, v]
                    if hz >= near:      # clamp_min passes the gradient where the input is not below the bound
                        safe = hz
                        gz = gz - (gx * hx + gy * hy) / (safe * safe)
                    else:
                        safe = near
                    ghx, ghy = gx / safe, gy / safe
                    s0 += P[b, r, 0] * ghx + P[b, r + 1, 0] * ghy + P[b, r + 2, 0] * gz
                    s1 += P[b, r, 1] * ghx + P[b, r + 1, 1] * ghy + P[b, r + 2, 1] * gz
                    s2 += P[b, r, 2] * ghx + P[b, r + 1, 2] * ghy + P[b, r + 2, 2] * gz
                g_x[b, v, 0] = s0
                g_x[b, v, 1] = s1
                g_x[b, v, 2] = s2


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, P, q, near):
        B, V = x.shape[:2]
        C = P.shape[1] // 3
        ndc = torch.empty(B, C, V, 2, dtype=x.dtype)
        depth = torch.empty(B, C, V, dtype=x.dtype)
        ctx.near = x.new_tensor(near).numpy()[()]   # a scalar of the work dtype, as clamp_min rounds the bound
        match_torch_threads()
        _forward(x.detach().numpy(), P.numpy(), q.numpy(), ctx.near, ndc.numpy(), depth.numpy())
        ctx.save_for_backward(x, P, q)
        return ndc, depth

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ndc, g_depth):
        x, P, q = ctx.saved_tensors
        B, V = x.shape[:2]
        C = P.shape[1] // 3
        g_ndc = torch.zeros(B, C, V, 2, dtype=x.dtype) if g_ndc is None else g_ndc.to(x.dtype).contiguous()
        g_depth = torch.zeros(B, C, V, dtype=x.dtype) if g_depth is None else g_depth.to(x.dtype).contiguous()
        g_x = torch.empty_like(x)
        match_torch_threads()
        _backward(x.detach().numpy(), P.numpy(), q.numpy(), ctx.near, g_ndc.numpy(), g_depth.numpy(), g_x.numpy(),
                  _BLOCK)
        return g_x, None, None, None


def project_vertices_cpu(vertices: torch.Tensor, P: torch.Tensor, q: torch.Tensor, near: float):
    """NDC (B, C, V, 2) and camera depth (B, C, V), mm, of ``vertices`` (B, V, 3) world mm (CPU, differentiable
    in the vertices) under each view's projective rows ``P`` (B, 3C, 3) and ``q`` (B, 3C) (no gradient):
    ``[h_x, h_y, depth] = P_c x + q_c``, ``ndc = h / max(depth, near)``. Needs Numba
    (:func:`~dhmlib.render.zbuffer_cpu.zbuffer_available`)."""
    if not zbuffer_available():  # pragma: no cover
        raise RuntimeError("project_vertices_cpu needs numba")
    if P.requires_grad or q.requires_grad:
        raise ValueError("project_vertices_cpu: the cameras must not need a gradient (use the vectorised path)")
    dt = vertices.dtype
    return _Project.apply(vertices.contiguous(), P.detach().to(dt).contiguous(), q.detach().to(dt).contiguous(),
                          float(near))
