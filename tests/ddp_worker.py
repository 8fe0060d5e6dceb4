"""A tiny training run through dhmlib.train's distributed and checkpoint pieces (used by test_train_infra).

Per-frame pose embedding → DeepHandMesh.decode (toy hand, float64) → L1 to fixed random targets,
Adam + MultiStepLR, ResumableSampler, snapshots.  Run directly (one process) or under
``python -m torch.distributed.run --nproc_per_node 2`` (gloo on CPU).  Writes
``<out>/params_rank<r>.pt`` (final state dict of the model and embedding) and ``<out>/losses_rank<r>.txt``.

Options: ``--batch`` per process; ``--noise`` multiplies each loss by (1 + 0.01·U(0,1)) from torch's
global RNG (exercises RNG restore); ``--snapshot-every k`` mid-epoch snapshots; ``--die-after s``
kills itself (SIGKILL) after step s; ``--resume`` continues from the newest loadable snapshot.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from toyhand import toy_hand  # noqa: E402

from dhmlib.network.model import DeepHandMesh, ModelConfig  # noqa: E402
from dhmlib.train.checkpoint import (check_finite, find_resumable, restore_training_state,  # noqa: E402
                                     save_training_snapshot, snapshot_path)
from dhmlib.train.distributed import (all_reduce_mean, cleanup_distributed, init_distributed,  # noqa: E402
                                      is_main, make_sampler, wrap_model)

NUM_FRAMES = 32


class Step(nn.Module):
    """forward(frames (B,)) → scalar loss; holds the model and the per-frame embedding (N, J, 3)."""

    def __init__(self, model, targets_v, targets_j):
        super().__init__()
        self.model = model
        self.embedding = nn.Parameter(torch.zeros(NUM_FRAMES, model.hand.num_joints, 3, dtype=torch.float64))
        self.register_buffer("tv", targets_v)
        self.register_buffer("tj", targets_j)

    def forward(self, frames, noise: bool = False):
        pose = self.model.decode(self.embedding[frames])
        loss = (pose.vertices - self.tv[frames]).abs().mean() + (pose.joints - self.tj[frames]).abs().mean()
        if noise:
            loss = loss * (1 + 0.01 * torch.rand((), dtype=loss.dtype))
        return loss


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--noise", action="store_true")
    ap.add_argument("--snapshot-every", type=int, default=0)
    ap.add_argument("--die-after", type=int, default=-1)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    out = Path(a.out)
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = DeepHandMesh(toy_hand(300, seed=1), ModelConfig(backbone=18, seed=3)).double()
    model.backbone_net.requires_grad_(False)  # poses come from the embedding
    model.pose_net.requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        gt = model.decode(0.3 * torch.randn(NUM_FRAMES, model.hand.num_joints, 3, generator=g, dtype=torch.float64),
                          correctives=())
    tv = gt.vertices + torch.randn(gt.vertices.shape, generator=g, dtype=torch.float64)
    step_module = Step(model, tv, gt.joints.clone())
    net = wrap_model(step_module, info)
    opt = torch.optim.Adam([p for p in step_module.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.5)
    sampler = make_sampler(range(NUM_FRAMES), info, shuffle=True, seed=11)
    # a generator of its own: each iter(DataLoader) otherwise draws a base seed from torch's global RNG,
    # one draw more after a mid-epoch resume than in the uninterrupted run
    loader = DataLoader(torch.arange(NUM_FRAMES), batch_size=a.batch, sampler=sampler, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(100 + info.rank)  # the loop's randomness (--noise)
    start_epoch, step = 0, 0
    if a.resume:
        found = find_resumable(out / "model_dump", log=lambda m: print(m, flush=True) if is_main(info) else None)
        if found is not None:
            path, ckpt = found
            state = restore_training_state(ckpt, model, opt, sched, pose_embedding=step_module.embedding, path=path)
            sampler.load_state_dict(state["sampler"])
            start_epoch, step = state["start_epoch"], state["step"]
            if is_main(info):
                print(f"resumed from {path.name} at epoch {start_epoch} step {step}", flush=True)
    losses = []

    def snap(epoch, mid):
        if is_main(info):
            save_training_snapshot(snapshot_path(out, epoch, step if mid else None), model, epoch, opt,
                                   train_config={"batch": a.batch, "epochs": a.epochs}, scheduler=sched,
                                   sampler_state=sampler.state_dict(), pose_embedding=step_module.embedding,
                                   step=step, mid_epoch=mid)

    for epoch in range(start_epoch, a.epochs):
        sampler.set_epoch(epoch)
        for frames in loader:
            loss = net(frames, noise=a.noise)
            check_finite({"total": loss}, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(all_reduce_mean(loss, info)))
            if a.snapshot_every and step % a.snapshot_every == 0:
                snap(epoch, mid=True)
            if step == a.die_after:
                os.kill(os.getpid(), signal.SIGKILL)
        sched.step()
        snap(epoch, mid=False)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in step_module.state_dict().items()},
               out / f"params_rank{info.rank}.pt")
    (out / f"losses_rank{info.rank}.txt").write_text("\n".join(repr(x) for x in losses))
    cleanup_distributed()


if __name__ == "__main__":
    main()
