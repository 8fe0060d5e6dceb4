"""The ablation variants (a)–(i) of issues 10 and 14: which corrective, loss and model option each one changes.

Every variant is a set of config overrides applied on top of a preset's configs
(:func:`dhmlib.train.preset`, ``"cpu-small"`` or ``"paper"``) by :func:`apply_variant`; all other
fields, so the seed, the data, the split and the budget, stay those of the preset (and of any
overrides the caller applies afterwards), which is what makes the variants comparable.

=====  ====================  ================================================================
 key    name                  configuration
=====  ====================  ================================================================
 (a)    ``lbs_only``          no corrective: the template skinned by LBS (only the poses train)
 (b)    ``skeleton``          + the skeleton (bone) corrective
 (c)    ``identity``          + the identity-dependent skin corrective
 (d)    ``full``              + the pose-dependent skin corrective (the pose MLP): the full model
 (e)    ``no_penetration``    (d) without the penetration loss (both weights 0)
 (f)    ``mano_linear``       (d) with a MANO-style linear pose blend shape of ``R − I`` per joint
                              (``pose_corrective_kind="linear_rotmat"``) instead of the pose MLP
 (g)    ``posed_laplacian``   (d) with the original's Laplacian on the posed mesh
                              (``laplacian_form="posed"``) instead of on the corrective offsets
 (h)    ``normal_basis``      (d) with the skin correctives along the template normals
                              (``corrective_basis="normal"``)
 (i)    ``local_pose``        (d) with a local pose corrective (``pose_corrective_kind="local"``:
                              per joint, its and its parent's ``R − I`` onto the joint's
                              skinning neighbourhood under a learnable distance mask)
=====  ====================  ================================================================

Every variant sets all the fields any variant controls (:data:`MODEL_FIELDS`,
:data:`TRAIN_FIELDS`), so the result does not depend on what the preset had for them:

- the three corrective switches, ``pose_corrective_kind`` (``"mlp"`` except (f) and (i)),
  ``corrective_basis`` (``"free"`` except (h)), ``laplacian_form`` (``"offsets"`` except (g));
- the penetration loss is on with the paper's weights, rigid 1 and non-rigid 5, in every variant
  but (e) (the ``cpu-small`` preset itself trains without it).

**The corrective basis.** The ``cpu-small`` preset uses normal-direction skin correctives
(``corrective_basis="normal"``). For the ablation (d) must differ from (h), so (a)–(g) use the
original's free (V·3) correctives and only (h) the normal basis. Consequence: (d), "the full
model" of this table, is the paper's model, not the ``cpu-small`` preset's own model; on the
virtual capture the normal basis gave clearly lower held-out per-vertex error in the training
issue's probe (0.38 mm against 0.61 mm, LBS alone 1.30 mm), so the best model of the table is
expected to be (h), and the "full model against LBS" claim should be read from both (d) and (h).
The preset's other model options (``skeleton_corrective_mode``, ``pose_corrective_gauge``) are
kept as the preset has them (``cpu-small``: bone-length skeleton corrective, pose corrective
zero at rest; the gauge is a no-op for (f), whose blend shape is zero at rest by construction).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dhmlib.network.model import ModelConfig
from dhmlib.train.config import TrainConfig, corrective_fields

#: the ModelConfig fields the variants set (each variant sets all of them)
MODEL_FIELDS = ("pose_corrective", "id_corrective", "skeleton_corrective", "pose_corrective_kind", "corrective_basis")
#: the TrainConfig fields the variants set (each variant sets all of them)
TRAIN_FIELDS = ("penetration_rigid_weight", "penetration_nonrigid_weight", "laplacian_form")
#: the paper's penetration loss weights (rigid, non-rigid), on in every variant but (e)
PENETRATION_WEIGHTS = (1.0, 5.0)


@dataclass(frozen=True)
class Variant:
    """One configuration of the ablation.

    Attributes:
        key: ``"a"`` … ``"h"``.
        name: identifier (``"lbs_only"``, ``"skeleton"``, ``"identity"``, ``"full"``,
            ``"no_penetration"``, ``"mano_linear"``, ``"posed_laplacian"``, ``"normal_basis"``).
        label: short human label for tables and figures, e.g. ``"(d) full model"``.
        description: one sentence: what the variant is and what it changes.
        model_overrides: :class:`~dhmlib.network.model.ModelConfig` fields (all of :data:`MODEL_FIELDS`).
        train_overrides: :class:`~dhmlib.train.TrainConfig` fields (all of :data:`TRAIN_FIELDS`).
    """

    key: str
    name: str
    label: str
    description: str
    model_overrides: dict
    train_overrides: dict

    def __hash__(self):                  # the dicts are not hashable; key identifies a variant
        return hash(self.key)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for records and results files)."""
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), dict) else v)
                for f in dataclasses.fields(self)}


def _variant(key, name, label, description, correctives, *, kind="mlp", basis="free", laplacian="offsets",
             penetration=PENETRATION_WEIGHTS) -> Variant:
    model = {**corrective_fields(correctives), "pose_corrective_kind": kind, "corrective_basis": basis}
    train = {"penetration_rigid_weight": float(penetration[0]), "penetration_nonrigid_weight": float(penetration[1]),
             "laplacian_form": laplacian}
    return Variant(key, name, f"({key}) {label}", description, model, train)


_ALL = ["skeleton", "identity", "pose"]
#: the variants (a)–(h), in order
VARIANTS: tuple[Variant, ...] = (
    _variant("a", "lbs_only", "LBS only", "The template skinned by linear blend skinning, no corrective "
             "(only the per-frame poses train).", []),
    _variant("b", "skeleton", "+ skeleton", "(a) plus the identity-dependent skeleton (bone) corrective.",
             ["skeleton"]),
    _variant("c", "identity", "+ identity", "(b) plus the identity-dependent skin corrective.", ["skeleton", "identity"]),
    _variant("d", "full", "full model", "(c) plus the pose-dependent skin corrective (the paper's pose MLP): "
             "the full model, free (V·3) correctives.", _ALL),
    _variant("e", "no_penetration", "no penetration loss", "(d) trained without the penetration loss "
             "(rigid and non-rigid weights 0).", _ALL, penetration=(0.0, 0.0)),
    _variant("f", "mano_linear", "MANO-style linear", "(d) with a MANO-style linear pose blend shape driven by "
             "R − I of each non-root joint's rotation (pose_corrective_kind='linear_rotmat') instead of the "
             "pose MLP.", _ALL, kind="linear_rotmat"),
    _variant("g", "posed_laplacian", "posed-mesh Laplacian", "(d) with the original's Laplacian on the posed mesh "
             "(laplacian_form='posed') instead of on the corrective offsets.", _ALL, laplacian="posed"),
    _variant("h", "normal_basis", "normal-direction correctives", "(d) with the skin correctives restricted to the "
             "template normals (corrective_basis='normal', the cpu-small preset's choice).", _ALL, basis="normal"),
    _variant("i", "local_pose", "local pose corrective", "(d) with a local pose corrective: per joint, a linear map "
             "of its own and its parent's R − I onto the vertices of its skinning neighbourhood, under a learnable "
             "mask initialised from the distance to the joint (pose_corrective_kind='local').", _ALL, kind="local"),
)


def get_variant(name_or_key: str | Variant) -> Variant:
    """The variant with this key (``"d"``, also ``"(d)"``) or name (``"full"``); case and spaces ignored.

    Raises ValueError listing the choices for anything else.
    """
    if isinstance(name_or_key, Variant):
        return name_or_key
    text = name_or_key.strip().lower() if isinstance(name_or_key, str) else None
    if text is not None and len(text) == 3 and text[0] == "(" and text[2] == ")":
        text = text[1]
    for v in VARIANTS:
        if text in (v.key, v.name):
            return v
    choices = ", ".join(f"{v.key} ({v.name})" for v in VARIANTS)
    raise ValueError(f"unknown ablation variant {name_or_key!r}; choices: {choices}")


def apply_variant(variant: Variant | str, train_config: TrainConfig,
                  model_config: ModelConfig) -> tuple[TrainConfig, ModelConfig]:
    """The configs of ``variant`` (a :class:`Variant`, a key or a name) on top of a preset's.

    Only the fields in the variant's overrides change (validated by ``replace``); seed, data,
    split, budget and everything else stay as given.  E.g.
    ``apply_variant("f", *dhmlib.train.preset("cpu-small"))``.
    """
    v = get_variant(variant)
    if not isinstance(train_config, TrainConfig) or not isinstance(model_config, ModelConfig):
        raise TypeError(f"apply_variant: expected (TrainConfig, ModelConfig), got "
                        f"({type(train_config).__name__}, {type(model_config).__name__})")
    return train_config.replace(**v.train_overrides), model_config.replace(**v.model_overrides)


def changes_from_full(variant: Variant | str) -> dict:
    """The overrides in which ``variant`` differs from (d) ``full``: ``{field: (full's, variant's)}``."""
    v, d = get_variant(variant), get_variant("full")
    out = {}
    for mine, theirs in ((v.model_overrides, d.model_overrides), (v.train_overrides, d.train_overrides)):
        out.update({k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]})
    return out


def variants_markdown() -> str:
    """A markdown table of the variants (key, name, label, what differs from (d), description)."""
    rows = ["| key | name | label | differs from (d) | description |", "| --- | --- | --- | --- | --- |"]
    for v in VARIANTS:
        diff = ", ".join(f"`{k}={new!r}`" for k, (_, new) in changes_from_full(v).items()) or "—"
        rows.append(f"| {v.key} | `{v.name}` | {v.label} | {diff} | {v.description} |")
    notes = ("All variants: the preset's seed, data, split and budget; penetration loss weights rigid "
             f"{PENETRATION_WEIGHTS[0]:g} / non-rigid {PENETRATION_WEIGHTS[1]:g} except (e); free (V·3) skin "
             "correctives except (h), so (d) is the paper's model, not the cpu-small preset's normal-basis one.")
    return "\n".join(rows) + "\n\n" + notes + "\n"
