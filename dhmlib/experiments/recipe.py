"""The configs of one training run from a notebook's parameters (notebook ``02_training``).

Order of application, each step on the result of the one before::

    preset ("cpu-small" | "paper")           dhmlib.train.config.preset
    → smoke settings (smoke=True)            :data:`SMOKE`: tiny renders, few frames, 2 epochs
                                             (and :data:`SMOKE_EVAL` for the evaluation, :func:`evaluation_options`)
    → variant ("a".."h" or its name)         dhmlib.experiments.variants.apply_variant (imported only when given)
    → explicit parameters                    TrainConfig / ModelConfig fields whose value is not None
    → overrides ("k=v,k=v")                  dhmlib.train.config.parse_set, as ``dhm train --set``

so an explicit parameter beats the variant, and ``overrides`` beats everything.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dhmlib.experiments.variants import apply_variant, get_variant
from dhmlib.network.model import ModelConfig
from dhmlib.train.config import TrainConfig, parse_set, preset

#: the smoke run's TrainConfig fields (CI: finishes in well under a minute on the smoke capture)
SMOKE = dict(epochs=2, batch_size=4, num_views=2, render_size=(32, 32), max_frames=8, log_every=1)
#: the smoke run's evaluation: at most this many held-out frames and views per frame, and pose-fit steps, so that
#: a smoke run stays quick on a real-size capture too (all 28 held-out frames × 24 views took 192 s there)
SMOKE_EVAL = dict(num_frames=4, num_views=3, fit_steps=40)


def evaluation_options(*, smoke: bool = False, fit_steps: int = 300, eval_views: int | None = None,
                       baseline: bool = True, eval_figures: bool = True, eval_frames: int | None = None,
                       eval_surface_every: int = 1) -> dict:
    """Keyword arguments of :func:`dhmlib.evaluation.held_out.evaluate_snapshot` from notebook 02's parameters;
    ``smoke`` caps frames, views and fit steps at :data:`SMOKE_EVAL` (smaller explicit values stay)."""
    def cap(value, limit):
        return limit if value is None else min(int(value), limit)

    out = {"fit_steps": int(fit_steps)}
    if smoke:
        out["fit_steps"] = cap(fit_steps, SMOKE_EVAL["fit_steps"])
        eval_views, eval_frames = cap(eval_views, SMOKE_EVAL["num_views"]), cap(eval_frames, SMOKE_EVAL["num_frames"])
    if eval_views is not None:
        out["num_views"] = int(eval_views)
    if eval_frames is not None:
        out["num_frames"] = int(eval_frames)
    if not baseline:
        out["baseline"] = False
    if not eval_figures:
        out["render_figures"] = False
    if eval_surface_every > 1:
        out["surface_every"] = int(eval_surface_every)
    return out


@dataclass(frozen=True)
class Recipe:
    """The configs of a run and where they came from.

    Attributes:
        train_config, model_config: what to train.
        base: the preset's (TrainConfig, ModelConfig), for tables that mark what changed.
        variant: the ``dhmlib.experiments.variants.Variant`` applied, or None.
    """

    train_config: TrainConfig
    model_config: ModelConfig
    base: tuple[TrainConfig, ModelConfig]
    variant: object | None = None

    def variant_record(self) -> dict | None:
        """``{"key", "name", "label"}`` of the variant (None without one), JSON-able."""
        v = self.variant
        if v is None:
            return None
        return {"key": v.key, "name": v.name, "label": getattr(v, "label", v.name)}


def build_recipe(preset_name: str, *, smoke: bool = False, variant: str = "", train_fields: Mapping | None = None,
                 model_fields: Mapping | None = None, overrides: str = "") -> Recipe:
    """The configs of a run (see the module docstring for the order).

    Args:
        preset_name: a preset of :data:`dhmlib.train.config.PRESETS`.
        smoke: apply :data:`SMOKE`.
        variant: a key (``"a"``) or name (``"lbs_only"``) of ``dhmlib.experiments.variants``; ``""``: none.
        train_fields, model_fields: explicit TrainConfig / ModelConfig fields; None values are skipped.
        overrides: ``"k=v,k=v"`` (:func:`~dhmlib.train.config.parse_set`; ``model.FIELD`` or a bare
            ModelConfig name for the ModelConfig; JSON values).
    Raises:
        ValueError: unknown preset, variant, field or value (the message names it).
    """
    base = preset(preset_name)
    tc, mc = base
    if smoke:
        tc = tc.replace(**SMOKE)
    chosen = None
    if variant:
        chosen = get_variant(variant)
        tc, mc = apply_variant(chosen, tc, mc)
    given = {k: v for k, v in (train_fields or {}).items() if v is not None}
    if given:
        tc = tc.replace(**given)
    given = {k: v for k, v in (model_fields or {}).items() if v is not None}
    if given:
        mc = mc.replace(**given)
    if overrides and overrides.strip():
        tc, mc = parse_set(overrides, tc, mc)
    return Recipe(tc, mc, base, chosen)
