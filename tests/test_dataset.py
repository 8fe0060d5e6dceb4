"""DeepHandMeshDataset over the official layout (written by the virtual capture)."""
import dataclasses
import pickle
import shutil

import numpy as np
import pytest
import torch

from dhmlib.data.check import check_dataset
from dhmlib.data.dataset import DatasetError, DeepHandMeshDataset
from dhmlib.data.keypoints import KeypointFileError
from dhmlib.data.sample import HandBatch, HandSample, collate_samples
from dhmlib.render import Cameras, Crop, crop_depth, crop_from_bbox, crop_image, render_depth


def test_batches_have_the_documented_shapes(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=3)
    J = ds.skeleton.num_joints
    assert len(ds) == 4 * 6  # 5 frames, one of them in the ROM take
    assert ds.has_images
    b = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)))
    assert isinstance(b, HandBatch) and b.has_image and len(b) == 2
    expect = {"image": (2, 3, 256, 256), "joints": (2, J, 3), "joint_valid": (2, J), "depth": (2, 3, 256, 256),
              "view_index": (2, 3), "frame": (2,), "index": (2,)}
    for k, shape in expect.items():
        assert tuple(getattr(b, k).shape) == shape, k
    assert b.view_cameras.batch_shape == (2, 3) and b.input_camera.batch_shape == (2,)
    assert b.view_crops.batch_shape == (2, 3) and b.view_crops.size == (256, 256)
    assert b.input_crop.batch_shape == (2,) and b.input_crop.size == (256, 256)
    assert b.index.tolist() == [0, 1] and b.frame.dtype == torch.long
    assert b.camera == tuple(s.camera for s in ds.samples[:2]) and b.subject == (1, 1)
    assert [[ds.camera_names[i] for i in row] for row in b.view_index.tolist()] == [list(n) for n in b.view_names]
    assert b.image.min() >= 0 and b.image.max() <= 1 and b.image.std() > 0.05
    assert b.joint_valid[:, ds.skeleton.index("thumb0")].eq(0).all()
    assert b.joint_valid.sum(1).eq(21).all()
    # the batch is its samples, stacked
    s1 = ds[1]
    assert torch.equal(b.depth[1], s1.depth) and torch.equal(b.view_crops.matrix[1], s1.view_crops.matrix)
    assert torch.equal(b.input_camera.R[1], s1.input_camera.R[0])
    assert torch.equal(b.view_cameras.t[1], s1.view_cameras.t)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.depth = None


def _hand_reference(ds, s: HandSample):
    """The sample's joints, cameras, depth maps and image read from the files with numpy alone."""
    kp_order = (["thumb_null", "thumb3", "thumb2", "thumb1"]
                + [f + j for f in ("index", "middle", "ring", "pinky") for j in ("_null", "3", "2", "1")] + ["wrist"])
    names = ds.skeleton.short_names
    joints, valid = np.zeros((len(names), 3)), np.zeros(len(names))
    for row in np.loadtxt(ds.layout.keypoints_path(s.frame), ndmin=2):
        if int(row[0]) < 21:
            j = names.index(kp_order[int(row[0])])
            joints[j], valid[j] = row[1:4], 1
    blocks = {b.split("\n")[0].strip(): b.split("\n")[1:]
              for b in (ds.layout.krt.read_text().strip().split("\n\n"))}
    K = {n: np.array([[float(x) for x in r.split()] for r in rows[:3]]) for n, rows in blocks.items()}
    Rt = {n: np.array([[float(x) for x in r.split()] for r in rows[4:7]]) for n, rows in blocks.items()}
    depth = []
    for name in s.view_names:
        with open(ds.layout.depth_path(s.frame, name), "rb") as fh:  # our own capture: plain pickle is fine here
            depth.append(np.asarray(pickle.load(fh), dtype=np.float64).reshape(ds.image_size))
    return joints, valid, K, Rt, np.stack(depth)


def _resample(img, M, size, depth_edge_mm=None):
    """Resample (Hi, Wi, C) through the 2×3 image→render map ``M`` at render pixel centres, in float64:
    bilinear with zeros outside; with ``depth_edge_mm`` the nearest sample where the 4 taps are not all
    surface within that spread."""
    Hi, Wi = img.shape[:2]
    H, W = size
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    uv = (np.stack([xs, ys], -1) - M[:, 2]) @ np.linalg.inv(M[:, :2]).T
    x, y = uv[..., 0] - 0.5, uv[..., 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def tap(yy, xx):
        inside = (yy >= 0) & (yy < Hi) & (xx >= 0) & (xx < Wi)
        return np.where(inside[..., None], img[yy.clip(0, Hi - 1), xx.clip(0, Wi - 1)], 0.0)

    t00, t10, t01, t11 = tap(y0, x0), tap(y0, x0 + 1), tap(y0 + 1, x0), tap(y0 + 1, x0 + 1)
    bil = (t00 * (1 - fx) + t10 * fx) * (1 - fy) + (t01 * (1 - fx) + t11 * fx) * fy
    if depth_edge_mm is None:
        return bil
    taps = np.stack([t00, t10, t01, t11])
    smooth = (taps > 0).all(0) & (taps.max(0) - taps.min(0) <= depth_edge_mm)
    near = np.where(fy < 0.5, np.where(fx < 0.5, t00, t10), np.where(fx < 0.5, t01, t11))
    return np.where(smooth, bil, near)


def test_sample_fields_match_an_independent_reading_of_the_files(small_capture):
    from PIL import Image

    ds = DeepHandMeshDataset(small_capture, num_views=3, seed=4)
    i = 7
    s, src = ds[i], ds.samples[i]
    assert (s.subject, s.sequence, s.frame, s.camera, s.index) == (1, src.sequence, src.frame, src.camera, i)
    joints, valid, K, Rt, depth = _hand_reference(ds, s)
    np.testing.assert_array_equal(s.joints.numpy(), joints.astype(np.float32))
    np.testing.assert_array_equal(s.joint_valid.numpy(), valid.astype(np.float32))
    for cams, names in ((s.view_cameras, s.view_names), (s.input_camera, (s.camera,))):
        assert cams.names == tuple(names)
        for k, n in enumerate(names):
            np.testing.assert_array_equal(cams.R[k].numpy(), Rt[n][:, :3].astype(np.float32))
            np.testing.assert_array_equal(cams.t[k].numpy(), Rt[n][:, 3].astype(np.float32))
            np.testing.assert_array_equal(cams.focal[k].numpy(), K[n][[0, 1], [0, 1]].astype(np.float32))
            np.testing.assert_array_equal(cams.principal[k].numpy(), K[n][:2, 2].astype(np.float32))
    assert [ds.camera_names[v] for v in s.view_index.tolist()] == list(s.view_names)
    # depth: each view resampled through its crop (the crops themselves: test_seed_crop_follows_the_original_code)
    for k in range(3):
        ref = _resample(depth[k][..., None], s.view_crops.matrix[k].double().numpy(), (256, 256), 10.0)[..., 0]
        err = np.abs(s.depth[k].numpy() - ref)
        assert (ref > 0).mean() > 0.05
        # float32 sample positions against float64: at most a rare nearest-tap flip at a depth edge
        # (plain bilinear across edges puts 11 to 235 pixels of these views off by up to 40 mm)
        assert (err > 1e-3).sum() <= 2 and np.median(err[ref > 0]) < 1e-4, (k, err.max())
    # image: the JPEG decoded by PIL, bilinear through the input crop
    with Image.open(ds.layout.image_path(s.sequence, s.camera, s.frame)) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
    ref = _resample(rgb, s.input_crop.matrix[0].double().numpy(), (256, 256)).transpose(2, 0, 1)
    np.testing.assert_allclose(s.image.numpy(), ref, atol=1e-4, rtol=0)


def test_samples_and_batches_move_and_pickle(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=2)
    s = ds[0]
    b = collate_samples([ds[0], ds[1]])
    for x in (s, b):
        y = pickle.loads(pickle.dumps(x))
        assert type(y) is type(x) and torch.equal(y.depth, x.depth) and y.view_names == x.view_names
        assert torch.equal(y.view_cameras.R, x.view_cameras.R) and y.view_crops.size == x.view_crops.size
        m = x.to("meta")
        tensors = [m.image, m.input_crop.matrix, m.joints, m.joint_valid, m.depth, m.view_crops.matrix,
                   m.view_index, m.view_cameras.R, m.view_cameras.principal, m.input_camera.t]
        assert all(t.device.type == "meta" for t in tensors)
        assert m.view_names == x.view_names and m.frame == x.frame if x is s else torch.equal(x.frame, b.frame)
    with pytest.raises(ValueError, match="number of views"):
        collate_samples([ds[0], DeepHandMeshDataset(small_capture, num_views=3)[0]])
    with pytest.raises(ValueError, match="at least one sample"):
        collate_samples([])


def test_dataset_without_images(capture_copy):
    cam = DeepHandMeshDataset(capture_copy).camera_names[0]
    with_images = DeepHandMeshDataset(capture_copy, num_views=2, cameras=[cam])  # one camera: views = [cam, cam]
    by_frame = {it.frame: it for it in (with_images[i] for i in range(len(with_images)))}
    shutil.rmtree(capture_copy / "images")
    ds = DeepHandMeshDataset(capture_copy, num_views=2, cameras=[cam])
    assert not ds.has_images
    frames = sorted(int(p.stem[len("keypoints"):]) for p in ds.layout.keypoints_dir.glob("keypoints*.pts"))
    assert len(frames) == 5 and ds.frames == frames  # one item per frame, the ROM take's included
    assert len(with_images) == 4 and set(with_images.frames) < set(frames)
    assert all((s.sequence, s.camera) == ("", None) for s in ds.samples)
    s = ds[1]
    assert not s.has_image and s.image is None and s.input_camera is None and s.input_crop is None
    assert s.camera is None and s.sequence == "" and s.frame == frames[1] and s.view_names == (cam, cam)
    ref = by_frame[s.frame]
    assert torch.equal(ref.depth, s.depth) and torch.equal(ref.view_crops.matrix, s.view_crops.matrix)
    assert torch.equal(ref.joints, s.joints) and (ref.depth > 0).any()
    b = next(iter(ds.loader(batch_size=3, num_workers=2)))
    assert b.image is None and b.input_camera is None and b.input_crop is None and not b.has_image
    assert b.depth.shape == (3, 2, 256, 256) and b.camera == (None,) * 3 and b.frame.tolist() == frames[:3]
    with pytest.raises(ValueError, match="all samples with images or all without"):
        collate_samples([s, ref])
    with pytest.raises(DatasetError, match="images folder not found"):
        DeepHandMeshDataset(capture_copy, images=True)
    import matplotlib
    matplotlib.use("Agg")
    from dhmlib.viz.data_figures import plot_sample

    fig = plot_sample(s)  # depth views only, one colour bar
    assert [a.get_title() for a in fig.axes[:2]] == [f"view {cam}, frame {s.frame}"] * 2 and len(fig.axes) == 3
    assert len(plot_sample(ref).axes) == 4  # the input crop first


def test_crops_and_cameras_stack_and_concatenate():
    a = crop_from_bbox(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 10.0]]), size=(8, 8))
    b = crop_from_bbox(torch.tensor([[1.0, 2.0, 30.0, 10.0], [3.0, 4.0, 5.0, 6.0]]), size=(8, 8))
    st, ct = Crop.stack([a, b]), Crop.cat([a, b])
    assert st.batch_shape == (2, 2) and ct.batch_shape == (4,) and st.size == ct.size == (8, 8)
    assert torch.equal(st.matrix[1, 0], b.matrix[0]) and torch.equal(ct.matrix[2], b.matrix[0])
    with pytest.raises(ValueError, match="one render size"):
        Crop.stack([a, crop_from_bbox(torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), size=(8, 9))])
    eye = torch.tensor([[0.0, 0.0, -500.0], [0.0, 500.0, 0.0], [500.0, 0.0, 0.0]])
    rig = Cameras.look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]) + torch.tensor([0.0, 0.0, 0.1]),
                          (800.0, 800.0), (160.0, 250.0), names=["a", "b", "c"])
    c = Cameras.cat([rig.index_select([2]), rig.index_select([0, 1])])
    assert c.names == ("c", "a", "b") and torch.equal(c.t, rig.t[[2, 0, 1]])
    assert Cameras.stack([rig, rig]).batch_shape == (2, 3)


def test_rom_takes_are_excluded_unless_asked(small_capture):
    a = DeepHandMeshDataset(small_capture, num_views=1)
    b = DeepHandMeshDataset(small_capture, num_views=1, include_rom=True)
    assert not any("ROM" in s.sequence for s in a.samples)
    assert any("ROM" in s.sequence for s in b.samples) and len(b) > len(a)


def test_depth_crops_match_a_render_of_the_ground_truth_mesh(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=4)
    faces = torch.from_numpy(np.load(small_capture / "annotations/synthetic/subject_1/faces.npy"))
    item = ds[5]
    mesh = torch.from_numpy(np.load(small_capture / f"annotations/synthetic/subject_1/meshes/{item.frame:06d}.npy"))
    ref = render_depth(mesh[None].float(), faces, item.view_cameras, item.view_crops, (256, 256))[0]
    got = item.depth
    both = (ref > 0) & (got > 0)
    assert both.float().mean() > 0.05, "the hand must fill a good part of each crop"
    assert (ref - got)[both].abs().mean() < 0.5
    assert ((ref > 0) != (got > 0)).float().mean() < 0.02


def test_joints_project_into_the_input_crop(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=1)
    item = ds[3]
    px = item.input_crop.apply(item.input_camera.project(item.joints[None]))[0]
    ok = item.joint_valid > 0
    assert (px[ok] > 256 * 0.1).all() and (px[ok] < 256 * 0.9).all()  # 1.5× box: joints well inside


def test_seed_crop_follows_the_original_code(small_capture):
    """Box of the valid joints, ×1.5 per axis around its centre, clamped to the image, mapped onto the crop."""
    ds = DeepHandMeshDataset(small_capture, num_views=2)
    item = ds[2]
    px = item.view_cameras.project(item.joints[None].expand(2, -1, -1))
    ok = item.joint_valid > 0
    for k in range(2):
        p = px[k][ok].numpy()
        (x0, y0), (x1, y1) = p.min(0), p.max(0)
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 1.5, (y1 - y0) * 1.5
        H, W = ds.image_size
        lo = np.clip([cx - w / 2, cy - h / 2], 0, [W, H])
        hi = np.clip([cx + w / 2, cy + h / 2], 0, [W, H])
        corners = torch.tensor(np.stack([lo, hi])[None], dtype=torch.float32)
        got = Crop(item.view_crops.matrix[k], (256, 256)).apply(corners)[0]
        torch.testing.assert_close(got, torch.tensor([[0.0, 0.0], [256.0, 256.0]]), atol=2e-3, rtol=0)
    sq = DeepHandMeshDataset(small_capture, num_views=2, crop_mode="square")[2].view_crops.matrix
    assert torch.allclose(sq[:, 0, 0], sq[:, 1, 1])  # square mode: one scale for both axes
    with pytest.raises(ValueError, match="crop_mode"):
        DeepHandMeshDataset(small_capture, crop_mode="tight")


def test_same_seed_same_views_in_workers(small_capture):
    def views(ds, workers):
        return torch.cat([b.view_index for b in ds.loader(batch_size=4, num_workers=workers)])

    ds = DeepHandMeshDataset(small_capture, num_views=3, seed=11)
    v0 = views(ds, 0)
    v2 = views(DeepHandMeshDataset(small_capture, num_views=3, seed=11), 2)
    assert torch.equal(v0, v2)
    # batches pickled back from two worker processes equal the in-process ones, field by field
    b0 = next(iter(ds.loader(batch_size=3)))
    b2 = next(iter(ds.loader(batch_size=3, num_workers=2)))
    for f in dataclasses.fields(HandBatch):
        x, y = getattr(b0, f.name), getattr(b2, f.name)
        if isinstance(x, Cameras):
            x, y = torch.cat([x.R.flatten(), x.t.flatten(), x.focal.flatten()]), torch.cat(
                [y.R.flatten(), y.t.flatten(), y.focal.flatten()])
        elif isinstance(x, Crop):
            assert x.size == y.size
            x, y = x.matrix, y.matrix
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f.name
    assert not torch.equal(v0, views(DeepHandMeshDataset(small_capture, num_views=3, seed=12), 0))
    ds.set_epoch(1)
    assert not torch.equal(v0, views(ds, 0))
    assert (v0[:, None] != v0[:, :, None]).sum() > 0  # several distinct views per sample


def test_depth_resampling_does_not_average_across_edges():
    d = torch.zeros(1, 40, 30)
    d[0, 10:30, 5:15] = 500.0
    d[0, 10:30, 15:25] = 620.0
    # a 3.3× zoom with a sub-pixel offset: bilinear everywhere would invent values between 500 and 620
    crop = crop_from_bbox(torch.tensor([[3.3, 7.7, 24.0, 24.0]]), size=(97, 97), scale=1.0)
    out = crop_depth(d, crop)
    vals = set(torch.unique(out).tolist())
    assert vals <= {0.0, 500.0, 620.0}, sorted(vals)[:10]
    assert {500.0, 620.0} <= vals
    # smooth surfaces are interpolated
    ramp = torch.arange(40.0)[:, None].expand(40, 30).clone()[None] + 300
    out = crop_depth(ramp, crop)
    assert len(torch.unique(out)) > 60


def test_depth_crop_beyond_the_image_reads_zero():
    d = torch.full((1, 40, 30), 700.0)
    # a box much larger than the image, off to the bottom right: the render sees the image in one corner
    crop = crop_from_bbox(torch.tensor([[10.0, 20.0, 80.0, 80.0]]), size=(64, 64), scale=1.5)
    out = crop_depth(d, crop)
    # the crop itself: the 1.5× box (square, 120 px around (50, 60)) spans the render, and inverse ∘ apply = id
    box = torch.tensor([[[-10.0, 0.0], [50.0, 60.0], [110.0, 120.0]]])
    torch.testing.assert_close(crop.apply(box), torch.tensor([[[0.0, 0.0], [32.0, 32.0], [64.0, 64.0]]]),
                               atol=1e-5, rtol=0)
    pts = torch.rand(1, 100, 2, dtype=torch.float64) * 200 - 50
    c64 = Crop(crop.matrix.double(), crop.size)
    torch.testing.assert_close(c64.inverse().apply(c64.apply(pts)), pts, atol=1e-9, rtol=0)
    # render pixel (0, 0) centre ↦ image (-10 + 0.5·120/64, 0.5·120/64): left of the image, reads 0
    torch.testing.assert_close(crop.inverse().apply(torch.tensor([[[0.5, 0.5]]])),
                               torch.tensor([[[-10 + 60 / 64, 60 / 64]]]), atol=1e-5, rtol=0)
    assert out[0, 0, 0] == 0
    assert (out == 0).any() and (out == 700.0).any()
    assert set(torch.unique(out).tolist()) <= {0.0, 700.0}
    # every render pixel whose centre maps outside the image reads 0
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    uv = crop.inverse().apply(torch.stack([xs, ys], -1).reshape(1, -1, 2))[0].reshape(64, 64, 2)
    far = (uv[..., 0] > 31) | (uv[..., 1] > 41) | (uv[..., 0] < -1) | (uv[..., 1] < -1)
    assert (out[0][far] == 0).all()


def test_image_crop_matches_bilinear_reference():
    img = torch.rand(1, 3, 20, 16)
    crop = crop_from_bbox(torch.tensor([[2.0, 3.0, 10.0, 10.0]]), size=(8, 8), scale=1.0)
    out = crop_image(img, crop)[0]
    # reference: render pixel (i, j) centre → image point → manual bilinear with centres at +0.5
    inv = crop.inverse()
    i, j = 5, 2
    u, v = inv.apply(torch.tensor([[[j + 0.5, i + 0.5]]]))[0, 0].tolist()
    x, y = u - 0.5, v - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    ref = (img[0, :, y0, x0] * (1 - fx) * (1 - fy) + img[0, :, y0, x0 + 1] * fx * (1 - fy)
           + img[0, :, y0 + 1, x0] * (1 - fx) * fy + img[0, :, y0 + 1, x0 + 1] * fx * fy)
    torch.testing.assert_close(out[:, i, j], ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------- malformed files
@pytest.fixture()
def capture_copy(small_capture, tmp_path):
    dst = tmp_path / "cap"
    shutil.copytree(small_capture, dst)
    return dst


def _first(ds):
    return ds.samples[0]


def test_missing_camera_is_named(capture_copy):
    krt = capture_copy / "annotations" / "KRT_512"
    blocks = krt.read_text().strip("\n").split("\n\n")
    krt.write_text("\n\n".join(blocks[1:]) + "\n\n")  # drop the first camera
    with pytest.raises(DatasetError, match=r"cam400\d+: camera '400\d+' is not in .*KRT_512"):
        DeepHandMeshDataset(capture_copy)
    rep = check_dataset(capture_copy, progress=False)
    assert not rep.ok and any("is not in" in p for p in rep.problems)


def test_image_of_wrong_size_is_named(capture_copy):
    from PIL import Image

    ds = DeepHandMeshDataset(capture_copy, num_views=1)
    s = _first(ds)
    path = ds.layout.image_path(s.sequence, s.camera, s.frame)
    Image.new("RGB", (320, 240)).save(path)
    with pytest.raises(DatasetError, match=rf"{path.name}: image is 240×320 \(H×W\), expected 512×334"):
        ds[0]
    rep = check_dataset(capture_copy, progress=False)
    assert any(path.name in p and "expected 512×334" in p for p in rep.problems)


def test_keypoint_file_with_wrong_columns_is_named(capture_copy):
    ds = DeepHandMeshDataset(capture_copy, num_views=1)
    path = ds.layout.keypoints_path(_first(ds).frame)
    lines = path.read_text().splitlines()
    lines[4] = " ".join(lines[4].split()[:5])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KeypointFileError, match=rf"{path.name}:5: expected 6 columns"):
        ds[0]
    assert any(f"{path.name}:5" in p for p in check_dataset(capture_copy, progress=False).problems)


def test_truncated_and_malicious_depth_maps_are_named(capture_copy):
    import pickle

    ds = DeepHandMeshDataset(capture_copy, num_views=6)
    frame = _first(ds).frame
    paths = [ds.layout.depth_path(frame, c) for c in ds.layout.depth_cameras(frame)]
    paths[0].write_bytes(paths[0].read_bytes()[:1000])

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    paths[1].write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"depthmap400\d+\.pkl: (truncated or corrupt|refused)"):
        ds[0]
    rep = check_dataset(capture_copy, progress=False)
    assert any(paths[0].name in p and "truncated" in p for p in rep.problems)
    assert any(paths[1].name in p and "refused" in p and "builtins.print" in p for p in rep.problems)


def test_missing_krt_and_clean_check(small_capture, capture_copy):
    rep = check_dataset(small_capture, progress=False)
    assert rep.ok, rep.summary()
    assert rep.counts["images"] == 30 and rep.counts["depth maps"] == 30 and rep.counts["keypoint files"] == 5
    (capture_copy / "annotations" / "KRT_512").unlink()
    with pytest.raises(DatasetError, match="KRT_512: camera file not found"):
        DeepHandMeshDataset(capture_copy)


def test_check_data_cli_exit_status(small_capture, capture_copy):
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "dhmlib.cli", "check-data", str(small_capture), "--no-progress"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "problems                     0" in ok.stdout
    ds = DeepHandMeshDataset(capture_copy, num_views=1)
    ds.layout.keypoints_path(_first(ds).frame).write_text("0 1 2\n")
    bad = subprocess.run([sys.executable, "-m", "dhmlib.cli", "check-data", str(capture_copy), "--no-progress"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "expected 6 columns" in bad.stdout
