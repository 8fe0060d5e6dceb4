"""Training configuration: :class:`TrainConfig` and the named presets.

A :class:`TrainConfig` says how to train (optimizer, schedule, batches, views, loss weights,
split, logging); the architecture is a :class:`~dhmlib.network.model.ModelConfig`. Both are saved in
every snapshot as plain dicts (``train_config``, ``model_config``).

Presets (:data:`PRESETS`, :func:`preset`):

- ``"paper"``: the original recipe (DESIGN.md): Adam lr 1e-4 ÷10 at epochs 30 and 32, 35
  epochs, batch 8 per device, 6 views, 256² input and renders, ResNet-50, image pose source;
  loss weights joint 1, depth 1, penetration 1 (rigid) / 5 (non-rigid), Laplacian 5. One
  deliberate difference: the Laplacian acts on the corrective offsets (``laplacian_form
  "offsets"``); ``"posed"`` is the original's form.
- ``"cpu-small"``: trains on a 2-core CPU in minutes: per-frame pose embeddings (works without
  images) that start at a fit of each frame to its 3D joints (``embedding_init="joint_fit"``) under
  a joint-limit prior, 4 views of 96², batch 8, ResNet-18 (used only with the image source), a
  higher learning rate for the correctives (1e-3, warmed up over 50 steps) and a cosine decay over
  the run's steps, normal-direction skin correctives with the ``zero_at_rest`` gauge (a tangential
  penalty for the free-basis variants), a bone-length-only skeleton corrective (with a free one the
  bones drift: 5.5 mm). Issue 14's experiments chose these (``notebooks/03b_ablation_diagnostics``):
  with the earlier recipe (rest-pose embeddings, no prior, no decay) the full model lost to the
  identity-only one on held-out poses.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

from dhmlib.configs import ConfigMixin, split_top_level
from dhmlib.network.model import CORRECTIVES, ModelConfig

POSE_SOURCES = ("image", "embedding")
EMBEDDING_INITS = ("zero", "joint_fit", "true_angles")
LR_SCHEDULES = ("multistep", "cosine")
LAPLACIAN_FORMS = ("offsets", "posed")
LOSS_NORMALIZE = ("all", "valid")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """How to train a :class:`~dhmlib.network.model.DeepHandMesh` (defaults: the paper's recipe).

    Attributes:
        pose_source: ``"image"`` (the encoder on the input crop, the paper) or ``"embedding"``
            (a learnable Euler vector per training frame; the only option without RGB images).
        epochs: number of epochs.
        lr: Adam learning rate of the network (encoder and pose net).
        corrective_lr: learning rate of the skin and skeleton correctives (None: ``lr``).
        embedding_lr: learning rate of the pose embedding (radians per step scale for Adam).
        lr_milestones: epochs after which every learning rate is multiplied by ``lr_gamma``.
        lr_gamma: the factor (0.1 in the paper).
        batch_size: samples per device and step.
        num_views: K depth views rendered per sample (drawn independently of the input camera).
        input_size: (H, W) of the input crop, pixels.
        render_size: (H, W) of the rendered and target depth crops, pixels.
        laplacian_form: ``"offsets"`` (on the corrective offsets, our default) or ``"posed"``
            (on the posed mesh, the original).
        joint_weight, depth_weight: weights of the joint (L1, mm) and depth (smooth-L1, mm) terms.
        penetration_rigid_weight, penetration_nonrigid_weight: weights of the two penetration terms
            (0 and 0 skip the penetration loss).
        laplacian_weight: weight of the Laplacian term (mm²).
        loss_normalize: ``"all"`` (the original's averaging) or ``"valid"`` for joint and depth.
        held_out: hold-out rule passed to ``dhmlib.data.split.split_frames`` (None: its default).
        subject: subject number N.
        max_frames: keep only the first N frames of the capture (quick runs); None: all.
        seed: seed of the model initialisation order, the sampler, the view draws.
        deterministic: ``torch.use_deterministic_algorithms(True)`` and seeded everything
            (bit-identical CPU runs, e.g. for resume tests).
        log_every: steps between log lines and metrics records.
        snapshot_every_steps: also write a mid-epoch snapshot every N steps (None: per epoch only).
        keep_snapshots: keep only the newest N snapshots this run wrote (None: all, as the original).
        num_workers: DataLoader worker processes (0: in the main process).
        crop_mode: the dataset's crop mode (``"seed"`` as the original, or ``"square"``).
        max_steps: stop after this many optimizer steps in all (counted from the start of the run,
            a resumed run included; a snapshot is written there); None: train all epochs.
        probe_every: every N steps, and at the first and the last step, measure the held-out
            per-vertex error of the current model posed with the TRUE angles of the held-out frames
            (virtual capture only; :mod:`dhmlib.train.probe`) into ``metrics.jsonl`` as
            ``kind: "probe"`` records; None: no probe.
        embedding_init: where the per-frame pose embedding starts: ``"zero"`` (the rest pose) or
            ``"joint_fit"``: each training frame's pose fitted to its 3D joints with the untrained
            decoder (template + LBS; :func:`dhmlib.train.pose_init.joint_fit_init`, cached per capture),
            so that the correctives learn from frames that are posed right from the first step;
            ``"true_angles"``: the virtual capture's true angles (an oracle for experiments; virtual capture only).
        train_embedding: False freezes the embedding at its initial angles (with ``embedding_init="true_angles"``:
            the oracle-pose experiment of the ablation's diagnostics).
        pose_prior_weight: weight of the joint-limit prior on the training poses
            (:func:`dhmlib.network.fit.limit_prior`, radians², zero inside the range of motion); 0: none (the original).
        lr_schedule: ``"multistep"`` (``lr_milestones`` in epochs, the original) or ``"cosine"``: every
            learning rate follows a half cosine from its value to ``lr_end_ratio`` × it over the run's
            steps (``max_steps``, else epochs × batches), stepped per optimizer step.
        lr_end_ratio: the cosine schedule's final factor.
        warmup_steps: the correctives' learning rate ramps linearly from 0 over the first N steps (the
            poses, already fitted with ``embedding_init="joint_fit"``, settle first; at most an eighth of
            the run's steps); 0: none.
        tangential_weight: weight of a penalty on the skin correctives' components tangential to the
            template surface (mean squared, mm², of ``o − (o·n)n``): directions that joints and depth barely
            see; 0: none (the original). No effect with ``corrective_basis="normal"``.
        prepared_crops: read the training depth crops from a prepared, memory-mapped store
            (:mod:`dhmlib.data.crop_cache`; built once per capture and crop settings, then reused; the same
            values) instead of reading and resampling the full-size depth maps at every step.
        pose_offset_weight: weight of an L2 prior on the pose corrective's offsets (mean squared, mm²,
            over the batch and the vertices), as the L2 priors on blend shapes in SMPL/MANO; 0: none.
    """

    pose_source: str = "image"
    epochs: int = 35
    lr: float = 1e-4
    corrective_lr: float | None = None
    embedding_lr: float = 1e-2
    lr_milestones: tuple[int, ...] = (30, 32)
    lr_gamma: float = 0.1
    batch_size: int = 8
    num_views: int = 6
    input_size: tuple[int, int] = (256, 256)
    render_size: tuple[int, int] = (256, 256)
    laplacian_form: str = "offsets"
    joint_weight: float = 1.0
    depth_weight: float = 1.0
    penetration_rigid_weight: float = 1.0
    penetration_nonrigid_weight: float = 5.0
    laplacian_weight: float = 5.0
    loss_normalize: str = "all"
    held_out: str | None = None
    subject: int = 1
    max_frames: int | None = None
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    snapshot_every_steps: int | None = None
    keep_snapshots: int | None = None
    num_workers: int = 0
    crop_mode: str = "seed"
    max_steps: int | None = None
    probe_every: int | None = None
    embedding_init: str = "zero"
    train_embedding: bool = True
    pose_prior_weight: float = 0.0
    lr_schedule: str = "multistep"
    lr_end_ratio: float = 0.01
    warmup_steps: int = 0
    tangential_weight: float = 0.0
    pose_offset_weight: float = 0.0
    prepared_crops: bool = True

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        # lists (from JSON or --set) become tuples; ints for floats are fine
        for name in ("lr_milestones", "input_size", "render_size"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        choices = {"pose_source": POSE_SOURCES, "laplacian_form": LAPLACIAN_FORMS,
                   "loss_normalize": LOSS_NORMALIZE, "crop_mode": ("seed", "square"),
                   "embedding_init": EMBEDDING_INITS, "lr_schedule": LR_SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"one of {allowed}")
        for name in ("epochs", "batch_size", "num_views", "log_every", "subject"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "a positive int")
        for name in ("seed", "num_workers", "warmup_steps"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an int >= 0")
        for name in ("max_frames", "snapshot_every_steps", "keep_snapshots", "max_steps", "probe_every"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                fail(name, "a positive int or None")
        for name in ("lr", "embedding_lr", "lr_gamma"):
            if not _is_num(getattr(self, name)) or not getattr(self, name) > 0:
                fail(name, "a number > 0")
        if not _is_num(self.lr_end_ratio) or not 0 < self.lr_end_ratio <= 1:
            fail("lr_end_ratio", "a number in (0, 1]")
        if self.corrective_lr is not None and (not _is_num(self.corrective_lr) or not self.corrective_lr > 0):
            fail("corrective_lr", "a number > 0 or None")
        for name in ("joint_weight", "depth_weight", "penetration_rigid_weight", "penetration_nonrigid_weight",
                     "laplacian_weight", "pose_prior_weight", "tangential_weight", "pose_offset_weight"):
            if not _is_num(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "a number >= 0")
        if not isinstance(self.lr_milestones, tuple) or not all(_is_int(m) and m >= 1 for m in self.lr_milestones) \
                or list(self.lr_milestones) != sorted(self.lr_milestones):
            fail("lr_milestones", "increasing positive epoch numbers")
        for name in ("input_size", "render_size"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 2 or not all(_is_int(s) and s >= 8 for s in v):
                fail(name, "(H, W) of at least 8 pixels each")
        if self.held_out is not None and not isinstance(self.held_out, str):
            fail("held_out", "a rule string or None")
        for name in ("deterministic", "train_embedding", "prepared_crops"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")

    @property
    def uses_penetration(self) -> bool:
        return self.penetration_rigid_weight > 0 or self.penetration_nonrigid_weight > 0


#: name → (TrainConfig, ModelConfig)
PRESETS: dict[str, tuple[TrainConfig, ModelConfig]] = {
    "paper": (TrainConfig(), ModelConfig(backbone=50)),
    "cpu-small": (
        TrainConfig(pose_source="embedding", epochs=60, lr=1e-3, corrective_lr=1e-3, embedding_lr=1e-3,
                    lr_milestones=(50,), batch_size=8, num_views=4, input_size=(128, 128),
                    render_size=(96, 96), penetration_rigid_weight=0.0, penetration_nonrigid_weight=0.0,
                    log_every=5, max_frames=None, keep_snapshots=2, embedding_init="joint_fit",
                    pose_prior_weight=1.0, lr_schedule="cosine", warmup_steps=50, tangential_weight=1.0),
        ModelConfig(backbone=18, corrective_basis="normal", pose_corrective_gauge="zero_at_rest",
                    skeleton_corrective_mode="bone_length")),
}


def preset(name: str, model_overrides: Mapping | None = None, **overrides) -> tuple[TrainConfig, ModelConfig]:
    """The configs of a named preset with ``overrides`` applied to the TrainConfig and
    ``model_overrides`` to the ModelConfig (unknown names and keys raise)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    tc, mc = PRESETS[name]
    if overrides:
        tc = tc.replace(**overrides)
    if model_overrides:
        mc = mc.replace(**dict(model_overrides))
    return tc, mc


def parse_set(items, train_config: TrainConfig, model_config: ModelConfig) -> tuple[TrainConfig, ModelConfig]:
    """Apply ``key=value`` strings (``dhm train --set``, notebook 02's ``overrides``) to the configs.

    ``key`` is a TrainConfig field, or ``model.<field>`` for the ModelConfig; a bare name that only
    the ModelConfig has (``pose_corrective``, ``corrective_basis``, …) goes to the ModelConfig too
    (``seed`` is in both: bare it is the TrainConfig's, ``model.seed`` the ModelConfig's).
    ``value`` is read as JSON when it parses (``1e-3``, ``[30, 32]``, ``null``, ``true``), else
    taken as a string.  ``items`` may also be one string of comma-separated pairs
    (:func:`split_assignments`).
    """
    if isinstance(items, str):
        items = split_assignments(items)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_changes, model_changes = {}, {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text.strip()
        if key.startswith("model."):
            model_changes[key[len("model."):]] = value
        elif key not in train_fields and key in model_fields:
            model_changes[key] = value
        else:
            train_changes[key] = value
    if train_changes:
        train_config = train_config.replace(**train_changes)
    if model_changes:
        model_config = model_config.replace(**model_changes)
    return train_config, model_config


def split_assignments(text: str) -> list[str]:
    """``"lr=1e-3, lr_milestones=[30,32], model.backbone=34"`` → ``["lr=1e-3", "lr_milestones=[30,32]",
    "model.backbone=34"]``: splits at the commas outside brackets and quotes; empty parts are dropped."""
    return [p for p in split_top_level(text) if p]


def corrective_fields(correctives) -> dict:
    """ModelConfig overrides that switch on exactly ``correctives``: ``"all"``, or names from
    :data:`dhmlib.network.model.CORRECTIVES` (``"pose"``, ``"identity"``, ``"skeleton"``) as a list or a
    comma-separated string; ``[]``/``"none"``: LBS only."""
    if isinstance(correctives, str):
        correctives = [] if correctives.strip() in ("none", "") else [n.strip() for n in correctives.split(",")]
    names = list(CORRECTIVES) if list(correctives or []) == ["all"] else list(correctives or [])
    bad = [n for n in names if n not in CORRECTIVES]
    if bad:
        raise ValueError(f"correctives: unknown {bad}; expected 'all' or names from {CORRECTIVES}")
    return {"pose_corrective": "pose" in names, "id_corrective": "identity" in names,
            "skeleton_corrective": "skeleton" in names}
