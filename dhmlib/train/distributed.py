"""One code path for one process and torchrun DDP: process group, sampler, model wrapper, launcher.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) each process
joins a process group: nccl when it trains on CUDA (one GPU per local rank), gloo on CPU.
Without those variables everything degrades to one process and no process group.

:class:`ResumableSampler` deals the same seeded per-epoch permutation as
``torch.utils.data.DistributedSampler(shuffle=True, drop_last=True)`` (identical indices for the
same seed and epoch), and in addition remembers how far into the epoch it got, so that a resumed
run sees exactly the remaining samples in the same order.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass

import torch
from torch import nn
import torch.distributed as dist
from torch.utils.data import Sampler

from dhmlib.train.checkpoint import check_finite


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node), its device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "nccl", "gloo" or "none" (one process, no process group)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"init_distributed: environment variable {name}={v!r} is not an integer") from None


def init_distributed(device: str | None = None) -> DistInfo:
    """Join torchrun's process group if launched by it; else one process.

    Args:
        device: "cpu", "cuda" or None (CUDA when available).  Under torchrun on CUDA each process
            takes ``cuda:<LOCAL_RANK>`` (``torch.cuda.set_device``) and nccl; on CPU gloo.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"init_distributed: device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("init_distributed: device 'cuda' requested but torch.cuda.is_available() is False")
    world = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK") or 0
    local = _env_int("LOCAL_RANK")
    local = rank if local is None else local
    if world == 1 and not dist.is_initialized():
        dev = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        return DistInfo(0, 1, 0, dev, "none")
    if kind == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            raise RuntimeError(f"init_distributed: LOCAL_RANK={local} but only {n} CUDA device(s) are visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
    else:
        backend = dist.get_backend()
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, backend)


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main(info: DistInfo) -> bool:
    """Rank 0: the process that logs and writes snapshots."""
    return info.rank == 0


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (nothing with one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``tensor`` over ranks, for logging (a detached copy; the input is untouched)."""
    t = torch.as_tensor(tensor).detach().clone()
    if info.distributed:
        if t.device != info.device and info.backend == "nccl":
            t = t.to(info.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / info.world_size
    return t


def wrap_model(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` on ``info.device``, wrapped in DDP when ``world_size > 1`` (else returned as is).

    DDP synchronises gradients of what runs through the wrapper's ``forward``: wrap a module
    whose ``forward`` does the whole training forward (decode, render, losses), not one whose
    other methods are called.  Parameters that get no gradient in a step must either have
    ``requires_grad=False`` (e.g. the encoder when poses come from an embedding) or need
    ``find_unused_parameters=True``.
    """
    model = model.to(info.device)
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused_parameters)


# ----------------------------------------------------------------- sampler
class ResumableSampler(Sampler[int]):
    """Seeded, sharded, resumable sampler.

    Epoch ``e``'s order is ``torch.randperm(N)`` from a generator seeded ``seed + e`` (or
    ``arange(N)`` without shuffling), truncated to a multiple of ``num_replicas``; rank ``r``
    takes every ``num_replicas``-th index from ``r`` — exactly ``DistributedSampler(shuffle,
    seed, drop_last=True)``.

    ``position`` counts the indices of the epoch handed out so far over all ranks (this rank's
    count × ``num_replicas``).  :meth:`state_dict` saves it, :meth:`load_state_dict` restores it,
    and the next iteration continues from there — the remaining samples in the same order, also
    when the number of processes changed in between.  :meth:`set_epoch` with a different epoch
    starts that epoch at 0; with the same epoch it keeps the position.  A pass that ran to its end
    here, iterated again, starts the epoch over (as DistributedSampler does); a restored state at
    the end of the epoch yields nothing.

    The count assumes the index stream is consumed as handed out (a DataLoader with
    ``num_workers=0``); with worker processes prefetching, pass the consumed count to
    :meth:`state_dict`.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        if num_samples < 0:
            raise ValueError(f"ResumableSampler: num_samples must be >= 0, got {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: rank {rank} is outside 0..{num_replicas - 1}")
        self.n, self.num_replicas, self.rank = int(num_samples), int(num_replicas), int(rank)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.epoch = 0
        self.position = 0  # global: indices of this epoch consumed by all ranks together
        self._pass_start = 0
        self._done = False  # a pass ran to its end in this process: iterating again starts over

    # --- order
    def _total(self) -> int:
        return (self.n // self.num_replicas) * self.num_replicas

    def epoch_order(self, epoch: int | None = None) -> torch.Tensor:
        """(N,) int64: the full permutation of an epoch, before truncation and sharding."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g)

    def _start(self) -> int:
        return 0 if self._done else min(self.position, self._total())

    def __len__(self) -> int:
        """Indices this rank yields in the next iteration (the rest of the epoch)."""
        return (self._total() - self._start()) // self.num_replicas

    def __iter__(self):
        start = self._start()
        R = self.num_replicas
        count = (self._total() - start) // R
        order = self.epoch_order()[start + self.rank: start + count * R: R].tolist()
        self.position = self._pass_start = start
        self._done = False
        for i in order:
            self.position += R
            yield i
        self._done = True

    # --- state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; a new epoch starts at position 0."""
        if int(epoch) != self.epoch:
            self.epoch, self.position, self._pass_start, self._done = int(epoch), 0, 0, False

    def state_dict(self, consumed: int | None = None) -> dict:
        """``{"epoch", "seed", "position", "num_samples", "num_replicas", "shuffle"}`` (plain ints/bools).

        ``consumed``: this rank's count of indices of the current pass actually used, when it
        differs from the count handed out (prefetching workers); ``position`` is then the pass's
        start plus ``consumed × num_replicas``.
        """
        pos = self.position
        if consumed is not None:
            pos = self._pass_start + int(consumed) * self.num_replicas
        return {"epoch": self.epoch, "seed": self.seed, "position": int(pos), "num_samples": self.n,
                "num_replicas": self.num_replicas, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Continue where :meth:`state_dict` left off; raises ValueError naming a key that does not fit."""
        for k in ("epoch", "seed", "position"):
            if k not in state:
                raise ValueError(f"ResumableSampler.load_state_dict: missing key {k!r}")
        if "num_samples" in state and int(state["num_samples"]) != self.n:
            raise ValueError(f"ResumableSampler.load_state_dict: num_samples {state['num_samples']} in the state, "
                             f"{self.n} in this dataset")
        if "shuffle" in state and bool(state["shuffle"]) != self.shuffle:
            raise ValueError(f"ResumableSampler.load_state_dict: shuffle={state['shuffle']} in the state, "
                             f"{self.shuffle} here")
        self.epoch, self.seed, self.position = int(state["epoch"]), int(state["seed"]), int(state["position"])
        self._pass_start, self._done = self.position, False


def make_sampler(dataset, info: DistInfo, shuffle: bool, seed: int) -> ResumableSampler:
    """A :class:`ResumableSampler` over ``len(dataset)`` for this rank (also with one process).

    For a bit-exact resume give the DataLoader ``generator=torch.Generator()``: without one, every
    ``iter(loader)`` draws a base seed from torch's global RNG, and a run resumed mid-epoch makes
    that draw after restoring the RNG state, the uninterrupted run before saving it.
    """
    return ResumableSampler(len(dataset), info.world_size, info.rank, shuffle=shuffle, seed=seed)


# ----------------------------------------------------------------- agreement between ranks
def all_finite(terms: dict, dist_info, step: int) -> None:
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


def mean_over_ranks(sums: dict[str, float], dist_info) -> dict[str, float]:
    """The ranks' mean of each logged sum (every rank calls this at the same step)."""
    if dist_info.world_size == 1:
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=dist_info.device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / dist_info.world_size).tolist()))


def any_rank(flag: bool, dist_info) -> bool:
    """``flag`` of any rank (so that every rank stops at the same step)."""
    if dist_info.world_size == 1:
        return bool(flag)
    t = torch.tensor(float(flag), device=dist_info.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def rank_spread(module: torch.nn.Module, dist_info) -> float:
    """max over parameters and buffers of (max over ranks − min over ranks): 0 when every rank holds the
    same model (what DDP guarantees; checked once at the end). Every rank must call it."""
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in
                      (*module.parameters(), *module.buffers())
                      if t.is_floating_point() and t.layout == torch.strided]).to(dist_info.device)
    hi, lo = flat.clone(), flat.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).max()) if flat.numel() else 0.0


# ----------------------------------------------------------------- launcher
def parse_gpus(text: str) -> list[int]:
    """``"0-3"``, ``"0,1,2,3"``, ``"0-1,3"`` → [0, 1, 2, 3] / [0, 1, 3] (order kept).

    Raises ValueError naming the bad token (not an id or range, reversed range, repeated id).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--gpu: expected GPU ids like '0-3' or '0,1,3', got {text!r}")
    out: list[int] = []
    for tok in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", tok.strip())
        if m is None:
            raise ValueError(f"--gpu {text!r}: bad token {tok!r} (expected an id like 2 or a range like 0-3)")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi < lo:
            raise ValueError(f"--gpu {text!r}: bad token {tok!r}: the range ends before it starts")
        for i in range(lo, hi + 1):
            if i in out:
                raise ValueError(f"--gpu {text!r}: bad token {tok!r}: GPU {i} given twice")
            out.append(i)
    return out


_MULTINODE = ("--nnodes", "--node_rank", "--node-rank", "--master_addr", "--master-addr", "--master_port",
              "--master-port", "--rdzv_backend", "--rdzv-backend", "--rdzv_endpoint", "--rdzv-endpoint",
              "--rdzv_id", "--rdzv-id", "--standalone")


def torchrun_command(module_args: list[str], gpus: list[int] | None = None, nproc: int | None = None,
                     extra=()) -> tuple[list[str], dict]:
    """``[python, -m, torch.distributed.run, --nproc_per_node, N, *extra, *module_args]`` and its environment.

    Args:
        module_args: what torchrun starts, e.g. ``["-m", "dhmlib.cli", "train", "--preset", "cpu-small"]``.
        gpus: GPU ids: one process per GPU, ``CUDA_VISIBLE_DEVICES`` set to them.
        nproc: process count without ``gpus`` (CPU processes: ``CUDA_VISIBLE_DEVICES=""``); with
            ``gpus`` it must equal ``len(gpus)``.
        extra: torchrun flags passed through (multi-node: ``--nnodes``, ``--node_rank``,
            ``--rdzv_endpoint``, …).  Without any rendezvous/multi-node flag ``--standalone`` is added
            (a free local port, so two runs on one machine do not collide).

    Returns (argv, env): env is a copy of ``os.environ`` with the changes, for ``subprocess``.
    """
    extra = [str(x) for x in extra]
    flags = {x.split("=", 1)[0] for x in extra if x.startswith("--")}
    for f in ("--nproc_per_node", "--nproc-per-node"):
        if f in flags:
            raise ValueError(f"torchrun_command: give the process count as gpus/nproc, not {f} in extra")
    env = dict(os.environ)
    if gpus is not None:
        gpus = list(gpus)
        if not gpus:
            raise ValueError("torchrun_command: gpus is empty")
        if nproc is not None and nproc != len(gpus):
            raise ValueError(f"torchrun_command: nproc={nproc} but {len(gpus)} GPUs given ({gpus})")
        nproc = len(gpus)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    else:
        if nproc is None or int(nproc) < 1:
            raise ValueError(f"torchrun_command: nproc must be >= 1 when no GPUs are given, got {nproc}")
        env["CUDA_VISIBLE_DEVICES"] = ""
    rdzv = [] if flags & set(_MULTINODE) else ["--standalone"]
    argv = [sys.executable, "-m", "torch.distributed.run", *rdzv, "--nproc_per_node", str(int(nproc)),
            *extra, *[str(a) for a in module_args]]
    return argv, env


def command_line(argv: list[str], env: dict | None = None) -> str:
    """A shell line for ``argv`` with the variables where ``env`` differs from ``os.environ`` in front (to print)."""
    changed = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
    pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items()))
    return (pre + " " if pre else "") + shlex.join(argv)
