"""Fitted mixers: EM optimality, `learned` recovering the true generator, `gated` beating global weights on
fresh data where the best teacher changes from byte to byte, determinism, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergekd.errors import ConfigError, EmptyTextError
from mergekd.mix import build_mixer, fit_mixture_weights

LN2 = math.log(2)


pytestmark = pytest.mark.usefixtures("one_thread")


def bits_per_byte(mixed: torch.Tensor, mixed_mask: torch.Tensor, actual: torch.Tensor) -> float:
    picked = mixed.double().gather(1, actual.view(-1, 1)).squeeze(1)[mixed_mask]
    return float(-picked.mean() / LN2)


def random_teachers(k: int, n: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(k, n, 257, generator=g, dtype=torch.float64) * scale, -1).float()


def sample(logprobs_row_major: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(logprobs_row_major.double().exp(), 1, generator=g).squeeze(1)


# -- EM / learned -----------------------------------------------------------------------------------------------

def test_em_is_monotone_and_matches_a_grid_search():
    lp = random_teachers(2, 3000, seed=1)
    mix = torch.logsumexp(torch.stack([lp[0] + math.log(0.3), lp[1] + math.log(0.7)]), 0)
    actual = sample(mix, seed=2)
    realised = lp.double().gather(-1, actual.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
    result = fit_mixture_weights(realised)
    assert result.converged
    assert all(b <= a + 1e-12 for a, b in zip(result.history[:-1], result.history[1:], strict=True))  # EM never goes up
    grid = np.linspace(0, 1, 4001)
    r = realised.numpy()
    with np.errstate(divide="ignore"):
        nll = [-np.mean(np.logaddexp(np.log(w) + r[0], np.log1p(-w) + r[1])) / LN2 for w in grid]
    best = int(np.argmin(nll))
    assert result.nll_bits <= nll[best] + 1e-9
    assert abs(float(result.weights[0]) - grid[best]) < 2e-3
    assert abs(float(result.weights[0]) - 0.3) < 0.05  # the generating weights, up to sampling noise


def test_learned_recovers_the_true_generator():
    lp = random_teachers(3, 4000, seed=3)
    actual = sample(lp[0], seed=4)  # teacher 0 generated the text
    masks = torch.ones(3, 4000, dtype=torch.bool)
    mixer = build_mixer("learned").fit(lp, masks, actual, teacher_names=["true", "b", "c"])
    weights = mixer.describe()["weights"]
    assert weights["true"] > 0.97, weights
    fit = mixer.describe()["fit"]
    assert fit["bits_per_byte"] <= min(fit["teacher_bits_per_byte"].values()) + 1e-9
    assert fit["bits_per_byte"] <= fit["uniform_bits_per_byte"]
    # on fresh text from the same generator it beats uniform weights
    lp2 = random_teachers(3, 2000, seed=5)
    actual2 = sample(lp2[0], seed=6)
    m2 = torch.ones(3, 2000, dtype=torch.bool)
    learned = bits_per_byte(*mixer(lp2, m2), actual2)
    uniform = bits_per_byte(*build_mixer("uniform")(lp2, m2), actual2)
    single = bits_per_byte(lp2[0], m2[0], actual2)
    assert learned < uniform - 0.2 and learned < single + 0.05


def test_learned_fits_on_rows_where_all_teachers_are_defined():
    lp = random_teachers(2, 1000, seed=7)
    actual = sample(lp[1], seed=8)
    masks = torch.ones(2, 1000, dtype=torch.bool)
    masks[0, :100] = False
    lp = lp.clone()
    lp[~masks] = float("nan")
    mixer = build_mixer("learned").fit(lp, masks, actual)
    fit = mixer.describe()["fit"]
    assert fit["rows"] == 900 and fit["rows_missing_a_teacher"] == 100
    assert mixer.describe()["weights"]["teacher1"] > 0.9
    with pytest.raises(EmptyTextError):
        build_mixer("learned").fit(lp[:, :100], masks[:, :100], actual[:100])


def test_learned_can_be_refit_with_another_teacher_set():
    lp = random_teachers(3, 500, seed=9)
    actual = sample(lp[2], seed=10)
    masks = torch.ones(3, 500, dtype=torch.bool)
    mixer = build_mixer("learned").fit(lp[:2], masks[:2], actual, teacher_names=["a", "b"])
    mixer.fit(lp, masks, actual, teacher_names=["a", "b", "c"])
    assert max(mixer.describe()["weights"], key=mixer.describe()["weights"].get) == "c"


# -- gated ------------------------------------------------------------------------------------------------------

def switching_teachers(n: int, seed: int, *, both_sharp: bool):
    """Two teachers; the row type (blocks of 4-16 bytes) decides which one is sharp and right. The other is
    flat (``both_sharp=False``: entropy tells them apart) or sharp on a wrong byte (only the external feature,
    a noisy row-type indicator, tells them apart). ``actual`` is drawn from the right teacher."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 17, (n // 4 + 1,), generator=g)
    kinds = torch.randint(0, 2, (lengths.numel(),), generator=g)
    row_type = torch.repeat_interleave(kinds, lengths)[:n]
    right = torch.randint(0, 256, (n,), generator=g)
    wrong = (right + torch.randint(1, 256, (n,), generator=g)) % 256
    rows = torch.arange(n)
    sharp = torch.randn(n, 257, generator=g, dtype=torch.float64) * 0.5
    sharp[rows, right] += 8.0
    other = torch.randn(n, 257, generator=g, dtype=torch.float64) * 0.5
    if both_sharp:
        other[rows, wrong] += 8.0
    sharp, other = torch.log_softmax(sharp, -1), torch.log_softmax(other, -1)
    a_right = (row_type == 0).unsqueeze(1)
    lp = torch.stack([torch.where(a_right, sharp, other), torch.where(a_right, other, sharp)]).float()
    actual = torch.multinomial(sharp.exp(), 1, generator=g).squeeze(1)
    feature = (row_type.double() * 2 - 1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).unsqueeze(1)
    return lp, torch.ones(2, n, dtype=torch.bool), actual, feature.float()


GATE = "gated:hidden=16,epochs=30,patience=5,lr=0.03,batch_size=1024"


def test_gated_follows_the_better_teacher_and_beats_global_weights_on_fresh_data():
    lp, masks, actual, _ = switching_teachers(4000, seed=11, both_sharp=False)
    gated = build_mixer(GATE).fit(lp, masks, actual, teacher_names=["a", "b"])
    learned = build_mixer("learned").fit(lp, masks, actual)
    fit = gated.describe()["fit"]
    # by construction on its own held-out split: never worse than its start (uniform or EM weights)
    assert fit["heldout_bits_per_byte"] <= min(fit["heldout_uniform_bits_per_byte"], fit["heldout_start_bits_per_byte"])
    lp2, masks2, actual2, _ = switching_teachers(3000, seed=12, both_sharp=False)  # never seen by any fit
    bpb = {name: bits_per_byte(*m(lp2, masks2), actual2)
           for name, m in (("gated", gated), ("learned", learned), ("uniform", build_mixer("uniform")))}
    assert bpb["gated"] < bpb["uniform"] - 0.5 and bpb["gated"] < bpb["learned"] - 0.5, bpb


def test_gated_uses_external_features_and_is_never_worse_than_uniform_without_them():
    lp, masks, actual, feat = switching_teachers(4000, seed=13, both_sharp=True)
    lp2, masks2, actual2, feat2 = switching_teachers(3000, seed=14, both_sharp=True)
    uniform = bits_per_byte(*build_mixer("uniform")(lp2, masks2), actual2)
    blind = build_mixer(GATE).fit(lp, masks, actual)  # the distributions alone cannot tell who is right
    assert bits_per_byte(*blind(lp2, masks2), actual2) <= uniform + 0.02
    informed = build_mixer(GATE).fit(lp, masks, actual, features=feat)
    assert bits_per_byte(*informed(lp2, masks2, features=feat2), actual2) < uniform - 0.5
    with pytest.raises(ConfigError, match="features"):
        informed(lp2, masks2)


def test_gated_fit_is_deterministic_and_leaves_the_global_rng_alone():
    lp, masks, actual, _ = switching_teachers(2000, seed=15, both_sharp=False)
    rng = torch.get_rng_state()
    a = build_mixer("gated:hidden=8,epochs=5").fit(lp, masks, actual).state_dict()
    assert torch.equal(torch.get_rng_state(), rng)
    b = build_mixer("gated:hidden=8,epochs=5").fit(lp, masks, actual).state_dict()
    for key, value in a["params"]["net"].items():
        assert torch.equal(value, b["params"]["net"][key]), key
    assert a["params"]["fit_report"] == b["params"]["fit_report"]


def test_gated_refuses_too_little_fit_data():
    lp, masks, actual, _ = switching_teachers(40, seed=16, both_sharp=False)
    with pytest.raises(EmptyTextError, match="more fit text"):
        build_mixer("gated").fit(lp, masks, actual)


def test_gated_keeps_its_best_epoch_so_held_out_rows_are_never_worse_than_uniform():
    # Nothing to learn (only an external feature would tell the teachers apart) and an aggressive optimiser
    # without early stopping: later epochs overfit the training rows. The kept epoch must still hold out.
    lp, masks, actual, _ = switching_teachers(2000, seed=17, both_sharp=True)
    gated = build_mixer("gated:hidden=64,epochs=25,patience=25,lr=0.05,batch_size=64").fit(lp, masks, actual)
    fit = gated.describe()["fit"]
    held = slice(2000 - fit["rows_heldout"], 2000)  # every row is usable here: the held-out split is the tail
    own = bits_per_byte(*gated(lp[:, held], masks[:, held]), actual[held])
    uniform = bits_per_byte(*build_mixer("uniform")(lp[:, held], masks[:, held]), actual[held])
    assert own == pytest.approx(fit["heldout_bits_per_byte"], abs=1e-5)  # the report describes the kept gate
    assert own <= uniform + 1e-9
    assert fit["train_bits_per_byte"] < fit["heldout_bits_per_byte"]  # it did overfit: the guard mattered


def test_gated_starts_from_em_weights_when_they_hold_out_better():
    lp = random_teachers(2, 3000, seed=18)
    mix = torch.logsumexp(torch.stack([lp[0] + math.log(0.2), lp[1] + math.log(0.8)]), 0)
    actual = sample(mix, seed=19)  # the text comes from a 20/80 mixture: EM weights beat uniform
    masks = torch.ones(2, 3000, dtype=torch.bool)
    gated = build_mixer("gated:hidden=8,epochs=3").fit(lp, masks, actual)
    fit = gated.describe()["fit"]
    assert fit["start"] == "learned" and abs(fit["start_weights"]["teacher1"] - 0.8) < 0.05
    # the same EM weights, fitted independently on the training split, scored on the held-out split
    n_train = fit["rows_train"]
    em = build_mixer("learned").fit(lp[:, :n_train], masks[:, :n_train], actual[:n_train])
    held = slice(n_train, 3000)
    em_bits = bits_per_byte(*em(lp[:, held], masks[:, held]), actual[held])
    assert fit["heldout_start_bits_per_byte"] == pytest.approx(em_bits, abs=1e-5)
    assert fit["heldout_bits_per_byte"] <= em_bits + 1e-6
