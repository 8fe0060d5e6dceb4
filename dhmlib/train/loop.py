"""The training loop: one code path for one process and torchrun DDP.

``train(train_config, model_config, data_root, output_root)``:

1. processes: :func:`~dhmlib.train.distributed.init_distributed` (torchrun's environment, or one
   process); rank 0 alone logs and writes snapshots;
2. data: the training frames of ``split_frames(data_root, subject, held_out)``, a
   ``DeepHandMeshDataset`` over them (without images for the embedding source), a resumable
   sharded sampler, ``DataLoader(collate_fn=collate_samples)``;
3. model: :class:`~dhmlib.network.model.DeepHandMesh` (+ a :class:`PoseEmbedding` per training frame for
   the embedding source) inside a :class:`~dhmlib.train.step.TrainStep`, DDP-wrapped when
   there are several processes;
4. Adam with one parameter group per part (network ``lr``, correctives ``corrective_lr``,
   embedding ``embedding_lr``), ``MultiStepLR`` per epoch;
5. per step: forward, NaN/inf check (all ranks agree), backward, optimizer step; every
   ``log_every`` steps a line in ``output/log/train.log`` and a record in
   ``output/log/metrics.jsonl`` (``kind: "step"``: step, epoch, mean of each term and of the total
   over the interval and the ranks, lr, steps/s, and the wall time per step of its parts: ``data_ms``,
   ``forward_ms``, ``backward_ms``, ``optimizer_ms``), TensorBoard scalars when ``torch.utils.tensorboard`` imports;
   per epoch a ``kind: "epoch"`` record and ``output/model_dump/snapshot_<epoch>.pth.tar``
   (optionally also every ``snapshot_every_steps``);
6. ``max_steps``: stop after that many optimizer steps (a snapshot there, as ``time_limit_s``);
   ``probe_every``: the held-out probe (:mod:`dhmlib.train.probe`, rank 0 only) at the first step, every
   N steps and at the last, as ``kind: "probe"`` records; its time is left out of the training time
   (``time_s``, ``steps_per_s``, ``time_limit_s``, :attr:`TrainResult.wall_s`).

``resume=True`` continues from the newest snapshot that loads (weights, optimizer, scheduler,
embedding, RNG states, sampler position): on CPU with ``deterministic=True`` the final weights
equal those of an uninterrupted run. A NaN or infinite loss stops training with
:class:`~dhmlib.train.checkpoint.NonFiniteLoss` naming the step and the term; the last good
snapshot stays. SIGINT (Ctrl-C, a notebook's interrupt) or SIGTERM ends training after the step it is in,
with a snapshot of that step and a line in train.log, then raises :class:`TrainingInterrupted` (a
``KeyboardInterrupt``; ``dhm train`` exits 130); a second signal stops at once. On resume, metrics records
after the snapshot's step (a run killed after its last snapshot) are removed before they are written again,
and ``keep_snapshots`` counts the snapshots already in ``model_dump/``.
"""
from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dhmlib.data.layout import Layout
from dhmlib.data.sample import collate_samples
from dhmlib.hand.handmodel import HandModel
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.train.checkpoint import (BackgroundSnapshotWriter, check_finite, find_resumable, list_snapshots, restore_training_state,
                         save_training_snapshot, snapshot_path)
from dhmlib.train.config import TrainConfig
from dhmlib.train.inputs import make_dataset, split_training_frames
from dhmlib.train.distributed import cleanup_distributed, init_distributed, is_main, make_sampler, wrap_model
from dhmlib.train.embedding import PoseEmbedding
from dhmlib.train.step import TERMS, TrainStep


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank).

    Attributes:
        model: the trained network (unwrapped, on the training device).
        embedding: the per-frame pose embedding (embedding source), else None.
        train_frames, test_frames: the split's frame numbers.
        split_rule: the split's description.
        snapshot: the last snapshot written (rank 0), or None.
        epochs: epochs completed (including those before a resume).
        steps: global optimizer steps.
        wall_s: seconds this call trained (probing not included).
        history: the metrics records written (rank 0), as dicts.
        stopped_early: why training ended before ``epochs`` (time limit, max_steps), else None.
        probe_s: seconds spent probing (``probe_every``; on every rank: the probe and the wait for it).
    """

    model: DeepHandMesh
    embedding: PoseEmbedding | None
    train_frames: tuple[int, ...]
    test_frames: tuple[int, ...]
    split_rule: str
    snapshot: Path | None
    epochs: int
    steps: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    stopped_early: str | None = None
    probe_s: float = 0.0

    @property
    def probe_curve(self) -> list[list[float]]:
        """``[step, seconds, vertex_mean_mm]`` of each probe record (rank 0), in order."""
        return [[r["step"], r["seconds"], r["vertex_mean_mm"]] for r in self.history if r.get("kind") == "probe"]


# ----------------------------------------------------------------- pieces
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch, numpy and random; ``deterministic``: deterministic algorithms where PyTorch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


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


class _Log:
    """Rank-0 text log (train.log), metrics (metrics.jsonl), TensorBoard; no-ops elsewhere."""

    def __init__(self, output_root: Path, active: bool, echo: bool, tensorboard: bool = True):
        self.active, self.echo = active, echo
        self.tb = None
        self.records: list[dict] = []
        if not active:
            return
        self.dir = output_root / "log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.text = open(self.dir / "train.log", "a", encoding="utf-8")
        self.metrics = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
            except Exception:   # TensorBoard not installed: scalars stay in metrics.jsonl
                self.tb = None

    def __call__(self, msg: str) -> None:
        if not self.active:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        self.text.write(line + "\n")
        self.text.flush()
        if self.echo:
            try:
                from tqdm.auto import tqdm
                tqdm.write(line)
            except ImportError:
                print(line, flush=True)

    def drop_after(self, step: int) -> int:
        """Remove the metrics records after ``step`` (those of a run interrupted after its last snapshot, which a
        resumed run writes again) from metrics.jsonl and TensorBoard; returns how many were removed."""
        if not self.active:
            return 0
        self.metrics.close()
        path = self.dir / "metrics.jsonl"
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:        # a line cut short by a kill
                dropped += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            tmp.replace(path)
        self.metrics = open(path, "a", encoding="utf-8")
        if self.tb is not None:                 # TensorBoard drops its events from step + 1 on
            from torch.utils.tensorboard import SummaryWriter
            self.tb.close()
            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=step + 1)
        return dropped

    def record(self, rec: dict) -> None:
        if not self.active:
            return
        self.records.append(rec)
        self.metrics.write(json.dumps(rec) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            prefix = {"epoch": "epoch/", "probe": "probe/"}.get(rec.get("kind"), "train/")
            x = rec["epoch"] if rec.get("kind") == "epoch" else rec["step"]
            for k, v in rec.items():
                if k not in ("kind", "step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(prefix + k, v, x)

    def close(self) -> None:
        if self.active:
            self.text.close()
            self.metrics.close()
            if self.tb is not None:
                self.tb.close()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM after a snapshot of the last finished step was written
    (``snapshot``; ``--continue`` / ``train(resume=True)`` resumes from it). A ``KeyboardInterrupt``."""

    def __init__(self, signal_name: str, step: int, snapshot: Path | None):
        self.signal_name, self.step, self.snapshot = signal_name, step, snapshot
        super().__init__(f"{signal_name} at step {step}; snapshot {snapshot}")


class _StopSignals:
    """While active (main thread only): SIGINT and SIGTERM set ``received`` (the signal's name) instead of
    stopping the process at once, so that the loop ends after the step it is in and writes a snapshot; a
    second signal raises KeyboardInterrupt at once. The previous handlers come back on exit."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.received: str | None = None
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        return False


def _all_finite(terms: dict, dist_info, step: int) -> None:
    """Raise NonFiniteLoss on every rank when any rank's loss is not finite."""
    if dist_info.world_size > 1:
        flag = torch.stack([torch.isfinite(v.detach()).all() for v in terms.values()]).all().to(torch.float32)
        flag = flag.to(dist_info.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        if flag.item() < 1:
            bad = {k: v for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())}
            if not bad:   # another rank's term: name it generically
                bad = {"total (another rank)": torch.tensor(float("nan"))}
            check_finite(bad, step)
    check_finite(terms, step)


class _Clock:
    """Wall time of the parts of a step (ms), synchronising CUDA so that each part is its own."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t = time.perf_counter()
        self.parts: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + (now - self.t) * 1000
        self.t = now

    def take(self) -> dict[str, float]:
        parts, self.parts = self.parts, {}
        return parts


def _mean_over_ranks(sums: dict[str, float], dist_info) -> dict[str, float]:
    """The ranks' mean of each logged sum (every rank calls this at the same step)."""
    if dist_info.world_size == 1:
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=dist_info.device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / dist_info.world_size).tolist()))


def _any_rank(flag: bool, dist_info) -> bool:
    """``flag`` of any rank (so that every rank stops at the same step)."""
    if dist_info.world_size == 1:
        return bool(flag)
    t = torch.tensor(float(flag), device=dist_info.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _rank_spread(module: torch.nn.Module, dist_info) -> float:
    """max over parameters and buffers of (max over ranks − min over ranks): 0 when every rank holds the
    same model (what DDP guarantees; checked once at the end). Every rank must call it."""
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in
                      (*module.parameters(), *module.buffers())
                      if t.is_floating_point() and t.layout == torch.strided]).to(dist_info.device)
    hi, lo = flat.clone(), flat.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).max()) if flat.numel() else 0.0


# ----------------------------------------------------------------- train
def train(train_config: TrainConfig, model_config: ModelConfig, data_root, output_root, *,
          resume: bool = False, hand_model: HandModel | None = None, device: str | None = None,
          progress: bool = True, echo: bool = True, time_limit_s: float | None = None,
          on_record: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a DeepHandMesh (see the module docstring).

    Args:
        train_config, model_config: the recipe and the architecture (saved in every snapshot).
        data_root: dataset root (official layout; the virtual capture or the real data).
        output_root: where ``log/`` and ``model_dump/`` go.
        resume: continue from the newest loadable snapshot in ``output_root/model_dump`` (none:
            start afresh, saying so).
        hand_model: the template (default: ``data_root/hand_model``).
        device: ``"cpu"``, ``"cuda"``, … (default: torchrun's local GPU, else CUDA if available, else CPU).
        progress: tqdm progress bar (rank 0).
        echo: also print log lines (rank 0).
        time_limit_s: stop after the step that exceeds this many seconds of training (probing not
            counted; a snapshot is written there); None: train all epochs.
        on_record: called with each metrics record on rank 0 (e.g. a notebook's live plot).
    Returns:
        :class:`TrainResult`.
    Raises:
        NonFiniteLoss: a loss term became NaN or infinite (message: step and term).
    """
    cfg = train_config
    data_root, output_root = Path(data_root), Path(output_root)
    info = init_distributed(device)
    main = is_main(info)
    log = _Log(output_root, main, echo)
    previous_det = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(cfg.seed, cfg.deterministic)
        group = ("no process group: one process, not distributed" if info.backend in (None, "", "none")
                 else f"{info.backend} process group")
        log(f"training on {info.device} ({info.world_size} process{'es' if info.world_size > 1 else ''}, "
            f"{group}); data {data_root}; output {output_root}")
        log(f"train_config {json.dumps(cfg.to_dict())}")
        log(f"model_config {json.dumps(model_config.to_dict())}")

        # ---- data
        train_frames, test_frames, rule = split_training_frames(data_root, cfg, log)
        log(f"split: {rule}; {len(train_frames)} training frames, {len(test_frames)} held out")
        if hand_model is None:
            hand_model = HandModel.read(Layout(data_root, cfg.subject).hand_model_dir)
        dataset = make_dataset(data_root, cfg, train_frames, hand_model.skeleton, progress=progress and main, log=log)
        sampler = make_sampler(dataset, info, shuffle=True, seed=cfg.seed)
        # the loader's own generator, reseeded per epoch: iter(loader) then draws its base seed from it,
        # not from torch's global RNG, so a run resumed mid-epoch sees the same global RNG stream
        loader_rng = torch.Generator()
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                             collate_fn=collate_samples, num_workers=cfg.num_workers,
                                             pin_memory=info.device.type == "cuda",
                                             persistent_workers=False, generator=loader_rng)

        # ---- model
        torch.manual_seed(cfg.seed)
        model = DeepHandMesh(hand_model, model_config)
        init = None
        if cfg.pose_source == "embedding" and cfg.embedding_init != "zero":
            from dhmlib.train.pose_init import initial_poses
            init = initial_poses(cfg.embedding_init, data_root, cfg.subject, train_frames, hand_model,
                                 cache_dir=output_root / "cache", log=log)
        embedding = (PoseEmbedding(train_frames, model.hand.dof_mask, init=init)
                     if cfg.pose_source == "embedding" else None)
        penetration = None
        if cfg.uses_penetration:
            try:
                from dhmlib.losses import PenetrationLoss
                penetration = PenetrationLoss.from_hand(hand_model)
            except ImportError:
                log("penetration loss not available in this dhmlib: training without it")
        step_module = TrainStep(model, cfg, embedding, penetration).to(info.device)
        groups = parameter_groups(model, cfg, embedding)
        try:    # the fused kernel: ~5x faster than the default loop on CPU for the 12M corrective weights
            optimizer = torch.optim.Adam(groups, fused=True)
        except (RuntimeError, TypeError, ValueError):
            optimizer = torch.optim.Adam(groups)
        per_step = cfg.lr_schedule == "cosine" or cfg.warmup_steps > 0
        if per_step:
            scheduler = step_schedule(optimizer, cfg, cfg.max_steps or cfg.epochs * len(loader), len(loader))
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.lr_milestones), cfg.lr_gamma)
        net = wrap_model(step_module, info)
        log("parameters: " + ", ".join(f"{g['name']} {sum(p.numel() for p in g['params']):,} (lr {g['lr']:g})"
                                       for g in groups))

        # ---- resume
        start_epoch, step, snapshot = 0, 0, None
        dump = output_root / "model_dump"
        if resume:
            found = find_resumable(dump, log=log) if dump.is_dir() else None
            if found is None:
                log(f"--continue: no loadable snapshot in {dump}; starting from scratch")
            else:
                path, ckpt = found
                saved = ckpt.get("train_config") or {}
                diff = sorted(k for k, v in cfg.to_dict().items() if k in saved and saved[k] != v)
                if diff:
                    log(f"{path}: train_config differs from the snapshot's in {', '.join(diff)} (using the new values)")
                state = restore_training_state(ckpt, model, optimizer, scheduler, embedding, path=path)
                start_epoch, step, snapshot = state["start_epoch"], state["step"], path
                if state["mid_epoch"] and state["sampler"] is not None:
                    sampler.load_state_dict(state["sampler"])
                log(f"resumed from {path}: epoch {start_epoch}"
                    f"{' (mid-epoch)' if state['mid_epoch'] else ''}, step {step}")
                dropped = log.drop_after(step)
                if dropped:
                    log(f"metrics.jsonl: removed {dropped} record(s) after step {step} (written again from here)")

        # snapshots of this run, oldest first (keep_snapshots); a resumed run counts those it continues
        written: list[Path] = list(reversed(list_snapshots(dump))) if resume and snapshot is not None else []
        writer = BackgroundSnapshotWriter()

        def save(epoch: int, mid_epoch: bool, consumed: int = 0) -> Path | None:
            """``consumed``: batches of this pass over the epoch used so far (mid-epoch snapshots)."""
            if not main:
                return None
            p = snapshot_path(output_root, epoch, step if mid_epoch else None)
            sampler_state = sampler.state_dict(consumed=consumed * cfg.batch_size) if mid_epoch else None
            save_training_snapshot(p, model, epoch, optimizer, train_config=cfg.to_dict(), scheduler=scheduler,
                                   sampler_state=sampler_state,
                                   pose_embedding=embedding, step=step, mid_epoch=mid_epoch, writer=writer)
            log(f"snapshot {p}")
            if p in written:            # the same file again (e.g. a stop at a snapshot_every_steps step)
                written.remove(p)
            written.append(p)
            while cfg.keep_snapshots is not None and len(written) > cfg.keep_snapshots:
                written.pop(0).unlink(missing_ok=True)
            return p

        def emit(rec: dict) -> None:
            log.record(rec)
            if main and on_record is not None:
                on_record(rec)

        # ---- held-out probe (rank 0 measures; every rank leaves the time out of its training time)
        probe, probed = None, {"s": 0.0, "step": None}
        if cfg.probe_every and main:
            from dhmlib.train.probe import HeldOutProbe
            probe = HeldOutProbe.create(data_root, cfg.subject, test_frames, model, info.device, log=log)

        def run_probe() -> float:
            """Probe at this step (rank 0); returns the seconds it took (on every rank)."""
            t0 = time.perf_counter()
            if probe is not None:
                rec = {"kind": "probe", "step": step, "seconds": training_s(t0), **probe(model)}
                emit(rec)
                log(f"probe step {step}: held-out vertex error {rec['vertex_mean_mm']:.3f} mm mean, "
                    f"{rec['vertex_p95_mm']:.3f} mm p95 ({rec['frames']} frames)")
            if info.world_size > 1:
                torch.distributed.barrier()
            dt = time.perf_counter() - t0
            probed["s"] += dt
            probed["step"] = step
            return dt

        def training_s(now: float | None = None) -> float:
            """Seconds of training so far (probing left out)."""
            return (time.perf_counter() if now is None else now) - t_start - probed["s"]

        # ---- loop
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        t_start = time.perf_counter()
        stopped = None
        epochs_done = start_epoch
        signals = _StopSignals().__enter__()    # Ctrl-C / SIGTERM: end after the step, with a snapshot
        if cfg.probe_every and step == 0:
            run_probe()
        elif cfg.probe_every:       # resumed: its first step was the last step (and probe) of the run before
            probed["step"] = step
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_steps is not None and step >= cfg.max_steps:      # a resumed run already there
                stopped = f"max_steps {cfg.max_steps} reached (step {step})"
                log(stopped)
                break
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            loader_rng.manual_seed(cfg.seed + epoch)
            net.train()
            sums: dict[str, float] = {}
            epoch_sums: dict[str, float] = {}
            n_int = n_epoch = 0
            t_int = time.perf_counter()
            batches, num_batches = loader, len(loader)
            if tqdm is not None and progress and main:
                batches = tqdm(loader, desc=f"epoch {epoch} (0..{cfg.epochs - 1})", leave=False, dynamic_ncols=True)
            clock = _Clock(info.device)
            for batch in batches:
                clock.lap("data_ms")
                batch = batch.to(info.device, non_blocking=True)
                out = net(batch)
                terms = dict(out.terms, total=out.total)
                _all_finite(terms, info, step)
                clock.lap("forward_ms")
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                clock.lap("backward_ms")
                optimizer.step()
                if per_step:
                    scheduler.step()
                step += 1
                vals = {k: float(v.detach()) for k, v in terms.items()}
                clock.lap("optimizer_ms")
                for k, v in {**vals, **clock.take()}.items():
                    sums[k] = sums.get(k, 0.0) + v
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + v
                n_int += 1
                n_epoch += 1
                if tqdm is not None and hasattr(batches, "set_postfix"):
                    batches.set_postfix(loss=f"{vals['total']:.3f}")
                if step % cfg.log_every == 0:
                    sums = _mean_over_ranks(sums, info)
                    dt = time.perf_counter() - t_int
                    rec = {"kind": "step", "step": step, "epoch": epoch,
                           **{k: v / n_int for k, v in sums.items()},
                           "lr": optimizer.param_groups[0]["lr"], "steps_per_s": n_int / max(dt, 1e-9),
                           "time_s": training_s()}
                    emit(rec)
                    log(f"epoch {epoch} step {step}: " + " ".join(
                        f"{k} {rec[k]:.4g}" for k in (*TERMS, "total") if k in rec)
                        + f" lr {rec['lr']:.2g} {rec['steps_per_s']:.2f} steps/s")
                    sums, n_int, t_int = {}, 0, time.perf_counter()
                if cfg.probe_every and step % cfg.probe_every == 0:
                    t_int += run_probe()        # the logged steps/s leave the probe out
                if cfg.snapshot_every_steps and step % cfg.snapshot_every_steps == 0:
                    snapshot = save(epoch, mid_epoch=True, consumed=n_epoch) or snapshot
                if cfg.max_steps is not None and step >= cfg.max_steps:     # the same step on every rank
                    stopped = f"max_steps {cfg.max_steps} reached at epoch {epoch}, step {step}"
                    break
                if time_limit_s is not None and _any_rank(training_s() > time_limit_s, info):
                    stopped = f"time limit {time_limit_s:g} s reached at epoch {epoch}, step {step}"
                    break
                if _any_rank(signals.received is not None, info):
                    stopped = (f"interrupted by {signals.received or 'a signal to another rank'} at epoch {epoch}, "
                               f"step {step} (resume with --continue)")
                    break
            if stopped is not None and n_epoch < num_batches:
                snapshot = save(epoch, mid_epoch=True, consumed=n_epoch) or snapshot
                log(stopped)
                break
            if not per_step:
                scheduler.step()
            epochs_done = epoch + 1
            if n_epoch:
                emit({"kind": "epoch", "step": step, "epoch": epoch,
                      **{k: v / n_epoch for k, v in epoch_sums.items()},
                      "lr": optimizer.param_groups[0]["lr"], "time_s": training_s()})
            snapshot = save(epoch, mid_epoch=False) or snapshot
            if stopped is not None:
                log(stopped)
                break
        signals.__exit__()
        writer.wait()                   # the last snapshot is on disk before anyone is told of it
        if signals.received is not None or (stopped or "").startswith("interrupted"):
            if not (stopped or "").startswith("interrupted"):     # after the last step: its snapshot is written
                log(f"interrupted by {signals.received} after the last step ({step})")
            raise TrainingInterrupted(signals.received or "signal", step, snapshot)
        if cfg.probe_every and probed["step"] != step:
            run_probe()
        wall = training_s()
        if info.world_size > 1:
            spread = _rank_spread(step_module, info)
            log(f"parameters on the {info.world_size} ranks: max |difference| {spread:.3g}"
                + (" (identical)" if spread == 0 else " (ranks diverged)"))
        log(f"done: {epochs_done} epochs, {step} steps, {wall:.1f} s"
            + (f" (+ {probed['s']:.1f} s probing)" if cfg.probe_every else ""))
        return TrainResult(model=model, embedding=embedding, train_frames=train_frames, test_frames=test_frames,
                           split_rule=rule, snapshot=snapshot, epochs=epochs_done, steps=step, wall_s=wall,
                           history=list(log.records), stopped_early=stopped, probe_s=probed["s"])
    except Exception as e:      # the log says why training stopped (NaN/inf: step and term)
        log(f"ERROR {type(e).__name__}: {e}")
        raise
    finally:
        if "writer" in locals():
            writer.wait(raise_error=False)
        if "signals" in locals():
            signals.__exit__()
        log.close()
        torch.use_deterministic_algorithms(previous_det)
        cleanup_distributed()

