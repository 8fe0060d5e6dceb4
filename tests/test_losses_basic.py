"""Joint, depth and Laplacian losses against slow, straightforward references."""

import numpy as np
import pytest
import torch
from tests.toyhand import toy_hand

from dhmlib.losses import MeshLaplacian, apply_laplacian, depth_loss, joint_loss, laplacian_loss, uniform_laplacian


# ---------------------------------------------------------------- joint
def _joint_ref(pred, target, valid, normalize):
    B, J, _ = pred.shape
    total, n = 0.0, 0
    for b in range(B):
        for j in range(J):
            for c in range(3):
                v = float(valid[b, j])
                if v != 0:
                    total += abs(float(pred[b, j, c]) - float(target[b, j, c])) * v
                    n += 1
    return total / (B * J * 3) if normalize == "all" else total / max(n, 1)


@pytest.mark.parametrize("normalize", ["all", "valid"])
def test_joint_loss_equals_loop_reference(normalize):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 22, 3, generator=g) * 20, torch.randn(3, 22, 3, generator=g) * 20
    valid = (torch.rand(3, 22, generator=g) > 0.3).float()
    got = joint_loss(pred.double(), target.double(), valid, normalize=normalize)
    assert got.item() == pytest.approx(_joint_ref(pred, target, valid, normalize), rel=1e-12)
    assert joint_loss(pred, target, valid[..., None], normalize=normalize).item() == pytest.approx(
        got.item(), rel=1e-5)


def test_joint_loss_masked_entries_do_not_contribute():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 22, 3, generator=g), torch.randn(2, 22, 3, generator=g)
    valid = torch.ones(2, 22)
    valid[0, 3] = valid[1, 10] = 0
    pred.requires_grad_(True)
    loss = joint_loss(pred, target, valid)
    loss.backward()
    assert pred.grad[0, 3].abs().sum() == 0 and pred.grad[1, 10].abs().sum() == 0
    assert pred.grad[0, 4].abs().sum() > 0
    t2 = target.clone()
    t2[0, 3] = 1e6
    t2[1, 10] = float("nan")
    assert joint_loss(pred, t2, valid).item() == loss.item()
    with pytest.raises(ValueError, match="valid"):
        joint_loss(pred, target, valid[:, :5])


# ---------------------------------------------------------------- depth
def _depth_ref(r, t, beta, normalize):
    total, n = 0.0, 0
    for idx in np.ndindex(*r.shape):
        a, b = float(r[idx]), float(t[idx])
        if a != 0 and b != 0:
            d = abs(a - b)
            total += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
            n += 1
    return total / r.numel() if normalize == "all" else total / max(n, 1)


def _depth_maps(seed, shape=(2, 3, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    r = 500 + 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    t = 500 + 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    r[torch.rand(shape, generator=g) < 0.3] = 0
    t[torch.rand(shape, generator=g) < 0.3] = 0
    return r, t


@pytest.mark.parametrize("normalize", ["all", "valid"])
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_depth_loss_equals_per_pixel_reference(normalize, beta):
    r, t = _depth_maps(2)
    got = depth_loss(r, t, beta=beta, normalize=normalize).item()
    assert got == pytest.approx(_depth_ref(r, t, beta, normalize), rel=1e-12)
    # the quadratic and the linear branches are both exercised
    d = (r - t).abs()[(r != 0) & (t != 0)]
    assert (d < beta).any() and (d > beta).any()


def test_depth_loss_ignores_pixels_where_either_map_is_empty():
    r, t = _depth_maps(3)
    r.requires_grad_(True)
    loss = depth_loss(r, t)
    loss.backward()
    empty_t = (t == 0) & (r != 0)
    assert empty_t.any() and (r.grad[empty_t] == 0).all()
    assert (r.grad[(r != 0) & (t != 0)] != 0).any()
    r2 = r.detach().clone()
    r2[empty_t] = r2[empty_t] + 123.0   # any rendered depth where the target is empty: no change
    assert depth_loss(r2, t).item() == loss.item()
    t2 = t.clone()
    t2[(r == 0) & (t != 0)] += 50.0     # any target where nothing is rendered: no change
    assert depth_loss(r.detach(), t2).item() == loss.item()


@pytest.mark.parametrize("normalize", ["all", "valid"])
def test_depth_loss_without_valid_pixels_is_zero_with_finite_gradient(normalize):
    r = torch.zeros(2, 3, 4, 4, requires_grad=True)
    t = torch.full((2, 3, 4, 4), 400.0)
    loss = depth_loss(r, t, normalize=normalize)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(r.grad).all() and (r.grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", ["all", "valid"])
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_compiled_depth_loss_gives_the_vectorised_gradient_bit_for_bit(monkeypatch, dtype, normalize, beta):
    """On the CPU depth_loss runs one compiled pass each way (dhmlib.losses.depth_cpu); the vectorised
    ops are the reference: the same gradient bit for bit, the value up to summation order. The maps
    span several of the kernel's chunks of pixels and hold NaN where the other map is empty."""
    from dhmlib.losses import basic, depth_cpu

    if depth_cpu.numba is None:
        pytest.skip("numba does not import: depth_loss is the vectorised path only")
    r, t = _depth_maps(5, shape=(3, 4, 96, 97))
    r, t = r.to(dtype), t.to(dtype)
    r[(t == 0) & (r != 0)] = float("nan")
    t[(r == 0) & (t != 0)] = float("inf")
    a, b = r.clone().requires_grad_(True), r.clone().requires_grad_(True)
    got = depth_loss(a, t, beta=beta, normalize=normalize)
    monkeypatch.setattr(basic, "compiled_depth_loss_available", lambda *args: False)
    want = depth_loss(b, t, beta=beta, normalize=normalize)
    (2.5 * got).backward()
    (2.5 * want).backward()
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-6 if dtype == torch.float32 else 1e-13)
    assert torch.equal(a.grad, b.grad) and (a.grad != 0).sum() > 1000
    # a target with a gradient of its own takes the vectorised path (the compiled one has none for it)
    assert not depth_cpu.compiled_depth_loss_available(r, t.clone().requires_grad_(True))


# ---------------------------------------------------------------- Laplacian
def _grid(n=6, m=5):
    xs, ys = np.meshgrid(np.arange(n) * 2.0, np.arange(m) * 2.0, indexing="ij")
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * m)], 1)
    faces = []
    for i in range(n - 1):
        for j in range(m - 1):
            a, b, c, d = i * m + j, (i + 1) * m + j, i * m + j + 1, (i + 1) * m + j + 1
            faces += [(a, b, c), (b, d, c)]
    interior = np.array([i * m + j for i in range(1, n - 1) for j in range(1, m - 1)])
    return verts, np.array(faces), interior


def _dense_ref(faces, V):
    nbrs = [set() for _ in range(V)]
    for f in faces:
        for a in range(3):
            for b in range(3):
                if f[a] != f[b]:
                    nbrs[f[a]].add(int(f[b]))
    L = np.zeros((V, V))
    for i in range(V):
        if nbrs[i]:
            L[i, i] = 1.0
            for j in nbrs[i]:
                L[i, j] = -1.0 / len(nbrs[i])
    return L


def test_flat_grid_interior_laplacian_is_zero():
    verts, faces, interior = _grid()
    V = len(verts)
    x = torch.tensor(verts)[None]
    for op in (uniform_laplacian(torch.tensor(faces), V, torch.float64), MeshLaplacian(torch.tensor(faces), V)):
        Lx = apply_laplacian(x, op)
        assert Lx[0, interior].abs().max() < 1e-12
        boundary = np.setdiff1d(np.arange(V), interior)
        assert Lx[0, boundary].abs().max() > 0.1   # the boundary is not excluded by construction
    # a (regular) grid in a tilted plane: same
    R = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    assert apply_laplacian(x @ R.T, MeshLaplacian(torch.tensor(faces), V))[
        0, interior].abs().max() < 1e-12


@pytest.mark.parametrize("layout", [torch.sparse_csr, torch.sparse_coo])
def test_sparse_laplacian_equals_dense_loop_reference_on_the_toy_hand(layout):
    hand = toy_hand(num_vertices=300, seed=1)   # random faces: shared edges, degenerate faces, isolated vertices
    faces = np.asarray(hand.faces)
    V = hand.num_vertices
    ref = _dense_ref(faces, V)
    assert (np.abs(ref).sum(1) == 0).any()     # isolated vertices are exercised
    L = uniform_laplacian(torch.tensor(faces), V, torch.float64, layout=layout)
    assert L.layout == layout
    np.testing.assert_allclose(L.to_dense().numpy(), ref, atol=1e-15)
    M = MeshLaplacian(torch.tensor(faces), V).double()
    np.testing.assert_allclose(M.sparse().to_dense().numpy(), ref, atol=1e-15)
    x = torch.randn(2, V, 3, dtype=torch.float64)
    want = np.einsum("uv,bvc->buc", ref, x.numpy())
    np.testing.assert_allclose(M(x).numpy(), want, atol=1e-12)


def _lap_loss_ref(x, faces, V):
    L = _dense_ref(faces, V)
    total = 0.0
    for b in range(x.shape[0]):
        for i in range(V):
            s = np.zeros(3)
            for j in range(V):
                s += L[i, j] * x[b, j].numpy()
            total += float(s @ s)
    return total / (x.shape[0] * V)


def test_laplacian_loss_equals_loop_reference():
    verts, faces, _ = _grid(4, 4)
    V = len(verts)
    x = torch.randn(3, V, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    want = _lap_loss_ref(x, faces, V)
    ft = torch.tensor(faces)
    for op in (uniform_laplacian(ft, V, torch.float64), uniform_laplacian(ft, V, torch.float64, torch.sparse_coo),
               MeshLaplacian(ft, V)):   # float32 buffers are cast to x's dtype
        assert laplacian_loss(x, op).item() == pytest.approx(want, rel=1e-6)
    # a constant offset field costs nothing (the offset form's minimum is the template)
    assert laplacian_loss(torch.full((2, V, 3), 7.0, dtype=torch.float64), MeshLaplacian(ft, V)).item() < 1e-25


def test_laplacian_gradcheck_float64():
    verts, faces, _ = _grid(3, 3)
    V = len(verts)
    ft = torch.tensor(faces)
    x = torch.randn(2, V, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: laplacian_loss(v, MeshLaplacian(ft, V)), (x,))
    assert torch.autograd.gradcheck(lambda v: laplacian_loss(v, uniform_laplacian(ft, V, torch.float64)), (x,))
    assert torch.autograd.gradcheck(lambda v: laplacian_loss(v, uniform_laplacian(ft, V, torch.float64,
                                                                                 layout=torch.sparse_coo)), (x,))


def test_mesh_laplacian_moves_to_meta_and_float64():
    verts, faces, _ = _grid(4, 3)
    V = len(verts)
    M = MeshLaplacian(torch.tensor(faces), V)
    assert M.degree.dtype == torch.float32
    Md = M.double()
    assert Md.degree.dtype == torch.float64
    assert laplacian_loss(torch.randn(1, V, 3, dtype=torch.float64), Md).dtype == torch.float64
    Mm = MeshLaplacian(torch.tensor(faces), V).to("meta")
    out = laplacian_loss(torch.empty(2, V, 3, device="meta"), Mm)
    assert out.device.type == "meta" and out.shape == ()
    with pytest.raises(ValueError, match="vertices"):
        laplacian_loss(torch.randn(1, V + 1, 3), M)
