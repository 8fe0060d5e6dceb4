"""dhmlib.render: cameras, crop, rasterizer (against its slow twin), renders and input errors."""

import numpy as np
import pytest
import torch

from dhmlib.mesh.normals import vertex_normals
from dhmlib.render import (KAOLIN_UNAVAILABLE_REASON, Cameras, KRTError, Light, RasterSettings, bbox_from_joints,
                           crop_from_bbox, crop_from_joints, identity_crop, is_closed_mesh, kaolin_available,
                           project_mesh, rasterize, read_krt, render_depth, render_face_index, render_shaded,
                           render_silhouette, ring_cameras, write_krt)
from dhmlib.render.reference import rasterize_reference

TORCH = RasterSettings(backend="torch")

KRT_TEXT = """400262
1200.5 0 160.25
0 1201.0 250.5
0 0 1
0.1 -0.02 0 0 0
1 0 0 10.0
0 1 0 -20.0
0 0 1 500.0

400263  
900.0 0 167.0
0 901.0 256.0
0 0 1
0 0 0 0 0
0 0 1 0.0
0 1 0 0.0
-1 0 0 600.0

"""


def _icosphere(radius=40.0, subdivisions=2, dtype=torch.float64):
    import trimesh
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(m.vertices, dtype=dtype), torch.tensor(m.faces, dtype=torch.long)


def _random_scene(B=2, F=6, seed=0, dtype=torch.float64, D=2):
    g = torch.Generator().manual_seed(seed)
    fz = -(torch.rand(B, F, 3, generator=g, dtype=dtype) * 3 + 1)
    fimg = torch.rand(B, F, 3, 2, generator=g, dtype=dtype) * 2.4 - 1.2
    feat = torch.randn(B, F, 3, D, generator=g, dtype=dtype)
    return fz, fimg, feat


# ---------------------------------------------------------------------------- cameras
def test_krt_parse_write_roundtrip(tmp_path):
    p = tmp_path / "KRT_512"
    p.write_text(KRT_TEXT)
    recs = read_krt(p)
    assert [r.name for r in recs] == ["400262", "400263"]
    assert recs[0].K[0, 0] == 1200.5 and recs[0].dist.shape == (5,) and recs[0].Rt[2, 3] == 500.0
    write_krt(tmp_path / "out", recs)
    again = read_krt(tmp_path / "out")
    for a, b in zip(recs, again):
        assert a.name == b.name and np.array_equal(a.K, b.K) and np.array_equal(a.Rt, b.Rt)
    cams = Cameras.from_krt(p, names=["400263", "400262"], dtype=torch.float64)
    assert cams.names == ("400263", "400262")
    write_krt(tmp_path / "cams", cams)
    assert np.array_equal(read_krt(tmp_path / "cams")[1].Rt, recs[0].Rt)


@pytest.mark.parametrize("text, line, needle", [
    (KRT_TEXT.replace("0 1201.0 250.5", "0 1201.0"), 3, "3 numbers"),
    (KRT_TEXT.replace("0 0 1 500.0", "0 0 1 abc"), 8, "numbers"),
    (KRT_TEXT.replace("0 1 0 -20.0\n", ""), 1, "8 lines"),
    (KRT_TEXT.replace("1 0 0 10.0", "2 0 0 10.0"), 6, "rotation"),
])
def test_krt_errors_name_file_and_line(tmp_path, text, line, needle):
    p = tmp_path / "KRT_512"
    p.write_text(text)
    with pytest.raises(KRTError, match=needle) as err:
        read_krt(p)
    assert err.value.line == line and str(p) in str(err.value)


def test_camera_conventions_position_projection_batching(tmp_path):
    p = tmp_path / "KRT_512"
    p.write_text(KRT_TEXT)
    cams = Cameras.from_krt(p, dtype=torch.float64)
    R, t = cams.R, cams.t
    assert torch.allclose(cams.position, -(R.transpose(-1, -2) @ t[..., None])[..., 0])
    x = torch.tensor([[[1.0, 2.0, 3.0], [-5.0, 4.0, 10.0]]], dtype=torch.float64)  # (1, N, 3)
    uv = cams.project(x.unsqueeze(0))  # (1, C, N, 2)
    xc = (R[0] @ x[0].T).T + t[0]
    expect = xc[:, :2] / xc[:, 2:] * cams.focal[0] + cams.principal[0]
    assert torch.allclose(uv[0, 0], expect)
    # batching: (C,) → (B, C), per-sample view selection, stacking
    bc = cams.expand(3)
    assert bc.batch_shape == (3, 2)
    sel = bc.index_select(torch.tensor([[1], [0], [1]]))
    assert sel.batch_shape == (3, 1) and torch.equal(sel.R[0, 0], cams.R[1])
    assert Cameras.stack([cams, cams]).batch_shape == (2, 2)
    assert cams.index_select([1]).names == ("400263",)
    # differentiable in the camera parameters
    f = cams.focal.clone().requires_grad_()
    Cameras(cams.R, cams.t, f, cams.principal).project(x).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


def test_look_at_centres_the_target():
    cams = ring_cameras(torch.tensor([10.0, 20.0, 30.0]), 6, dtype=torch.float64)
    uv = cams.project(torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64))
    assert torch.allclose(uv[:, 0], cams.principal, atol=1e-9)
    assert torch.allclose(cams.R @ cams.R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3))
    assert torch.allclose((cams.position - torch.tensor([10.0, 20.0, 30.0])).norm(dim=-1),
                          torch.full((6,), 550.0, dtype=torch.float64))


def test_look_at_keeps_up_at_the_top_of_the_image():
    eye = torch.tensor([[0.0, -500.0, 0.0], [400.0, 0.0, 300.0]], dtype=torch.float64)
    cams = Cameras.look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                           torch.tensor([500.0, 500.0], dtype=torch.float64), torch.tensor([167.0, 256.0], dtype=torch.float64))
    above = cams.project(torch.tensor([[0.0, 0.0, 100.0]], dtype=torch.float64))[:, 0]
    assert (above[:, 1] < 256.0 - 10).all(), "a point above the target must appear above the image centre"
    right = cams.project(torch.tensor([[100.0, 0.0, 0.0]], dtype=torch.float64))[0, 0]
    assert right[0] > 167.0 + 10, "seen from −y with z up, world +x is image right"
    assert torch.allclose(torch.linalg.det(cams.R), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="straight along 'up'"):
        Cameras.look_at(torch.tensor([[0.0, 0.0, 500.0]]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]),
                        torch.tensor([500.0, 500.0]), torch.tensor([167.0, 256.0]))


# ---------------------------------------------------------------------------- crop
def test_crop_maps_enlarged_box_onto_render_and_inverts():
    joints = torch.tensor([[[100.0, 200.0], [140.0, 260.0], [999.0, 999.0]]])  # last one invalid
    valid = torch.tensor([[True, True, False]])
    bbox = bbox_from_joints(joints, valid)
    assert torch.allclose(bbox, torch.tensor([[100.0, 200.0, 40.0, 60.0]]))
    crop = crop_from_joints(joints, valid, size=(256, 256))
    # square render: the 40×60 box grows to 60×60, then ×1.5 = 90 px around the centre (120, 230)
    corners = torch.tensor([[[75.0, 185.0], [165.0, 275.0], [120.0, 230.0]]])
    assert torch.allclose(crop.apply(corners), torch.tensor([[[0.0, 0.0], [256.0, 256.0], [128.0, 128.0]]]))
    back = crop.inverse().apply(crop.apply(joints))
    assert torch.allclose(back, joints, atol=1e-4)
    # OpenCV matrix: integer pixel centres, so centre (j, i) ↔ continuous (j + .5, i + .5)
    M = crop.opencv_matrix()[0]
    p = torch.tensor([75.0, 185.0])
    assert torch.allclose(M[:, :2] @ (p - 0.5) + M[:, 2], crop.apply(p.view(1, 1, 2))[0, 0] - 0.5)
    # non-square render keeps the aspect ratio (W/H = 0.5 → box 45 wide, 90 high after ×1.5)
    tall = crop_from_bbox(bbox, size=(128, 64))
    assert torch.allclose(tall.apply(torch.tensor([[[120.0 - 30.0, 230.0 - 60.0]]])), torch.zeros(1, 1, 2), atol=1e-4)
    with pytest.raises(ValueError, match="at least one valid joint"):
        bbox_from_joints(joints, torch.zeros(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------- rasterizer vs slow twin
@pytest.mark.parametrize("perspective_correct", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rasterize_torch_equals_reference_values(seed, perspective_correct):
    fz, fimg, feat = _random_scene(seed=seed)
    valid = torch.rand(2, 6, generator=torch.Generator().manual_seed(seed)) > 0.2
    a = rasterize(9, 11, fz, fimg, feat, valid, backend="torch", perspective_correct=perspective_correct)
    r = rasterize_reference(9, 11, fz, fimg, feat, valid, perspective_correct=perspective_correct)
    assert torch.equal(a.face_idx, r.face_idx)
    assert (r.face_idx >= 0).sum() > 20
    torch.testing.assert_close(a.features, r.features, rtol=1e-10, atol=1e-10)


def test_rasterize_float32_and_feature_lists():
    fz, fimg, feat = _random_scene(seed=3, dtype=torch.float32, D=3)
    a = rasterize(16, 12, fz, fimg, [feat[..., :1], feat[..., 1:]], backend="torch")
    r = rasterize_reference(16, 12, fz.double(), fimg.double(), feat.double())
    assert isinstance(a.features, tuple) and a.features[1].shape == (2, 16, 12, 2)
    same = a.face_idx == r.face_idx
    assert same.float().mean() > 0.99  # float32 may flip pixels lying on an edge
    torch.testing.assert_close(torch.cat(a.features, -1)[same].double(), r.features[same], rtol=1e-4, atol=1e-4)


def test_rasterize_large_faces_are_tiled():
    """Faces much larger than the biggest tile (8 px) are cut into tiles: whole image covered."""
    fimg = torch.tensor([[[[-1.5, -1.5], [1.5, -1.5], [1.5, 1.5]], [[-1.5, -1.5], [1.5, 1.5], [-1.5, 1.5]]]])
    fz = torch.full((1, 2, 3), -2.0)
    feat = torch.ones(1, 2, 3, 1)
    out, idx = rasterize(37, 53, fz, fimg, feat, backend="torch")
    assert (idx >= 0).all() and torch.allclose(out, torch.ones_like(out))
    r = rasterize_reference(5, 7, fz.double(), fimg.double(), feat.double())
    assert torch.equal(rasterize(5, 7, fz, fimg, feat, backend="torch").face_idx, r.face_idx)


@pytest.mark.parametrize("perspective_correct", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_zbuffer_picks_the_vectorised_paths_faces(dtype, perspective_correct):
    """The CPU kernel (Numba) and the vectorised z-buffer (what CUDA runs) choose the same face at
    every pixel, on scenes of tiny, tile-sized and large faces, with and without a valid mask."""
    import importlib
    from dhmlib.render.zbuffer_cpu import visible_faces_cpu, zbuffer_available
    raster = importlib.import_module("dhmlib.render.rasterize")
    if not zbuffer_available():
        pytest.skip("numba does not import: the vectorised path is the only one")
    covered = 0
    for seed, (F, scale, H, W) in enumerate([(400, 0.1, 24, 31), (60, 0.6, 40, 40), (12, 2.5, 33, 29),
                                             (3000, 0.02, 96, 96)]):
        g = torch.Generator().manual_seed(seed)
        centre = torch.rand(3, F, 1, 2, generator=g, dtype=dtype) * 2.2 - 1.1
        fimg = centre + (torch.rand(3, F, 3, 2, generator=g, dtype=dtype) - 0.5) * scale
        fz = -(torch.rand(3, F, 3, generator=g, dtype=dtype) * 3 + 1)
        fz[0, :5, 0] = 0.5                                         # partly behind the camera
        for valid in (None, torch.rand(3, F, generator=g) > 0.3):
            a = raster._visible_faces(H, W, fz, fimg, valid, perspective_correct, 1 << 12)
            b = visible_faces_cpu(H, W, fz, fimg, valid, perspective_correct)
            assert torch.equal(a, b)
            covered += int((a >= 0).sum())
    assert covered > 3000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_interpolation_equals_the_vectorised_one(dtype):
    """The compiled per-pixel interpolation (Numba, CPU) gives the vectorised path's features bit for
    bit and the same gradients to the three vertex tensors (up to summation order)."""
    import importlib
    from dhmlib.render.interpolate_cpu import interpolate_vertex_features_cpu
    from dhmlib.render.zbuffer_cpu import zbuffer_available
    raster = importlib.import_module("dhmlib.render.rasterize")
    if not zbuffer_available():
        pytest.skip("numba does not import: the vectorised path is the only one")
    g = torch.Generator().manual_seed(3)
    N, V, F, H, W, D = 3, 300, 500, 37, 41, 2
    ndc = torch.rand(N, V, 2, generator=g, dtype=dtype) * 2.2 - 1.1
    z = -(torch.rand(N, V, generator=g, dtype=dtype) * 3 + 1)
    feat = torch.randn(N, V, D, generator=g, dtype=dtype)
    faces = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(F)])
    faces = faces[((ndc[0, faces[:, 1]] - ndc[0, faces[:, 0]]).norm(dim=-1) < 0.5)
                  & ((ndc[0, faces[:, 2]] - ndc[0, faces[:, 0]]).norm(dim=-1) < 0.5)]
    fl = faces.reshape(-1)
    gid = raster.visible_faces(H, W, z.index_select(1, fl).reshape(N, -1, 3),
                               ndc.index_select(1, fl).reshape(N, -1, 3, 2), None)
    assert int((gid >= 0).sum()) > 500
    w = torch.randn(N, H, W, D, generator=g, dtype=dtype)
    grads = []
    outs = []
    for fn in (lambda *a: raster.interpolate_vertex_features(H, W, *a),
               interpolate_vertex_features_cpu):
        xs = [t.clone().requires_grad_() for t in (ndc, z, feat)]
        out = fn(*xs, faces, gid)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad for x in xs])
    assert torch.equal(outs[0], outs[1])
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_projection_equals_the_vectorised_one(dtype, monkeypatch):
    """The compiled projection of every vertex into every view (Numba, CPU) gives the vectorised path's NDC and
    depth bit for bit, vertices nearer than ``near`` (clamped) included, and the same vertex gradient (up to
    summation order); a gradient through the cameras takes the vectorised path."""
    import dhmlib.render.depth as depth_mod
    from dhmlib.render.zbuffer_cpu import zbuffer_available
    if not zbuffer_available():
        pytest.skip("numba does not import: the vectorised path is the only one")
    g = torch.Generator().manual_seed(5)
    B, C, V = 3, 4, 500
    cams = ring_cameras(torch.zeros(3), C, distance=450.0, dtype=dtype)
    crop = crop_from_bbox(torch.tensor([[100.0, 120.0, 170.0, 175.0]], dtype=dtype).expand(C, 4), (96, 96))
    x = torch.randn(B, V, 3, generator=g, dtype=dtype) * 60
    x[0, :7] = -cams.R[0].T @ cams.t[0]          # at camera 0's centre: depth 0, below near (clamped)

    def project(fast):
        monkeypatch.setattr(depth_mod, "zbuffer_available", lambda: fast)
        xs = x.clone().requires_grad_()
        ndc, z = depth_mod._project_vertices(xs, cams, crop, 96, 96, 1.0)
        gn = torch.randn(ndc.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        ((ndc * gn).sum() + (z * gz).sum()).backward()
        return ndc.detach(), z.detach(), xs.grad

    fast, slow = project(True), project(False)
    assert bool((slow[1] < 1.0).any())                                  # the clamp is exercised
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast[2], slow[2], rtol=tol, atol=tol * float(slow[2].abs().max()))
    # cameras that need a gradient: the vectorised path, which differentiates them
    monkeypatch.setattr(depth_mod, "zbuffer_available", lambda: True)
    moving = Cameras(cams.R, cams.t.clone().requires_grad_(), cams.focal, cams.principal)
    ndc, _ = depth_mod._project_vertices(x, moving, crop, 96, 96, 1.0)
    ndc.sum().backward()
    assert moving.t.grad is not None and moving.t.grad.abs().max() > 0


@pytest.mark.parametrize("cull", [False, True])
def test_render_depth_at_pixels_equals_the_face_tensor_path(cull):
    """render_depth's pixel-priced path (z-buffer read through the faces, graph from the covered
    pixels to the vertices) gives rasterize-on-project_mesh's depth bit for bit, and its gradient
    up to rounding; near-plane faces and back faces are dropped alike."""
    import importlib
    raster = importlib.import_module("dhmlib.render.rasterize")
    v, f = _icosphere(dtype=torch.float32, subdivisions=3)
    cams = ring_cameras(torch.zeros(3), 3, distance=60.0, focal=120.0, image_size=(64, 48))
    settings = RasterSettings(backend="torch", cull_backfaces=cull, near=25.0)   # the sphere crosses near
    crop = crop_from_bbox(torch.tensor([[4.0, 6.0, 40.0, 52.0]]).expand(3, 4), size=(40, 40))
    w = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    v2 = torch.stack([v, v * 0.9 + 2.0])
    a_v, b_v = v2.clone().requires_grad_(), v2.clone().requires_grad_()
    a = render_depth(a_v, f, cams, crop, settings=settings)
    pm = project_mesh(b_v, f, cams, crop, settings=settings)
    out, _ = raster._rasterize_torch(40, 40, pm.face_vertices_z, pm.face_vertices_image,
                                     (-pm.face_vertices_z).unsqueeze(-1), pm.valid_faces, True, 1 << 18)
    b = out[..., 0].reshape(a.shape)
    assert torch.equal(a, b) and int((a > 0).sum()) > 1000
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert b_v.grad.abs().max() > 0
    torch.testing.assert_close(a_v.grad, b_v.grad, rtol=1e-4, atol=1e-4)


def test_rasterize_gradients_equal_reference():
    fz, fimg, feat = _random_scene(seed=4)
    w = torch.randn(2, 9, 11, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (lambda *a: rasterize(*a, backend="torch"), rasterize_reference):
        leaves = [t.clone().requires_grad_() for t in (fz, fimg, feat)]
        out, _ = fn(9, 11, *leaves)
        (out * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for g_fast, g_ref in zip(*grads):
        assert g_fast.abs().sum() > 0
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-9)


def test_rasterize_gradcheck_interior_pixels():
    # two disjoint triangles at different depths; only pixels well inside a face enter the loss
    fimg = torch.tensor([[[[-0.9, -0.8], [0.1, -0.7], [-0.4, 0.6]], [[0.2, 0.9], [0.95, -0.2], [0.9, 0.8]]]],
                        dtype=torch.float64)
    fz = torch.tensor([[[-2.0, -3.0, -2.5], [-4.0, -1.5, -2.0]]], dtype=torch.float64)
    feat = torch.randn(1, 2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    H, W = 10, 12
    ref = rasterize_reference(H, W, fz, fimg, feat)
    # barycentric margin: recompute screen-space weights of each covered pixel
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    for i in range(H):
        for j in range(W):
            f = int(ref.face_idx[0, i, j])
            if f < 0:
                continue
            p = torch.tensor([(2 * j + 1) / W - 1, 1 - (2 * i + 1) / H], dtype=torch.float64)
            v = fimg[0, f]
            area = torch.linalg.det(torch.stack([v[1] - v[0], v[2] - v[0]]))
            w = [torch.linalg.det(torch.stack([v[(k + 1) % 3] - p, v[(k + 2) % 3] - p])) / area for k in range(3)]
            mask[0, i, j] = min(float(x) for x in w) > 0.05
    assert mask.sum() >= 6

    def fn(z, xy, f):
        return rasterize(H, W, z, xy, f, backend="torch").features[mask]

    assert torch.autograd.gradcheck(fn, (fz.clone().requires_grad_(), fimg.clone().requires_grad_(),
                                         feat.clone().requires_grad_()), eps=1e-6, atol=1e-6)


def test_rasterize_rejects_bad_input():
    fz, fimg, feat = _random_scene()
    with pytest.raises(ValueError, match="positive int"):
        rasterize(0, 4, fz, fimg, feat)
    with pytest.raises(ValueError, match="face_vertices_image"):
        rasterize(4, 4, fz, fimg[:1], feat)
    with pytest.raises(ValueError, match="face_features"):
        rasterize(4, 4, fz, fimg, feat[:, :3])
    bad = fimg.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        rasterize(4, 4, fz, bad, feat)
    with pytest.raises(ValueError, match="backend"):
        rasterize(4, 4, fz, fimg, feat, backend="opengl")
    with pytest.warns(UserWarning, match="ignores"):
        rasterize(4, 4, fz, fimg, feat, backend="torch", multiplier=1000)


# ---------------------------------------------------------------------------- renders
def test_render_depth_sphere_exact_and_consistent():
    v, f = _icosphere(radius=40.0, subdivisions=3)
    cams = ring_cameras(torch.zeros(3), 4, distance=300.0, focal=100.0, image_size=(64, 48), dtype=torch.float64)
    d = render_depth(v[None], f, cams, size=(64, 48))
    assert d.shape == (1, 4, 64, 48)
    fg = d > 0
    assert 0.1 < fg.float().mean() < 0.5
    # nearest point of the sphere is at camera distance − radius (inscribed mesh: slightly farther)
    assert abs(float(d[fg].min()) - 260.0) < 0.5
    assert torch.equal(render_silhouette(v[None], f, cams, size=(64, 48)), fg.double())
    idx = render_face_index(v[None], f, cams, size=(64, 48))
    assert torch.equal(idx >= 0, fg)
    # convex closed outward mesh: culling back faces changes nothing
    assert is_closed_mesh(f, v.shape[0])
    assert torch.equal(render_depth(v[None], f, cams, size=(64, 48), settings=RasterSettings(cull_backfaces=True)), d)
    # crop = identity crop of the same size gives the same image; (B, C) cameras = (C,) cameras
    same = render_depth(v[None], f, cams, identity_crop((4,), (64, 48), dtype=torch.float64))
    assert torch.equal(same, d)
    assert torch.equal(render_depth(v[None], f, cams.expand(1), size=(64, 48)), d)


def test_render_shaded_range_background_and_grad():
    v, f = _icosphere(radius=40.0, subdivisions=2, dtype=torch.float32)
    cams = ring_cameras(torch.zeros(3), 2, distance=300.0, focal=400.0, image_size=(32, 32))
    v = v[None].clone().requires_grad_()
    r = render_shaded(v, f, cams, size=(32, 32), background=1.0)
    rgb = r.rgb
    assert rgb.shape == (1, 2, 32, 32, 3) and rgb.requires_grad
    assert float(rgb.detach().min()) >= 0 and float(rgb.detach().max()) <= 1
    sil = render_silhouette(v, f, cams, size=(32, 32)).bool()
    assert torch.all(rgb[~sil] == 1.0)
    # depth and face index come from the same rasterizer call as the colour
    assert torch.equal(r.face_idx, render_face_index(v, f, cams, size=(32, 32)))
    assert torch.equal(r.depth, render_depth(v, f, cams, size=(32, 32)))
    rgb.sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_render_shaded_follows_the_lambert_formula_on_a_tilted_plane():
    """A flat square tilted 35° about the vertical, seen by two cameras (the second rolled 90° about
    its optical axis), lit by a camera-space light, a world-space light and a light behind the surface:
    every covered pixel equals ``albedo · (ambient + Σ I_k max(0, n·l_k))`` computed here by hand."""
    th, a, z0 = np.deg2rad(35.0), 20.0, 200.0
    u, w = np.array([np.cos(th), 0.0, np.sin(th)]), np.array([0.0, 1.0, 0.0])
    n = np.array([np.sin(th), 0.0, -np.cos(th)])                       # = w × u: faces the cameras (−z)
    c = np.array([0.0, 0.0, z0])
    verts = np.stack([c - a * u - a * w, c + a * u - a * w, c + a * u + a * w, c - a * u + a * w])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])                         # counter-clockwise about n
    V = torch.tensor(verts)[None]
    np.testing.assert_allclose(vertex_normals(V, faces)[0].numpy(), np.tile(n, (4, 1)), atol=1e-15)
    roll = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    R = np.stack([np.eye(3), roll])
    cams = Cameras(torch.tensor(R), torch.zeros(2, 3, dtype=torch.float64),
                   torch.full((2, 2), 300.0, dtype=torch.float64), torch.full((2, 2), 32.0, dtype=torch.float64))
    albedo = np.array([0.9, 0.6, 0.3])
    l_cam = np.array([0.3, -0.2, -1.0])
    l_world = np.array([1.0, 0.5, -0.5])
    lights = (Light(tuple(l_cam), 0.5, "camera"), Light(tuple(l_world), 0.4, "world"),
              Light(tuple(-n), 1.0, "world"))                            # from behind: contributes 0
    r = render_shaded(V, faces, cams, size=(64, 64), colors=torch.tensor(np.tile(albedo, (4, 1))),
                      ambient=0.1, lights=lights, background=(0.0, 0.25, 1.0), settings=TORCH)
    hit = (r.face_idx >= 0).numpy()[0]                                   # (C, H, W)
    assert 0.2 < hit.mean() < 0.8
    for k in range(2):
        n_cam = R[k] @ n
        shade = 0.1 + 0.5 * max(0.0, n_cam @ (l_cam / np.linalg.norm(l_cam))) \
            + 0.4 * max(0.0, n @ (l_world / np.linalg.norm(l_world)))
        assert 0.1 < shade < 1.0 and abs(n_cam @ l_cam) > 0.1
        rgb = r.rgb[0, k].numpy()
        np.testing.assert_allclose(rgb[hit[k]], np.broadcast_to(albedo * shade, rgb[hit[k]].shape), rtol=0,
                                   atol=1e-12)
        np.testing.assert_array_equal(rgb[~hit[k]], np.broadcast_to([0.0, 0.25, 1.0], rgb[~hit[k]].shape))
    # the camera-space light differs between the rolled cameras; the world-space one does not
    assert abs(float(r.rgb[0, 0][hit[0]][0, 0] - r.rgb[0, 1][hit[1]][0, 0])) > 0.01


def test_raster_settings_are_one_checked_object():
    with pytest.raises(ValueError, match="near"):
        RasterSettings(near=0.0)
    with pytest.raises(ValueError, match="near"):
        RasterSettings(near=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        RasterSettings(backend="opengl")
    with pytest.raises(TypeError, match="cull_backfaces"):
        RasterSettings(cull_backfaces=1)
    with pytest.raises(Exception):
        RasterSettings().near = 2.0                                      # frozen
    v, f = _icosphere()
    cams = ring_cameras(torch.zeros(3), 2, distance=300.0, focal=400.0, image_size=(16, 16), dtype=torch.float64)
    with pytest.raises(TypeError, match="RasterSettings"):
        render_depth(v[None], f, cams, settings={"near": 1.0})
    with pytest.raises(TypeError):
        render_depth(v[None], f, cams, near=1.0)                         # one way: no loose keywords
    # near: faces with a vertex closer than near are dropped whole
    depth = project_mesh(v[None], f, cams).vertices_depth.reshape(1, 2, -1)   # (1, C, V)
    far = float(depth.median())
    pm = project_mesh(v[None], f, cams, settings=RasterSettings(near=far))
    assert 0 < int(pm.valid_faces.sum()) < pm.valid_faces.numel()
    assert bool((depth[0, :, f].min(-1).values[pm.valid_faces.reshape(2, -1)] >= far).all())


def test_render_errors_and_camera_behind_mesh():
    v, f = _icosphere()
    cams = ring_cameras(torch.zeros(3), 2, distance=300.0, focal=400.0, image_size=(16, 16), dtype=torch.float64)
    with pytest.raises(ValueError, match="finite"):
        render_depth(torch.full((1, v.shape[0], 3), float("inf"), dtype=torch.float64), f, cams)
    with pytest.raises(ValueError, match=r"face indices in \[0, "):
        render_depth(v[None], f + 1000, cams)
    with pytest.raises(ValueError, match="positive render size"):
        render_depth(v[None], f, cams, size=(0, 16))
    with pytest.raises(ValueError, match="B = 2"):
        render_depth(v[None].expand(2, -1, -1), f, cams.expand(3))
    with pytest.raises(ValueError, match="B = 0"):
        render_depth(v[None][:0], f, cams)
    # the whole mesh behind camera 0 (moved 400 mm towards its back): empty map, no crash, no NaN
    back = v[None] + 700.0 * (cams.position[0] / cams.position[0].norm())
    d = render_depth(back, f, cams)
    assert torch.isfinite(d).all() and float(d[0, 0].abs().max()) == 0.0
    # camera inside the sphere: only faces fully in front of the near plane, finite
    inside = v[None] * 3 + cams.position[0]
    assert torch.isfinite(render_depth(inside, f, cams)).all()


# ---------------------------------------------------------------------------- other backends
@pytest.mark.kaolin
@pytest.mark.skipif(not kaolin_available(), reason=f"needs Kaolin with CUDA: {KAOLIN_UNAVAILABLE_REASON}")
def test_kaolin_backend_matches_torch():  # pragma: no cover - needs a GPU with Kaolin
    fz, fimg, feat = _random_scene(B=2, F=40, seed=5, dtype=torch.float32)
    dev = torch.device("cuda")
    k = rasterize(64, 48, fz.to(dev), fimg.to(dev), feat.to(dev), backend="kaolin")
    t = rasterize(64, 48, fz.to(dev), fimg.to(dev), feat.to(dev), backend="torch")
    same = k.face_idx == t.face_idx
    assert same.float().mean() > 0.99
    torch.testing.assert_close(k.features[same], t.features[same], rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_torch_backend_on_cuda_matches_cpu():  # pragma: no cover - needs a GPU
    v, f = _icosphere(dtype=torch.float32)
    cams = ring_cameras(torch.zeros(3), 3, distance=300.0, focal=400.0, image_size=(64, 48))
    d_cpu = render_depth(v[None], f, cams, size=(64, 48), settings=TORCH)
    d_gpu = render_depth(v[None].cuda(), f.cuda(), cams.to(device="cuda"), size=(64, 48), settings=TORCH)
    assert ((d_gpu.cpu() > 0) != (d_cpu > 0)).float().mean() < 1e-3
    both = (d_gpu.cpu() > 0) & (d_cpu > 0)
    assert (d_gpu.cpu() - d_cpu)[both].abs().max() < 1e-2
