"""Laplacian loss: forward + backward of ``laplacian_loss`` with the three operators dhmlib can build.

The uniform Laplacian of a 60 × 60 grid mesh (V = 3600), B = 8 meshes, as a sparse CSR matrix, a sparse COO
matrix (``uniform_laplacian(..., layout=...)``) and the ``index_add`` operator :class:`MeshLaplacian` (what
training uses). It prints the median time of each (ms); no peer, no goal: a quick check after a change.

    python bench/laplacian.py [--grid 60] [--batch 8] [--repeats 10] [--out bench/results/laplacian.json]
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhmlib.losses import MeshLaplacian, laplacian_loss, uniform_laplacian  # noqa: E402
from timing import timed, write_json  # noqa: E402


def grid_faces(n: int) -> torch.Tensor:
    """(2·(n−1)², 3) faces of an n × n vertex grid."""
    i = torch.arange(n - 1)
    I, J = torch.meshgrid(i, i, indexing="ij")
    a = (I * n + J).reshape(-1)
    return torch.cat([torch.stack([a, a + 1, a + n], 1), torch.stack([a + 1, a + n + 1, a + n], 1)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "laplacian.json"))
    args = ap.parse_args(argv)
    n = args.grid
    faces, V = grid_faces(n), n * n
    x = torch.randn(args.batch, V, 3, requires_grad=True)
    ops = {"csr": uniform_laplacian(faces, V), "coo": uniform_laplacian(faces, V, layout=torch.sparse_coo),
           "index_add": MeshLaplacian(faces, V)}
    result = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch": args.batch, "vertices": V, "ms": {}}
    for name, op in ops.items():
        ms = timed(lambda: laplacian_loss(x, op).backward(), args.repeats)
        result["ms"][name] = ms
        print(f"laplacian_loss fwd+bwd B={args.batch} V={V} {name}: {ms:.2f} ms")
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
