"""The training loop: one code path for one process and torchrun DDP.

``train(train_config, model_config, data_root, output_root)`` runs five phases, each a function below:
:func:`_load_data`, :func:`_build_model`, :meth:`_Run.resume`, :meth:`_Run.start_probe`, :meth:`_Run.loop`.

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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dhmlib.data.layout import Layout
from dhmlib.data.sample import collate_samples
from dhmlib.hand.handmodel import HandModel
from dhmlib.losses import PenetrationLoss
from dhmlib.memory import keep_freed_memory
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.train.checkpoint import (BackgroundSnapshotWriter, find_resumable, list_snapshots, restore_training_state,
                                     save_training_snapshot, snapshot_path)
from dhmlib.train.config import TrainConfig
from dhmlib.train.distributed import (DistInfo, all_finite, any_rank, cleanup_distributed, init_distributed, is_main,
                                      make_sampler, mean_over_ranks, rank_spread, wrap_model)
from dhmlib.train.embedding import PoseEmbedding
from dhmlib.train.inputs import make_dataset, split_training_frames
from dhmlib.train.log import RunLog, StepClock
from dhmlib.train.optim import parameter_groups, step_schedule
from dhmlib.train.pose_init import initial_poses
from dhmlib.train.probe import HeldOutProbe
from dhmlib.train.signals import StopSignals, TrainingInterrupted
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
    keep_freed_memory()
    info = init_distributed(device)
    log = RunLog(output_root, is_main(info), echo)
    previous_det = torch.are_deterministic_algorithms_enabled()
    run = None
    try:
        seed_everything(cfg.seed, cfg.deterministic)
        _log_setup(log, info, cfg, model_config, data_root, output_root)
        data = _load_data(cfg, data_root, hand_model, info, log, progress=progress and is_main(info))
        parts = _build_model(cfg, model_config, data, data_root, output_root, info, log)
        run = _Run(cfg, info, log, data, parts, output_root, on_record)
        if resume:
            run.resume()
        run.start_probe(data_root)
        return run.loop(progress=progress and is_main(info), time_limit_s=time_limit_s)
    except Exception as e:      # the log says why training stopped (NaN/inf: step and term)
        log(f"ERROR {type(e).__name__}: {e}")
        raise
    finally:
        if run is not None:
            run.close()
        log.close()
        torch.use_deterministic_algorithms(previous_det)
        cleanup_distributed()


def _log_setup(log: RunLog, info: DistInfo, cfg: TrainConfig, model_config: ModelConfig, data_root, output_root):
    group = ("no process group: one process, not distributed" if info.backend in (None, "", "none")
             else f"{info.backend} process group")
    log(f"training on {info.device} ({info.world_size} process{'es' if info.world_size > 1 else ''}, "
        f"{group}); data {data_root}; output {output_root}")
    log(f"train_config {json.dumps(cfg.to_dict())}")
    log(f"model_config {json.dumps(model_config.to_dict())}")


# ----------------------------------------------------------------- phase 1: data
@dataclass
class _Data:
    """The training frames and how they are read: dataset, sharded resumable sampler, loader."""

    train_frames: tuple[int, ...]
    test_frames: tuple[int, ...]
    rule: str
    hand_model: HandModel
    dataset: torch.utils.data.Dataset
    sampler: torch.utils.data.Sampler
    loader: torch.utils.data.DataLoader
    loader_rng: torch.Generator


def _load_data(cfg: TrainConfig, data_root: Path, hand_model: HandModel | None, info: DistInfo, log: RunLog, *,
               progress: bool) -> _Data:
    train_frames, test_frames, rule = split_training_frames(data_root, cfg, log)
    log(f"split: {rule}; {len(train_frames)} training frames, {len(test_frames)} held out")
    if hand_model is None:
        hand_model = HandModel.read(Layout(data_root, cfg.subject).hand_model_dir)
    dataset = make_dataset(data_root, cfg, train_frames, hand_model.skeleton, progress=progress, log=log)
    sampler = make_sampler(dataset, info, shuffle=True, seed=cfg.seed)
    # the loader's own generator, reseeded per epoch: iter(loader) then draws its base seed from it,
    # not from torch's global RNG, so a run resumed mid-epoch sees the same global RNG stream
    loader_rng = torch.Generator()
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=collate_samples, num_workers=cfg.num_workers,
                                         pin_memory=info.device.type == "cuda",
                                         persistent_workers=False, generator=loader_rng)
    return _Data(train_frames, test_frames, rule, hand_model, dataset, sampler, loader, loader_rng)


# ----------------------------------------------------------------- phase 2: model
@dataclass
class _Parts:
    """What trains: the network, the pose embedding, the step (losses) and its DDP wrapper, Adam, the schedule."""

    model: DeepHandMesh
    embedding: PoseEmbedding | None
    step_module: TrainStep
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step: bool          # the schedule steps per optimizer step (else per epoch)


def _build_model(cfg: TrainConfig, model_config: ModelConfig, data: _Data, data_root: Path, output_root: Path,
                 info: DistInfo, log: RunLog) -> _Parts:
    torch.manual_seed(cfg.seed)
    model = DeepHandMesh(data.hand_model, model_config)
    init = None
    if cfg.pose_source == "embedding" and cfg.embedding_init != "zero":
        init = initial_poses(cfg.embedding_init, data_root, cfg.subject, data.train_frames, data.hand_model,
                             cache_dir=output_root / "cache", log=log)
    embedding = (PoseEmbedding(data.train_frames, model.hand.dof_mask, init=init)
                 if cfg.pose_source == "embedding" else None)
    penetration = PenetrationLoss.from_hand(data.hand_model) if cfg.uses_penetration else None
    step_module = TrainStep(model, cfg, embedding, penetration).to(info.device)
    groups = parameter_groups(model, cfg, embedding)
    try:    # the fused kernel: ~5x faster than the default loop on CPU for the 12M corrective weights
        optimizer = torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam(groups)
    per_step = cfg.lr_schedule == "cosine" or cfg.warmup_steps > 0
    if per_step:
        scheduler = step_schedule(optimizer, cfg, cfg.max_steps or cfg.epochs * len(data.loader), len(data.loader))
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.lr_milestones), cfg.lr_gamma)
    net = wrap_model(step_module, info)
    log("parameters: " + ", ".join(f"{g['name']} {sum(p.numel() for p in g['params']):,} (lr {g['lr']:g})"
                                   for g in groups))
    return _Parts(model, embedding, step_module, net, optimizer, scheduler, per_step)


# ----------------------------------------------------------------- phases 3-5: resume, probe, loop
class _Run:
    """One training run's state between the phases: the step, the snapshots written, probing time."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, log: RunLog, data: _Data, parts: _Parts, output_root: Path,
                 on_record: Callable[[dict], None] | None):
        self.cfg, self.info, self.log, self.data, self.parts = cfg, info, log, data, parts
        self.output_root, self.on_record = output_root, on_record
        self.main = is_main(info)
        self.start_epoch, self.step, self.snapshot = 0, 0, None
        self.dump = output_root / "model_dump"
        self.written: list[Path] = []     # snapshots of this run, oldest first (keep_snapshots)
        self.writer = BackgroundSnapshotWriter()
        self.probe: HeldOutProbe | None = None
        self.probe_s, self.probed_step = 0.0, None
        self.t_start = time.perf_counter()
        self.signals: StopSignals | None = None

    # ---- phase 3: resume
    def resume(self) -> None:
        """Continue from the newest loadable snapshot in ``model_dump/`` (none: from scratch, saying so)."""
        cfg, log, parts = self.cfg, self.log, self.parts
        found = find_resumable(self.dump, log=log) if self.dump.is_dir() else None
        if found is None:
            log(f"--continue: no loadable snapshot in {self.dump}; starting from scratch")
            return
        path, ckpt = found
        saved = ckpt.get("train_config") or {}
        diff = sorted(k for k, v in cfg.to_dict().items() if k in saved and saved[k] != v)
        if diff:
            log(f"{path}: train_config differs from the snapshot's in {', '.join(diff)} (using the new values)")
        state = restore_training_state(ckpt, parts.model, parts.optimizer, parts.scheduler, parts.embedding, path=path)
        self.start_epoch, self.step, self.snapshot = state["start_epoch"], state["step"], path
        if state["mid_epoch"] and state["sampler"] is not None:
            self.data.sampler.load_state_dict(state["sampler"])
        log(f"resumed from {path}: epoch {self.start_epoch}"
            f"{' (mid-epoch)' if state['mid_epoch'] else ''}, step {self.step}")
        dropped = log.drop_after(self.step)
        if dropped:
            log(f"metrics.jsonl: removed {dropped} record(s) after step {self.step} (written again from here)")
        self.written = list(reversed(list_snapshots(self.dump)))   # a resumed run counts those it continues

    # ---- phase 4: the held-out probe (rank 0 measures; every rank leaves the time out of its training time)
    def start_probe(self, data_root: Path) -> None:
        if self.cfg.probe_every and self.main:
            self.probe = HeldOutProbe.create(data_root, self.cfg.subject, self.data.test_frames, self.parts.model,
                                             self.info.device, log=self.log)

    def run_probe(self) -> float:
        """Probe at this step (rank 0); returns the seconds it took (on every rank)."""
        t0 = time.perf_counter()
        if self.probe is not None:
            rec = {"kind": "probe", "step": self.step, "seconds": self.training_s(t0), **self.probe(self.parts.model)}
            self.emit(rec)
            self.log(f"probe step {self.step}: held-out vertex error {rec['vertex_mean_mm']:.3f} mm mean, "
                     f"{rec['vertex_p95_mm']:.3f} mm p95 ({rec['frames']} frames)")
        if self.info.world_size > 1:
            torch.distributed.barrier()
        dt = time.perf_counter() - t0
        self.probe_s += dt
        self.probed_step = self.step
        return dt

    def training_s(self, now: float | None = None) -> float:
        """Seconds of training so far (probing left out)."""
        return (time.perf_counter() if now is None else now) - self.t_start - self.probe_s

    def emit(self, rec: dict) -> None:
        self.log.record(rec)
        if self.main and self.on_record is not None:
            self.on_record(rec)

    def save(self, epoch: int, mid_epoch: bool, consumed: int = 0) -> Path | None:
        """A snapshot (rank 0); ``consumed``: batches of this pass over the epoch used so far (mid-epoch)."""
        if not self.main:
            return None
        cfg, parts, step = self.cfg, self.parts, self.step
        p = snapshot_path(self.output_root, epoch, step if mid_epoch else None)
        sampler_state = self.data.sampler.state_dict(consumed=consumed * cfg.batch_size) if mid_epoch else None
        save_training_snapshot(p, parts.model, epoch, parts.optimizer, train_config=cfg.to_dict(),
                               scheduler=parts.scheduler, sampler_state=sampler_state,
                               pose_embedding=parts.embedding, step=step, mid_epoch=mid_epoch, writer=self.writer)
        self.log(f"snapshot {p}")
        if p in self.written:            # the same file again (e.g. a stop at a snapshot_every_steps step)
            self.written.remove(p)
        self.written.append(p)
        while cfg.keep_snapshots is not None and len(self.written) > cfg.keep_snapshots:
            self.written.pop(0).unlink(missing_ok=True)
        return p

    # ---- phase 5: the loop
    def loop(self, *, progress: bool, time_limit_s: float | None) -> TrainResult:
        """Epochs of steps until ``epochs``, ``max_steps``, the time limit or a signal; then the result."""
        cfg, log = self.cfg, self.log
        self.t_start = time.perf_counter()
        stopped = None
        epochs_done = self.start_epoch
        self.signals = StopSignals().__enter__()    # Ctrl-C / SIGTERM: end after the step, with a snapshot
        if cfg.probe_every and self.step == 0:
            self.run_probe()
        elif cfg.probe_every:       # resumed: its first step was the last step (and probe) of the run before
            self.probed_step = self.step
        for epoch in range(self.start_epoch, cfg.epochs):
            if cfg.max_steps is not None and self.step >= cfg.max_steps:      # a resumed run already there
                stopped = f"max_steps {cfg.max_steps} reached (step {self.step})"
                log(stopped)
                break
            stopped, finished = self.epoch(epoch, progress=progress, time_limit_s=time_limit_s)
            if not finished:
                log(stopped)
                break
            epochs_done = epoch + 1
            if stopped is not None:
                log(stopped)
                break
        return self.finish(stopped, epochs_done)

    def epoch(self, epoch: int, *, progress: bool, time_limit_s: float | None) -> tuple[str | None, bool]:
        """One pass over the training frames (or part of it): (why it stopped early or None, whether the epoch
        ended: scheduler stepped, epoch record and snapshot written)."""
        cfg, info, log, data, parts = self.cfg, self.info, self.log, self.data, self.parts
        stopped = None
        data.sampler.set_epoch(epoch)
        data.dataset.set_epoch(epoch)
        data.loader_rng.manual_seed(cfg.seed + epoch)
        parts.net.train()
        sums: dict[str, float] = {}
        epoch_sums: dict[str, float] = {}
        n_int = n_epoch = 0
        t_int = time.perf_counter()
        batches, num_batches = data.loader, len(data.loader)
        if progress:
            batches = tqdm(data.loader, desc=f"epoch {epoch} (0..{cfg.epochs - 1})", leave=False, dynamic_ncols=True)
        clock = StepClock(info.device)
        for batch in batches:
            clock.lap("data_ms")
            batch = batch.to(info.device, non_blocking=True)
            out = parts.net(batch)
            terms = dict(out.terms, total=out.total)
            all_finite(terms, info, self.step)
            clock.lap("forward_ms")
            parts.optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            clock.lap("backward_ms")
            parts.optimizer.step()
            if parts.per_step:
                parts.scheduler.step()
            self.step += 1
            step = self.step
            vals = {k: float(v.detach()) for k, v in terms.items()}
            clock.lap("optimizer_ms")
            for k, v in {**vals, **clock.take()}.items():
                sums[k] = sums.get(k, 0.0) + v
                epoch_sums[k] = epoch_sums.get(k, 0.0) + v
            n_int += 1
            n_epoch += 1
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{vals['total']:.3f}")
            if step % cfg.log_every == 0:
                sums = mean_over_ranks(sums, info)
                dt = time.perf_counter() - t_int
                rec = {"kind": "step", "step": step, "epoch": epoch,
                       **{k: v / n_int for k, v in sums.items()},
                       "lr": parts.optimizer.param_groups[0]["lr"], "steps_per_s": n_int / max(dt, 1e-9),
                       "time_s": self.training_s()}
                self.emit(rec)
                log(f"epoch {epoch} step {step}: " + " ".join(
                    f"{k} {rec[k]:.4g}" for k in (*TERMS, "total") if k in rec)
                    + f" lr {rec['lr']:.2g} {rec['steps_per_s']:.2f} steps/s")
                sums, n_int, t_int = {}, 0, time.perf_counter()
            if cfg.probe_every and step % cfg.probe_every == 0:
                t_int += self.run_probe()        # the logged steps/s leave the probe out
            if cfg.snapshot_every_steps and step % cfg.snapshot_every_steps == 0:
                self.snapshot = self.save(epoch, mid_epoch=True, consumed=n_epoch) or self.snapshot
            if cfg.max_steps is not None and step >= cfg.max_steps:     # the same step on every rank
                stopped = f"max_steps {cfg.max_steps} reached at epoch {epoch}, step {step}"
                break
            if time_limit_s is not None and any_rank(self.training_s() > time_limit_s, info):
                stopped = f"time limit {time_limit_s:g} s reached at epoch {epoch}, step {step}"
                break
            if any_rank(self.signals.received is not None, info):
                stopped = (f"interrupted by {self.signals.received or 'a signal to another rank'} at epoch {epoch}, "
                           f"step {step} (resume with --continue)")
                break
        if stopped is not None and n_epoch < num_batches:
            self.snapshot = self.save(epoch, mid_epoch=True, consumed=n_epoch) or self.snapshot
            return stopped, False
        if not parts.per_step:
            parts.scheduler.step()
        if n_epoch:
            self.emit({"kind": "epoch", "step": self.step, "epoch": epoch,
                       **{k: v / n_epoch for k, v in epoch_sums.items()},
                       "lr": parts.optimizer.param_groups[0]["lr"], "time_s": self.training_s()})
        self.snapshot = self.save(epoch, mid_epoch=False) or self.snapshot
        return stopped, True

    def finish(self, stopped: str | None, epochs_done: int) -> TrainResult:
        """After the last step: the last snapshot on disk, a last probe, the ranks compared, the result."""
        cfg, info, log, step = self.cfg, self.info, self.log, self.step
        self.signals.__exit__()
        self.writer.wait()                   # the last snapshot is on disk before anyone is told of it
        received = self.signals.received
        if received is not None or (stopped or "").startswith("interrupted"):
            if not (stopped or "").startswith("interrupted"):     # after the last step: its snapshot is written
                log(f"interrupted by {received} after the last step ({step})")
            raise TrainingInterrupted(received or "signal", step, self.snapshot)
        if cfg.probe_every and self.probed_step != step:
            self.run_probe()
        wall = self.training_s()
        if info.world_size > 1:
            spread = rank_spread(self.parts.step_module, info)
            log(f"parameters on the {info.world_size} ranks: max |difference| {spread:.3g}"
                + (" (identical)" if spread == 0 else " (ranks diverged)"))
        log(f"done: {epochs_done} epochs, {step} steps, {wall:.1f} s"
            + (f" (+ {self.probe_s:.1f} s probing)" if cfg.probe_every else ""))
        d = self.data
        return TrainResult(model=self.parts.model, embedding=self.parts.embedding, train_frames=d.train_frames,
                           test_frames=d.test_frames, split_rule=d.rule, snapshot=self.snapshot, epochs=epochs_done,
                           steps=step, wall_s=wall, history=list(log.records), stopped_early=stopped,
                           probe_s=self.probe_s)

    def close(self) -> None:
        """Wait for the snapshot writer and give the signal handlers back (also after an error)."""
        self.writer.wait(raise_error=False)
        if self.signals is not None:
            self.signals.__exit__()
