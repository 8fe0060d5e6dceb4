"""DeepHandMeshDataset over the official layout (written by the virtual capture)."""
import shutil

import numpy as np
import pytest
import torch

from dhmlib.data.check import check_dataset
from dhmlib.data.dataset import DatasetError, DeepHandMeshDataset, batch_cameras, batch_crop, crop_depth, crop_image
from dhmlib.data.keypoints import KeypointFileError
from dhmlib.render import Cameras, Crop, crop_from_bbox, render_depth


def test_batches_have_the_documented_shapes(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=3)
    J = ds.skeleton.num_joints
    assert len(ds) == 4 * 6  # 5 frames, one of them in the ROM take
    b = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    expect = {"image": (2, 3, 256, 256), "image_crop": (2, 2, 3), "joints": (2, J, 3), "joint_valid": (2, J),
              "depth": (2, 3, 256, 256), "depth_crop": (2, 3, 2, 3), "cam_R": (2, 3, 3, 3), "cam_t": (2, 3, 3),
              "cam_focal": (2, 3, 2), "cam_principal": (2, 3, 2), "input_cam_R": (2, 3, 3),
              "input_cam_t": (2, 3), "view_index": (2, 3), "frame": (2,), "index": (2,)}
    for k, shape in expect.items():
        assert tuple(b[k].shape) == shape, k
    assert batch_cameras(b).batch_shape == (2, 3) and batch_cameras(b, "input_cam_").batch_shape == (2,)
    assert b["image"].min() >= 0 and b["image"].max() <= 1 and b["image"].std() > 0.05
    assert b["joint_valid"][:, ds.skeleton.index("thumb0")].eq(0).all()
    assert b["joint_valid"].sum(1).eq(21).all()


def test_rom_takes_are_excluded_unless_asked(small_capture):
    a = DeepHandMeshDataset(small_capture, num_views=1)
    b = DeepHandMeshDataset(small_capture, num_views=1, include_rom=True)
    assert not any("ROM" in s.sequence for s in a.samples)
    assert any("ROM" in s.sequence for s in b.samples) and len(b) > len(a)


def test_depth_crops_match_a_render_of_the_ground_truth_mesh(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=4)
    faces = torch.from_numpy(np.load(small_capture / "annotations/synthetic/subject_1/faces.npy"))
    item = ds[5]
    mesh = torch.from_numpy(np.load(small_capture / f"annotations/synthetic/subject_1/meshes/{int(item['frame']):06d}.npy"))
    cams = Cameras(item["cam_R"], item["cam_t"], item["cam_focal"], item["cam_principal"])
    ref = render_depth(mesh[None].float(), faces, cams, Crop(item["depth_crop"], (256, 256)), (256, 256))[0]
    got = item["depth"]
    both = (ref > 0) & (got > 0)
    assert both.float().mean() > 0.05, "the hand must fill a good part of each crop"
    assert (ref - got)[both].abs().mean() < 0.5
    assert ((ref > 0) != (got > 0)).float().mean() < 0.02


def test_joints_project_into_the_input_crop(small_capture):
    ds = DeepHandMeshDataset(small_capture, num_views=1)
    item = ds[3]
    cam = Cameras(item["input_cam_R"][None], item["input_cam_t"][None], item["input_cam_focal"][None],
                  item["input_cam_principal"][None])
    px = Crop(item["image_crop"], (256, 256)).apply(cam.project(item["joints"][None]))[0]
    ok = item["joint_valid"] > 0
    assert (px[ok] > 256 * 0.1).all() and (px[ok] < 256 * 0.9).all()  # 1.5× box: joints well inside


def test_seed_crop_follows_the_original_code(small_capture):
    """Box of the valid joints, ×1.5 per axis around its centre, clamped to the image, mapped onto the crop."""
    ds = DeepHandMeshDataset(small_capture, num_views=2)
    item = ds[2]
    cams = Cameras(item["cam_R"], item["cam_t"], item["cam_focal"], item["cam_principal"])
    px = cams.project(item["joints"][None].expand(2, -1, -1))
    ok = item["joint_valid"] > 0
    for k in range(2):
        p = px[k][ok].numpy()
        (x0, y0), (x1, y1) = p.min(0), p.max(0)
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 1.5, (y1 - y0) * 1.5
        H, W = ds.image_size
        lo = np.clip([cx - w / 2, cy - h / 2], 0, [W, H])
        hi = np.clip([cx + w / 2, cy + h / 2], 0, [W, H])
        corners = torch.tensor(np.stack([lo, hi])[None], dtype=torch.float32)
        got = Crop(item["depth_crop"][k], (256, 256)).apply(corners)[0]
        torch.testing.assert_close(got, torch.tensor([[0.0, 0.0], [256.0, 256.0]]), atol=2e-3, rtol=0)
    sq = DeepHandMeshDataset(small_capture, num_views=2, crop_mode="square")[2]["depth_crop"]
    assert torch.allclose(sq[:, 0, 0], sq[:, 1, 1])  # square mode: one scale for both axes
    with pytest.raises(ValueError, match="crop_mode"):
        DeepHandMeshDataset(small_capture, crop_mode="tight")


def test_same_seed_same_views_in_workers(small_capture):
    def views(ds, workers):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        return torch.cat([b["view_index"] for b in dl])

    ds = DeepHandMeshDataset(small_capture, num_views=3, seed=11)
    v0 = views(ds, 0)
    v2 = views(DeepHandMeshDataset(small_capture, num_views=3, seed=11), 2)
    assert torch.equal(v0, v2)
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
    inside = crop.inverse().apply(torch.tensor([[[0.5, 0.5]]]))  # sanity: the map is well defined
    assert torch.isfinite(inside).all()
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
