"""dhmlib.experiments.variants: the variants (a)–(h) on top of both presets, table-driven against (d)."""
import dataclasses
import json

import pytest

from dhmlib.experiments.variants import (MODEL_FIELDS, TRAIN_FIELDS, VARIANTS, Variant, apply_variant,
                                         changes_from_full, get_variant, variants_markdown)
from dhmlib.network.model import ModelConfig
from dhmlib.train import PRESETS, TrainConfig, preset

ALL_ON = {"pose_corrective": True, "id_corrective": True, "skeleton_corrective": True}

#: written out by hand from the issue's list: the fields in which each variant differs from (d),
#: as (value in (d), value in the variant), on the applied configs
EXPECTED_VS_FULL = {
    "a": {"pose_corrective": (True, False), "id_corrective": (True, False), "skeleton_corrective": (True, False)},
    "b": {"pose_corrective": (True, False), "id_corrective": (True, False)},
    "c": {"pose_corrective": (True, False)},
    "d": {},
    "e": {"penetration_rigid_weight": (1.0, 0.0), "penetration_nonrigid_weight": (5.0, 0.0)},
    "f": {"pose_corrective_kind": ("mlp", "linear_rotmat")},
    "g": {"laplacian_form": ("offsets", "posed")},
    "h": {"corrective_basis": ("free", "normal")},
    "i": {"pose_corrective_kind": ("mlp", "local")},
}
NAMES = {"a": "lbs_only", "b": "skeleton", "c": "identity", "d": "full", "e": "no_penetration",
         "f": "mano_linear", "g": "posed_laplacian", "h": "normal_basis", "i": "local_pose"}


def config_diff(x, y) -> dict:
    """{field: (x's, y's)} for the fields where two configs of the same type differ."""
    return {f.name: (getattr(x, f.name), getattr(y, f.name)) for f in dataclasses.fields(x)
            if getattr(x, f.name) != getattr(y, f.name)}


def test_the_table_is_a_to_h_in_order():
    assert [v.key for v in VARIANTS] == list("abcdefghi")
    assert {v.key: v.name for v in VARIANTS} == NAMES
    for v in VARIANTS:
        assert isinstance(v, Variant) and v.label.startswith(f"({v.key}) ") and len(v.description) > 20
        assert set(v.model_overrides) == set(MODEL_FIELDS) and set(v.train_overrides) == set(TRAIN_FIELDS)
        assert json.loads(json.dumps(v.to_dict())) == v.to_dict()
    assert len({hash(v) for v in VARIANTS}) == 9


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
@pytest.mark.parametrize("key", list("abcdefghi"))
def test_variant_differs_from_full_in_exactly_the_intended_fields(preset_name, key):
    tc, mc = preset(preset_name)
    full_t, full_m = apply_variant("d", tc, mc)
    t, m = apply_variant(key, tc, mc)
    assert isinstance(t, TrainConfig) and isinstance(m, ModelConfig)
    # valid: the configs rebuild from their dicts (every field checked again)
    assert TrainConfig.from_dict(t.to_dict()) == t and ModelConfig.from_dict(m.to_dict()) == m
    assert {**config_diff(full_t, t), **config_diff(full_m, m)} == EXPECTED_VS_FULL[key]
    assert changes_from_full(key) == EXPECTED_VS_FULL[key]
    # (d) itself: all three correctives, the MLP, free basis, offset Laplacian, penetration 1 / 5
    assert {k: getattr(full_m, k) for k in ALL_ON} == ALL_ON
    assert (full_m.pose_corrective_kind, full_m.corrective_basis, full_t.laplacian_form) == ("mlp", "free", "offsets")
    assert (full_t.penetration_rigid_weight, full_t.penetration_nonrigid_weight) == (1.0, 5.0)
    assert t.uses_penetration == (key != "e")
    # everything the ablation does not control is the preset's: seed, data, split, budget, other options
    untouched_t = {f.name for f in dataclasses.fields(TrainConfig)} - set(TRAIN_FIELDS)
    untouched_m = {f.name for f in dataclasses.fields(ModelConfig)} - set(MODEL_FIELDS)
    assert all(getattr(t, n) == getattr(tc, n) for n in untouched_t)
    assert all(getattr(m, n) == getattr(mc, n) for n in untouched_m)


def test_cpu_small_full_differs_from_the_preset_only_by_basis_and_penetration():
    tc, mc = preset("cpu-small")
    t, m = apply_variant(get_variant("full"), tc, mc)
    assert config_diff(mc, m) == {"corrective_basis": ("normal", "free")}
    assert config_diff(tc, t) == {"penetration_rigid_weight": (0.0, 1.0), "penetration_nonrigid_weight": (0.0, 5.0)}
    # (h) is the preset's own model with the penetration loss on
    t, m = apply_variant("normal_basis", tc, mc)
    assert m == mc and set(config_diff(tc, t)) == {"penetration_rigid_weight", "penetration_nonrigid_weight"}


def test_the_result_does_not_depend_on_the_preset_values_of_the_controlled_fields():
    tc, mc = preset("cpu-small", model_overrides={"pose_corrective": False, "pose_corrective_kind": "linear_rotmat"},
                    laplacian_form="posed", penetration_rigid_weight=3.0)
    t, m = apply_variant("d", tc, mc)
    assert (m.pose_corrective, m.pose_corrective_kind, t.laplacian_form, t.penetration_rigid_weight) == \
        (True, "mlp", "offsets", 1.0)


def test_get_variant_by_key_or_name_and_unknown_names():
    for v in VARIANTS:
        assert get_variant(v.key) is v and get_variant(v.name) is v and get_variant(v) is v
        assert get_variant(f" ({v.key.upper()}) ") is v
    for bad in ("j", "full_model", "", "dd", 3):
        with pytest.raises(ValueError, match=r"unknown ablation variant .*; choices: a \(lbs_only\), b \(skeleton\), "
                                             r"c \(identity\), d \(full\), e \(no_penetration\), f \(mano_linear\), "
                                             r"g \(posed_laplacian\), h \(normal_basis\), i \(local_pose\)$"):
            get_variant(bad)
    with pytest.raises(ValueError, match="unknown ablation variant 'x'"):
        apply_variant("x", *preset("paper"))
    with pytest.raises(TypeError, match=r"expected \(TrainConfig, ModelConfig\)"):
        apply_variant("a", *reversed(preset("paper")))


def test_variants_markdown_lists_every_variant_and_its_change():
    text = variants_markdown()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + 9
    for v, line in zip(VARIANTS, lines[2:]):
        assert line.startswith(f"| {v.key} | `{v.name}` | {v.label} |")
    assert "`pose_corrective_kind='linear_rotmat'`" in lines[2 + 5] and "`laplacian_form='posed'`" in lines[2 + 6]
    assert "| — |" in lines[2 + 3]                     # (d) differs from itself in nothing
    assert "non-rigid 5" in text and "free (V·3)" in text


@pytest.mark.parametrize("key", ["f", "h", "i"])
def test_variant_trains_a_step_with_the_real_loop(key, small_capture, tmp_path):
    """(f) has no ``fc_pose``, (h) the zero_at_rest gauge on cpu-small and (i) the local pose corrective:
    each must reach the optimizer."""
    import torch

    from dhmlib.network.snapshot import read_snapshot
    from dhmlib.train import train

    tc, mc = apply_variant(get_variant(key), *preset("cpu-small"))
    tc = tc.replace(batch_size=2, num_views=2, render_size=(32, 32), max_steps=4, held_out=None, log_every=1,
                    penetration_rigid_weight=0.0, penetration_nonrigid_weight=0.0)
    result = train(tc, mc, small_capture, tmp_path, progress=False, echo=False)
    assert result.steps == 4
    state = read_snapshot(result.snapshot)["network"]
    if key == "f":
        w = state["module.skin_refine_net.pose_blend_rotmat.weight"]
        assert w.abs().max() > 0                     # zero-initialised: it moved, so it was optimised
        assert not any(k.startswith("module.skin_refine_net.fc_pose") for k in state)
    elif key == "i":
        assert state["module.skin_refine_net.pose_local.weight"].abs().max() > 0
        assert not any(k.startswith("module.skin_refine_net.fc_pose") for k in state)
    else:
        assert torch.equal(state["module.skin_refine_net.fc_pose.2.bias"], torch.zeros_like(
            state["module.skin_refine_net.fc_pose.2.bias"]))   # gauge-fixed: still its zero init
        assert state["module.skin_refine_net.fc_pose.2.weight"].abs().max() > 0
