"""Mixers: normalisation, agreement with slow float64 references, masks, specs, errors and persistence.

Fitted mixers (learned, gated) and their statistical guarantees are in test_mix_fit.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mix_reference import (
    assert_rows_match,
    make_inputs,
    reference_linear,
    reference_min_ce,
    reference_product,
    reference_sequence_ce,
    reference_softmax_ce,
)

from mergekd.errors import ConfigError, NonFiniteError, UnknownNameError
from mergekd.mix import MIXERS, Mixer, MixerNotFittedError, MixInputError, build_mixer, parse_mix_spec


pytestmark = pytest.mark.usefixtures("one_thread")


ALL_SPECS = ["linear", "uniform", "linear:weights=0.2;0;0.8", "product", "product:weights=1;2;0", "min-ce",
             "softmax-ce", "softmax-ce:temperature=0.25", "learned", "gated:hidden=8,epochs=5"]


def built(spec: str, k: int = 3) -> Mixer:
    """A mixer ready to use; fitted ones are fit on data disjoint from anything they are then called on."""
    mixer = build_mixer(spec)
    lp, masks, actual = make_inputs(k, 600, seed=99)
    mixer.fit(lp, masks, actual, teacher_names=[f"t{i}" for i in range(k)])
    return mixer


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_mixer_returns_normalised_distributions(spec):
    lp, masks, actual = make_inputs(3, 200, seed=1)
    mixer = built(spec)
    mixed, mixed_mask = mixer(lp, masks, actual=actual)
    assert mixed.dtype == torch.float32 and mixed.shape == (200, 257) and mixed_mask.shape == (200,)
    rows = mixed[mixed_mask].double()
    assert not torch.isnan(rows).any() and not (rows == float("inf")).any()
    assert torch.logsumexp(rows, -1).abs().max() < 1e-5
    assert torch.isnan(mixed[~mixed_mask]).all()
    assert not bool(mixed_mask[5])  # the row no teacher defines
    if spec not in ("linear:weights=0.2;0;0.8", "product:weights=1;2;0"):  # zero weights may undefine rows
        assert torch.equal(mixed_mask, masks.any(0))
    json.dumps(mixer.describe(), allow_nan=False)  # describe() is strict JSON


def test_linear_matches_reference_with_masks_and_zero_weight():
    lp, masks, actual = make_inputs(3, 120, seed=2)
    weights = [0.2, 0.0, 0.8]
    mixed, mixed_mask = build_mixer("linear:weights=0.2;0;0.8")(lp, masks)
    assert_rows_match(mixed, mixed_mask, reference_linear(lp, masks, weights))
    # rows where only the zero-weight teacher is defined are undefined: the weights gave it no say
    only_t1 = masks[1] & ~masks[0] & ~masks[2]
    assert only_t1.any() and not mixed_mask[only_t1].any()


def test_uniform_is_linear_with_equal_weights():
    lp, masks, _ = make_inputs(3, 80, seed=3)
    a, am = build_mixer("uniform")(lp, masks)
    b, bm = build_mixer("linear")(lp, masks)
    c, cm = build_mixer("linear:weights=5;5;5")(lp, masks)
    assert torch.equal(am, bm) and torch.equal(am, cm)
    torch.testing.assert_close(a[am], b[bm], rtol=0, atol=0)
    torch.testing.assert_close(a[am], c[cm], rtol=0, atol=1e-6)
    assert_rows_match(a, am, reference_linear(lp, masks, [1, 1, 1]))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_linear_one_hot_weight_equals_that_teacher(which):
    lp, masks, _ = make_inputs(3, 150, seed=4)
    weights = ";".join("1" if k == which else "0" for k in range(3))
    mixed, mixed_mask = build_mixer(f"linear:weights={weights}")(lp, masks)
    assert torch.equal(mixed_mask, masks[which])
    expected = lp[which][masks[which]]
    got = mixed[mixed_mask]
    assert torch.equal(torch.isneginf(got), torch.isneginf(expected))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_absent_teacher_drops_out_and_others_are_renormalised():
    lp, masks, _ = make_inputs(2, 10, seed=5, absent=0.0)
    masks = masks.clone()
    masks[0, 7] = False  # teacher 0 absent at row 7: the mixture there is teacher 1 alone
    masks[:, 8] = False  # nobody at row 8
    lp = lp.clone()
    lp[~masks] = float("nan")
    for spec in ("linear:weights=3;1", "product:weights=3;1", "learned"):
        mixer = built(spec, k=2)
        mixed, mixed_mask = mixer(lp, masks)
        torch.testing.assert_close(mixed[7], lp[1, 7], rtol=0, atol=1e-6)
        assert not bool(mixed_mask[8]) and torch.isnan(mixed[8]).all()
        assert mixed_mask[[0, 1, 2, 3, 4, 6, 7, 9]].all()


def test_product_matches_reference_including_vetoes_and_disjoint_fallback():
    lp, masks, _ = make_inputs(3, 120, seed=6, impossible=0.5)
    # row 0: disjoint supports for the weighted teachers → documented fallback to the linear pool
    lp = lp.clone()
    masks = masks.clone()
    masks[:, 0] = True
    lp[:, 0] = float("-inf")
    lp[0, 0, 10], lp[1, 0, 20], lp[2, 0, 30] = 0.0, 0.0, 0.0
    weights = [1.0, 2.0, 0.0]
    mixer = build_mixer("product:weights=1;2;0")
    mixed, mixed_mask = mixer(lp, masks)
    reference = reference_product(lp, masks, weights)
    assert_rows_match(mixed, mixed_mask, reference)
    torch.testing.assert_close(mixed[0, [10, 20]].double().exp(), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    assert mixer.describe()["fallback_rows"] >= 1


def test_product_of_one_teacher_and_equal_teachers_is_identity():
    lp, masks, _ = make_inputs(1, 50, seed=7)
    mixed, mixed_mask = build_mixer("product")(lp, masks)
    torch.testing.assert_close(mixed[mixed_mask], lp[0][masks[0]], rtol=0, atol=1e-6)
    twice = torch.cat([lp, lp])
    mixed2, _ = build_mixer("product:weights=1;3")(twice, torch.cat([masks, masks]))
    torch.testing.assert_close(mixed2[mixed_mask], lp[0][masks[0]], rtol=0, atol=1e-5)


def test_sequence_cross_entropy_and_min_ce_match_reference():
    lp, masks, actual = make_inputs(3, 90, seed=8, impossible=0.0)
    mixer = build_mixer("min-ce")
    mixed, mixed_mask = mixer(lp, masks, actual=actual)
    assert_rows_match(mixed, mixed_mask, reference_min_ce(lp, masks, actual))
    ces = reference_sequence_ce(lp, masks, actual)
    best = int(np.argmin(ces))
    rows = masks[best]
    torch.testing.assert_close(mixed[rows], lp[best][rows], rtol=0, atol=1e-6)  # the best teacher wherever defined
    # where the best teacher is absent, the best *present* teacher is used: every teacher-covered row stays defined
    assert torch.equal(mixed_mask, masks.any(0))
    described = mixer.describe()["mean_bits_per_byte"]
    np.testing.assert_allclose([described[f"teacher{k}"] for k in range(3)], ces, rtol=1e-9)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 4.0])
def test_softmax_ce_matches_reference(temperature):
    lp, masks, actual = make_inputs(3, 90, seed=9)  # with impossible bytes: some CEs may be infinite
    mixed, mixed_mask = build_mixer(f"softmax-ce:temperature={temperature}")(lp, masks, actual=actual)
    assert_rows_match(mixed, mixed_mask, reference_softmax_ce(lp, masks, actual, temperature))


def test_softmax_ce_with_a_teacher_that_misses_a_byte_gives_it_no_weight():
    lp, masks, actual = make_inputs(2, 40, seed=10, absent=0.0, impossible=0.0)
    lp = lp.clone()
    lp[1, 3, :] = float("-inf")
    lp[1, 3, (int(actual[3]) + 1) % 256] = 0.0  # teacher 1 says the realised byte of row 3 is impossible
    mixed, mixed_mask = build_mixer("softmax-ce")(lp, masks, actual=actual)
    torch.testing.assert_close(mixed[mixed_mask], lp[0][mixed_mask], rtol=0, atol=1e-6)


def test_sequence_mixers_need_actual():
    lp, masks, _ = make_inputs(2, 20, seed=11)
    for spec in ("min-ce", "softmax-ce"):
        with pytest.raises(ConfigError, match="actual"):
            build_mixer(spec)(lp, masks)


def test_nan_inf_and_logits_inputs_are_refused_with_the_row_named():
    lp, masks, actual = make_inputs(2, 30, seed=12, absent=0.0)
    mixer = build_mixer("linear")
    bad = lp.clone()
    bad[1, 17, 40] = float("nan")
    with pytest.raises(NonFiniteError, match="teacher 1, row 17"):
        mixer(bad, masks)
    bad = lp.clone()
    bad[0, 3, 9] = float("inf")
    with pytest.raises(NonFiniteError):
        mixer(bad, masks)
    bad = lp.clone()
    bad[0, 4] = float("-inf")
    with pytest.raises(NonFiniteError, match="probability 0"):
        mixer(bad, masks)
    with pytest.raises(MixInputError, match="log_softmax"):
        mixer(lp + 1.0, masks)
    # NaN where the mask says the row is undefined is the byte core's convention, not an error
    ok = lp.clone()
    m = masks.clone()
    m[1, 17] = False
    ok[1, 17] = float("nan")
    out, out_mask = mixer(ok, m)
    assert bool(out_mask[17]) and not torch.isnan(out[17]).any()
    nan_fit = lp.clone()
    nan_fit[0, 2, 3] = float("nan")
    for spec in ("learned", "gated"):  # fitting checks its data too
        with pytest.raises(NonFiniteError, match="teacher 0, row 2"):
            build_mixer(spec).fit(nan_fit, masks, actual)


def test_shape_and_type_errors():
    lp, masks, actual = make_inputs(2, 20, seed=13)
    mixer = build_mixer("linear")
    with pytest.raises(MixInputError, match="257"):
        mixer(lp[..., :256], masks)
    with pytest.raises(MixInputError, match="bool"):
        mixer(lp, masks.float())
    with pytest.raises(MixInputError, match="actual"):
        build_mixer("min-ce")(lp, masks, actual=actual[:5])
    with pytest.raises(MixInputError, match="0..256"):
        build_mixer("min-ce")(lp, masks, actual=actual + 300)
    with pytest.raises(ConfigError, match="'weights'.*3 values.*2 teachers"):
        build_mixer("linear:weights=1;2;3")(lp, masks)
    mixer(lp, masks)
    with pytest.raises(MixInputError, match="2 teachers"):
        mixer(torch.cat([lp, lp[:1]]), torch.cat([masks, masks[:1]]))


def test_empty_text():
    lp = torch.zeros(2, 0, 257)
    masks = torch.zeros(2, 0, dtype=torch.bool)
    for spec in ("linear", "product", "min-ce", "softmax-ce"):
        mixed, mixed_mask = build_mixer(spec)(lp, masks, actual=torch.zeros(0, dtype=torch.long))
        assert mixed.shape == (0, 257) and mixed_mask.shape == (0,)


# -- specs and the registry ---------------------------------------------------------------------------------

def test_parse_mix_spec_converts_types():
    assert parse_mix_spec("linear") == ("linear", {})
    assert parse_mix_spec("linear:weights=0.3;0.7") == ("linear", {"weights": (0.3, 0.7)})
    name, opts = parse_mix_spec(" softmax-ce : temperature=2 ")
    assert name == "softmax-ce" and opts == {"temperature": 2.0} and isinstance(opts["temperature"], float)
    name, opts = parse_mix_spec("gated:hidden=16,epochs=7,batch-size=64,lr=0.01")
    assert opts == {"hidden": 16, "epochs": 7, "batch_size": 64, "lr": 0.01} and isinstance(opts["hidden"], int)
    assert parse_mix_spec("mean")[0] == "uniform" and parse_mix_spec("log-linear")[0] == "product"


def test_build_mixer_from_dicts_and_keywords():
    a = build_mixer({"name": "linear", "weights": [0.3, 0.7]})
    b = build_mixer("linear", weights=[0.3, 0.7])
    c = build_mixer({"name": "linear", "weights": "0.3;0.7"})
    d = build_mixer("linear:weights=0.1;0.9", weights=[0.3, 0.7])  # keywords override the spec
    assert a.config == b.config == c.config == d.config
    assert build_mixer(a) is a
    assert build_mixer("gated:hidden=32,epochs=200").config.hidden == 32


@pytest.mark.parametrize("spec, field", [
    ("linear:wieghts=1;2", "wieghts"),
    ("linear:weights=1;-1", "weights"),
    ("linear:weights=0;0", "weights"),
    ("linear:weights=a;b", "weights"),
    ("softmax-ce:temperature=0", "temperature"),
    ("softmax-ce:temperature=hot", "temperature"),
    ("gated:hidden=abc", "hidden"),
    ("gated:holdout=1.5", "holdout"),
    ("min-ce:temperature=1", "temperature"),
    ("learned:max_iter=0", "max_iter"),
])
def test_bad_options_name_the_field_and_the_valid_ones(spec, field):
    with pytest.raises(ConfigError) as info:
        build_mixer(spec)
    message = str(info.value)
    assert repr(field) in message
    assert "Valid options" in message or "takes no options" in message


def test_malformed_specs():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_mixer("linear:weights")
    with pytest.raises(ConfigError, match="twice"):
        build_mixer("softmax-ce:temperature=1,temperature=2")
    with pytest.raises(ConfigError, match="name"):
        build_mixer({"weights": [1, 2]})
    with pytest.raises(ConfigError, match="non-empty"):
        build_mixer("")
    with pytest.raises(ConfigError, match="'weigths'"):
        build_mixer("linear", weigths=[1, 2])


def test_unknown_mixer_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="Did you mean 'linear'"):
        build_mixer("linaer")
    with pytest.raises(UnknownNameError, match="'softmax-ce'"):
        parse_mix_spec("softmax_c:temperature=1")


def test_registry_names_match_mixer_classes():
    assert {"linear", "uniform", "product", "min-ce", "softmax-ce", "learned", "gated"} <= set(MIXERS.names())
    for name, kind in MIXERS.items():
        assert issubclass(kind, Mixer) and kind.name == name


# -- persistence ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["linear:weights=0.2;0.5;0.3", "product", "softmax-ce:temperature=0.5",
                                  "learned", "gated:hidden=8,epochs=5"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, spec):
    lp, masks, actual = make_inputs(3, 120, seed=14)
    mixer = built(spec)
    before, before_mask = mixer(lp, masks, actual=actual)
    path = mixer.save(tmp_path / "sub" / "mixer.pt")
    assert [p.name for p in path.parent.iterdir()] == ["mixer.pt"]  # no temp file left behind
    loaded = Mixer.load(path)
    assert type(loaded) is type(mixer) and loaded.config == mixer.config and loaded.teacher_names == ["t0", "t1", "t2"]
    assert json.dumps(loaded.describe()) == json.dumps(mixer.describe())  # running statistics included
    after, after_mask = loaded(lp, masks, actual=actual)
    assert torch.equal(before_mask, after_mask)
    assert torch.equal(before.nan_to_num(nan=7.0), after.nan_to_num(nan=7.0))
    # the distillation loop's path: build from the config, then load_state_dict
    again = build_mixer(spec).load_state_dict(mixer.state_dict())
    assert torch.equal(again(lp, masks, actual=actual)[0].nan_to_num(nan=7.0), before.nan_to_num(nan=7.0))


def test_load_state_dict_refuses_another_kind_or_other_options(tmp_path):
    state = built("learned").state_dict()
    with pytest.raises(ConfigError, match="'learned'"):
        build_mixer("linear").load_state_dict(state)
    with pytest.raises(ConfigError, match="options"):
        build_mixer("learned:max_iter=5").load_state_dict(state)
    path = built("linear").save(tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="Mixer.load"):
        MIXERS.get("learned").load(path)


def test_fitted_mixers_refuse_to_mix_before_fit():
    lp, masks, _ = make_inputs(2, 20, seed=15)
    for spec in ("learned", "gated"):
        mixer = build_mixer(spec)
        assert mixer.needs_fit
        with pytest.raises(MixerNotFittedError, match="fit"):
            mixer(lp, masks)
    assert not build_mixer("linear").needs_fit


def test_describe_names_teachers_given_to_fit():
    lp, masks, actual = make_inputs(2, 50, seed=16)
    mixer = build_mixer("linear:weights=1;3").fit(lp, masks, actual, teacher_names=["smol", "gemma"])
    assert mixer.describe()["weights"] == {"smol": 0.25, "gemma": 0.75}
    assert math.isclose(sum(built("learned").describe()["weights"].values()), 1.0)


def test_rows_off_by_rounding_are_renormalised_per_teacher_before_mixing():
    # float32 teacher rows are normalised only up to rounding; each teacher is renormalised *before* weighting,
    # so a teacher whose row sums to 1.004 does not get 0.4% more weight than asked for
    lp, masks, actual = make_inputs(2, 60, seed=17, absent=0.0)
    skewed = lp.clone()
    skewed[0] += 0.004
    skewed[1] -= 0.004
    for spec, reference in (("linear:weights=0.5;0.5", reference_linear(lp, masks, [0.5, 0.5])),
                            ("product", reference_product(lp, masks, [0.5, 0.5]))):
        mixed, mixed_mask = build_mixer(spec)(skewed, masks)
        assert_rows_match(mixed, mixed_mask, reference, atol=2e-6)
    assert reference_sequence_ce(skewed, masks, actual) == pytest.approx(reference_sequence_ce(lp, masks, actual))
    mixed, mixed_mask = build_mixer("softmax-ce")(skewed, masks, actual=actual)
    assert_rows_match(mixed, mixed_mask, reference_softmax_ce(lp, masks, actual, 1.0), atol=2e-6)
