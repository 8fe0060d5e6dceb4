"""``dhm train`` (also what torchrun starts on every rank: ``python -m dhmlib.cli train …``).

::

    dhm train [--preset cpu-small|paper] [--data data] [--output output] [--epochs N]
              [--set key=value …] [--continue] [--time-limit S] [--max-steps N] [--probe-every N]
              [--device cpu|cuda]
              [--gpu 0-3 | --nproc N] [--nnodes … --node-rank … --rdzv-endpoint … --master-addr … --master-port …]

Without ``--gpu``/``--nproc`` it trains in this process (:func:`dhmlib.train.train`).  ``--gpu 0-3``
(the original's syntax; also ``0,1,2,3``) starts ``torchrun`` with one process per GPU (nccl),
``--nproc N`` N CPU processes (gloo); the command line is printed first, each process runs
``python -m dhmlib.cli train`` (this command, in its process) with the same training arguments
(:func:`dhmlib.train.launch.train_args`), torchrun's multi-node flags pass through.  ``--set`` takes TrainConfig fields (``lr=1e-3``, ``lr_milestones=[30,32]``,
``held_out=null``) and ``model.FIELD`` for the ModelConfig (a name only the ModelConfig has may go
bare); values are JSON where they parse.  ``--max-steps N`` and ``--probe-every N`` set the
TrainConfig fields ``max_steps`` (stop after N optimizer steps, with a snapshot) and
``probe_every`` (the held-out per-vertex error with the true angles every N steps, virtual capture
only, in ``OUTPUT/log/metrics.jsonl``).

Exit status: 0 done (also when ``--time-limit`` stopped it, with a snapshot); 1 a loss became
NaN/inf (the message names the step and the term; the last good snapshot stays); 2 a usage or
input error (one line); 130 interrupted (Ctrl-C, SIGTERM).  Under torchrun the status is torchrun's.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from dhmlib.cli._common import INTERRUPTED, PROBLEMS, CLIError, device, int_at_least, note, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = ("train DeepHandMesh: in this process, or under torchrun on GPUs (--gpu 0-3) or CPU processes (--nproc N); "
        "snapshots in OUTPUT/model_dump, logs in OUTPUT/log")

#: torchrun's multi-node flags accepted by ``dhm train`` → the spelling passed to torchrun
TORCHRUN_FLAGS = {"--nnodes": "--nnodes", "--node-rank": "--node_rank", "--rdzv-endpoint": "--rdzv_endpoint",
                  "--rdzv-backend": "--rdzv_backend", "--rdzv-id": "--rdzv_id", "--master-addr": "--master_addr",
                  "--master-port": "--master_port"}


def add(p) -> None:
    """The training arguments, then ``--gpu``, ``--nproc`` and torchrun's flags (the launcher; a rank has none)."""
    from dhmlib.train.config import PRESETS

    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="configuration preset (default: cpu-small; with --continue: the configuration of the "
                        "snapshot it resumes)")
    p.add_argument("--data", default=None, help="dataset root (default: $DHM_DATA or the project's data/)")
    p.add_argument("--output", default=None, help="output root: log/, model_dump/ (default: $DHM_OUTPUT or the project's output/)")
    p.add_argument("--epochs", type=int_at_least(1), default=None, help="number of epochs (overrides the preset)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field, or model.FIELD of the ModelConfig (repeatable; "
                        "several pairs per --set allowed)", nargs="+")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from the newest loadable snapshot in OUTPUT/model_dump, with its configuration "
                        "(max_steps, probe_every, …) unless --preset, --set or the flags here say otherwise")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="stop after S seconds of training (a snapshot is written there)")
    p.add_argument("--max-steps", type=int_at_least(1), default=None, metavar="N",
                   help="stop after N optimizer steps in all (a snapshot is written there); sets max_steps")
    p.add_argument("--probe-every", type=int_at_least(1), default=None, metavar="N",
                   help="every N steps (and at the first and last) record the held-out per-vertex error of the "
                        "model posed with the true angles (virtual capture only) in OUTPUT/log/metrics.jsonl; "
                        "sets probe_every")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N (default: CUDA if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("several processes (torchrun)")
    g.add_argument("--gpu", metavar="IDS", default=None,
                   help="GPU ids, '0-3' or '0,1,2,3': one process per GPU under torchrun (nccl)")
    g.add_argument("--nproc", type=int_at_least(1), default=None, metavar="N",
                   help="N CPU processes under torchrun (gloo)")
    for flag in TORCHRUN_FLAGS:
        g.add_argument(flag, dest="torchrun_" + flag[2:].replace("-", "_"), default=None, metavar="X",
                       help=f"passed to torchrun as {TORCHRUN_FLAGS[flag]} (multi-node)")


def _sets(args) -> list[str]:
    return [kv for group in args.sets for kv in (group if isinstance(group, list) else [group])]


DEFAULT_PRESET = "cpu-small"


def configs(args, resumed: dict | None = None):
    """(TrainConfig, ModelConfig) from ``--preset`` (default cpu-small), ``--set``, then ``--epochs``,
    ``--max-steps``, ``--probe-every``; CLIError when they do not parse.

    ``resumed``: the snapshot ``--continue`` resumes (its ``train_config`` and ``model_config``): without
    ``--preset`` these are the base instead of the preset, so that the run continues as it was configured.
    """
    from dhmlib.network.model import ModelConfig
    from dhmlib.train.config import TrainConfig, parse_set, preset

    try:
        saved = (resumed or {}).get("train_config"), (resumed or {}).get("model_config")
        if args.preset is None and saved[0] and saved[1]:     # fields of an older dhmlib are left out
            tc, mc = (cls.from_dict({k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})
                      for cls, d in ((TrainConfig, saved[0]), (ModelConfig, saved[1])))
        else:
            tc, mc = preset(args.preset or DEFAULT_PRESET)
        tc, mc = parse_set(_sets(args), tc, mc)
        if args.epochs is not None:
            tc = tc.replace(epochs=args.epochs)
        for name in ("max_steps", "probe_every"):
            if getattr(args, name, None) is not None:
                tc = tc.replace(**{name: getattr(args, name)})
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    return tc, mc


def worker_args(args, data, output, device: str) -> list[str]:
    """``-m dhmlib.cli train …``: what torchrun starts on every rank, with the same training arguments."""
    from dhmlib.train.launch import DHM_TRAIN, train_args

    return [*DHM_TRAIN, *train_args(data, output, preset=args.preset, sets=_sets(args), epochs=args.epochs,
                                    resume=args.resume, time_limit_s=args.time_limit, max_steps=args.max_steps,
                                    probe_every=args.probe_every, device=device, progress=not args.no_progress)]


def _gpus(text: str) -> list[int]:
    from dhmlib.train.distributed import parse_gpus

    try:
        return parse_gpus(text)
    except ValueError as e:
        raise CLIError(str(e)) from None


def launch_command(args, data, output) -> tuple[list[str], dict]:
    """torchrun's argv and environment for ``--gpu`` (wins over ``--nproc``) or ``--nproc`` (CLIError for
    a bad combination with ``--device``)."""
    from dhmlib.train.distributed import torchrun_command

    extra = []
    for flag, torchrun_flag in TORCHRUN_FLAGS.items():
        value = getattr(args, "torchrun_" + flag[2:].replace("-", "_"), None)
        if value is not None:
            extra.append(f"{torchrun_flag}={value}")
    if args.gpu is not None:
        gpus = _gpus(args.gpu)
        if args.device is not None and not args.device.startswith("cuda"):
            raise CLIError(f"--gpu {args.gpu} with --device {args.device}: GPU processes train on cuda")
        return torchrun_command(worker_args(args, data, output, "cuda"), gpus=gpus, extra=extra)
    if args.device is not None and args.device != "cpu":
        raise CLIError(f"--nproc {args.nproc} with --device {args.device}: --nproc starts CPU processes "
                       "(use --gpu IDS for GPUs)")
    return torchrun_command(worker_args(args, data, output, "cpu"), nproc=args.nproc, extra=extra)


def one_line(e: BaseException) -> str:
    """The message of a data error, also when a DataLoader worker re-raised it with its traceback inside."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = type(e).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(text.split("\n"))


def _launch(args, data, output) -> int:
    import subprocess

    from dhmlib.train.distributed import command_line

    if args.gpu is not None and args.nproc is not None:
        raise CLIError("--gpu and --nproc: give one (--gpu: one process per GPU; --nproc: CPU processes)")
    if args.gpu is not None:
        import torch

        gpus = _gpus(args.gpu)
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise CLIError(f"--gpu {args.gpu}: CUDA is not available on this machine (--nproc N runs CPU processes)")
        if max(gpus) >= n:
            raise CLIError(f"--gpu {args.gpu}: this machine has {n} CUDA device(s), ids 0..{n - 1}")
    argv, env = launch_command(args, data, output)
    print(command_line(argv, env), flush=True)
    proc = subprocess.Popen(argv, env=env)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:     # torchrun got the same Ctrl-C and stops its workers
        try:
            proc.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
        raise
    return 128 - rc if rc < 0 else rc


def _resumed(output) -> dict | None:
    """The configs of the snapshot ``--continue`` will resume in ``output`` (None: none loads)."""
    from dhmlib.train.checkpoint import MODEL_DUMP, find_resumable

    found = find_resumable(output / MODEL_DUMP, log=lambda msg: None)
    return None if found is None else {k: found[1].get(k) for k in ("train_config", "model_config")}


def run(args) -> int:
    from dhmlib.paths import data_dir, output_dir

    data, output = data_dir(args.data), output_dir(value=args.output)
    resumed = _resumed(output) if args.resume else None
    tc, mc = configs(args, resumed)
    if resumed is not None and args.preset is None and os.environ.get("RANK", "0") == "0":
        note("train", f"--continue: the snapshot's configuration (max_steps {tc.max_steps}, probe_every "
                      f"{tc.probe_every}, epochs {tc.epochs}); --preset, --set and the flags override it")
    multi = [f for f in TORCHRUN_FLAGS if getattr(args, "torchrun_" + f[2:].replace("-", "_"), None) is not None]
    launching = getattr(args, "gpu", None) is not None or getattr(args, "nproc", None) is not None
    if multi and not launching:
        raise CLIError(f"{multi[0]}: torchrun flags need --gpu IDS or --nproc N (the processes per node)")
    if not data.is_dir():
        raise CLIError(f"--data {data}: no such folder (write a virtual capture with 'dhm synth --out {data}')")
    writable_folder(output, "--output")
    if launching:
        return _launch(args, data, output)

    from dhmlib.data.check import PreflightError, preflight
    from dhmlib.data.dataset import DatasetError
    from dhmlib.data.keypoints import KeypointFileError
    from dhmlib.data.safe_pickle import DepthFileError
    from dhmlib.data.split import SplitError
    from dhmlib.train.checkpoint import NonFiniteLoss
    from dhmlib.train.loop import train
    from dhmlib.train.signals import TrainingInterrupted

    # SIGINT/SIGTERM (run_command turns SIGTERM into Ctrl-C): the loop ends after its step with a snapshot
    try:     # sizes and headers of what the run reads, before it starts (check-data reads them in full)
        checked = preflight(data, tc.subject, images=tc.pose_source == "image")
    except PreflightError as e:
        raise CLIError(str(e)) from None
    if os.environ.get("RANK", "0") == "0":
        print(f"checked {checked.get('keypoint files', 0)} keypoint files, {checked.get('depth maps', 0)} depth maps"
              + (f", {checked['images']} images" if checked.get("images") else "")
              + f" in {checked['seconds']:.1f} s (sizes and headers; 'dhm check-data' reads them in full)", flush=True)
    try:
        train(tc, mc, data, output, resume=args.resume, device=args.device, progress=not args.no_progress,
              time_limit_s=args.time_limit)
    except (SplitError, DatasetError, KeypointFileError, DepthFileError) as e:   # a bad input, also mid-run
        raise CLIError(one_line(e)) from None
    except NonFiniteLoss as e:
        if os.environ.get("RANK", "0") == "0":     # every rank stops at the same step; rank 0 says so
            print(f"dhm train: error: {e}", file=sys.stderr)
        return PROBLEMS
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"dhm train: interrupted ({e.signal_name}) after step {e.step}; snapshot {e.snapshot} "
                  f"(resume with --continue)", file=sys.stderr)
        return INTERRUPTED
    return 0
