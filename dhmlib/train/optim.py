"""The optimizer's parameter groups and the per-step learning-rate schedule of the training loop."""
from __future__ import annotations

import math

import torch

from dhmlib.network.model import DeepHandMesh
from dhmlib.train.config import TrainConfig
from dhmlib.train.embedding import PoseEmbedding


def parameter_groups(model: DeepHandMesh, config: TrainConfig, embedding: PoseEmbedding | None) -> list[dict]:
    """Adam parameter groups; parts the configuration does not use are frozen (``requires_grad=False``),
    so that every trainable parameter gets a gradient each step (DDP without unused-parameter search).

    Groups (by ``name``): ``network`` (backbone and pose net; image source only, ``lr``),
    ``correctives`` (skin and skeleton refine nets that are on, ``corrective_lr``), ``embedding``
    (``embedding_lr``).
    """
    on = model.config.correctives
    image = config.pose_source == "image"
    parts = {
        "network": [(model.backbone_net, image), (model.pose_net, image)],
        "correctives": [(model.skeleton_refine_net, "skeleton" in on),
                        (model.skin_refine_net.pose_module, "pose" in on),
                        (model.skin_refine_net.fc_id, "identity" in on)],
    }
    lrs = {"network": config.lr, "correctives": config.corrective_lr or config.lr}
    for mod, used in (m for mods in parts.values() for m in mods):
        mod.requires_grad_(used)
    for p in model.gauge_fixed_parameters():   # no gradient ever (DDP would stop at the second step)
        p.requires_grad_(False)
    groups = []
    for name, mods in parts.items():
        params = [p for mod, used in mods if used for p in mod.parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": lrs[name]})
    if embedding is not None and not config.train_embedding:
        embedding.requires_grad_(False)
    elif embedding is not None:
        groups.append({"name": "embedding", "params": list(embedding.parameters()), "lr": config.embedding_lr})
    return groups


def step_schedule(optimizer, config: TrainConfig, total_steps: int, steps_per_epoch: int):
    """A per-step ``LambdaLR``: cosine from 1 to ``lr_end_ratio`` over ``total_steps`` (``lr_schedule="cosine"``)
    or the epoch milestones counted in steps (``"multistep"``), times a linear warm-up of the
    ``correctives`` group over ``warmup_steps`` (at most an eighth of the run)."""
    total = max(int(total_steps), 1)

    def base(step: int) -> float:
        if config.lr_schedule == "cosine":
            t = min(step / total, 1.0)
            return config.lr_end_ratio + (1 - config.lr_end_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        passed = sum(step >= m * steps_per_epoch for m in config.lr_milestones)
        return config.lr_gamma ** passed

    warmup = min(config.warmup_steps, total // 8)      # a short run is not all warm-up

    def warm(step: int) -> float:
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    lambdas = [(lambda s: base(s) * warm(s)) if g.get("name") == "correctives" else base
               for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
