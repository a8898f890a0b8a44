"""Settings validation, descriptions and token schedules of tca.config, by hand.

Every expected schedule below is worked out from the tier formulas in ``tca.condense``:
TCA n_keep = ceil((1 - d) P), m = P + 1 - n_keep, t2 = min(2m, n_keep), t1 = n_keep - t2,
t3 = P - n_keep; ToMe r = int(N (1 - R)) capped at (N + 1) // 2 - prefix; ATS budget ceil(R P).
"""

from __future__ import annotations

import pytest

from tca.config import (
    CondenseConfig,
    ConfigError,
    Schedule,
    format_layers,
    keep_rate_to_rate,
    plan_layers,
)
from tca.methods import method
from tca.plans import AtsPlan, TierPlan, TomePaperPlan, TomePlan


def test_keep_rate_mapping_rounds_to_ten_digits():
    # R = 0.8123456789: t = 0.0876543211 / 0.2 = 0.4382716055, d = 0.035 + 0.065 t
    # = 0.06348765435750..., rounded to 10 digits (11 digits would give 0.06348765436)
    assert keep_rate_to_rate(0.8123456789) == 0.0634876544


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_centre_seed_accepts_every_non_negative_integer(seed):
    assert CondenseConfig(center_seed=seed).center_seed == seed


@pytest.mark.parametrize("seed", [True, False, 1.5, -1, "3"])
def test_centre_seed_refuses_bools_non_integers_and_negatives(seed):
    with pytest.raises(ConfigError) as err:
        CondenseConfig(center_seed=seed)
    assert str(err.value) == f"centre seed must be a non-negative integer, got {seed!r}"


def test_describe_names_the_random_first_centre_for_tca_only():
    assert CondenseConfig(center_seed=0).describe() == (
        "tca R=0.9, d=0.035, K=2, score=mean, random first centre (seed 0), layers [3, 6, 9]"
    )
    assert CondenseConfig(method="evit", keep_rate=0.8, center_seed=7).describe() == (
        "evit R=0.8, layers [3, 6, 9]"
    )


def test_realised_schedule_message_is_exact():
    s = plan_layers(CondenseConfig(rate=0.1, layers=(1,)), 17, 3)
    assert s.realised([17, 15.0, 15]).tokens == (17, 15, 15)
    with pytest.raises(ValueError) as err:
        s.realised([17, 15])
    assert str(err.value) == "2 token counts for 3 blocks"


def test_prefix_must_be_zero_or_one():
    with pytest.raises(ConfigError) as err:
        plan_layers(CondenseConfig(), 197, 12, prefix=2)
    assert str(err.value) == "prefix must be 0 (no CLS token) or 1 (CLS token), got 2"


def test_tca_schedule_without_cls_token():
    # 16 patches, no CLS: the tiers of N = 17 (P = 16), d = 0.1: n_keep = ceil(14.4) = 15,
    # m = 2, t2 = 4, t1 = 11, t3 = 1; out = 0 + 11 + K=2 + 1 fused = 14
    s = plan_layers(CondenseConfig(rate=0.1, layers=(0,)), 16, 2, prefix=0)
    assert s == Schedule((TierPlan(16, 14, 11, 4, 1, 2, prefix=0), None), (14, 14), 16, prefix=0)
    assert s.plans[0].prefix == 0 and s.prefix == 0 and s.n_patches == 16
    # with a CLS token the same 16 patches get the same tiers and one more token
    cls = plan_layers(CondenseConfig(rate=0.1, layers=(0,)), 17, 2)
    assert cls.plans[0] == TierPlan(17, 15, 11, 4, 1, 2) and cls.prefix == 1


@pytest.mark.parametrize("method, plan", [("tome", TomePlan), ("tome-paper", TomePaperPlan)])
def test_tome_merge_counts_and_prefix(method, plan):
    # R = 0.1 on 17 tokens: int(15.3) = 15, capped at 9 - prefix (set A's even indices)
    s = plan_layers(CondenseConfig(method=method, keep_rate=0.1, layers=(0,)), 17, 1, prefix=0)
    assert s.plans == (plan(17, 8, r=9, prefix=0),) and s.plans[0].prefix == 0
    s = plan_layers(CondenseConfig(method=method, keep_rate=0.1, layers=(0,)), 17, 1)
    assert s.plans == (plan(17, 9, r=8, prefix=1),)
    # R = 0.9: int(1.7) = 1 token merged; R = 0.99: int(0.17) = 0, a plain block
    s = plan_layers(CondenseConfig(method=method, keep_rate=0.9, layers=(0,)), 17, 1)
    assert s.plans == (plan(17, 16, r=1),) and s.plans[0].n_in == 17
    s = plan_layers(CondenseConfig(method=method, keep_rate=0.99, layers=(0,)), 17, 1)
    assert s.plans == (None,) and s.tokens == (17,)


def test_ats_plans_and_the_cls_requirement():
    with pytest.raises(ConfigError) as err:
        plan_layers(CondenseConfig(method="ats", keep_rate=0.5), 16, 12, prefix=0)
    assert str(err.value) == (
        "ats scores patches by their CLS attention and this tower has no CLS token; "
        "use tca, evit, tome, tome-paper, pitome, tofu, zero-tprune or repshift"
    )
    # 16 patches, R = 0.5: budget ceil(8) = 8, at most 1 + 8 tokens out
    s = plan_layers(CondenseConfig(method="ats", keep_rate=0.5, layers=(1,)), 17, 2)
    assert s.plans == (None, AtsPlan(17, 9, budget=8)) and s.plans[1].n_in == 17
    # one patch: budget ceil(0.5) = 1; the CLS token alone: nothing to sample, a plain block
    assert plan_layers(CondenseConfig(method="ats", keep_rate=0.5, layers=(0,)), 2, 1).plans == (
        AtsPlan(2, 2, budget=1),
    )
    assert plan_layers(CondenseConfig(method="ats", keep_rate=0.5, layers=(0,)), 1, 1).plans == (
        None,
    )


def test_tca_on_the_cls_token_alone_is_a_plain_block():
    # P = 0: n_keep = 0, m = 1, t2 = min(2, 0) = 0 and t3 = 0: nothing to condense, and no
    # complaint that K = 2 exceeds an empty tier 2
    s = plan_layers(CondenseConfig(rate=0.1, layers=(0,)), 1, 1)
    assert s.plans == (None,) and s.tokens == (1,)


def test_tca_plan_builder_with_a_cls_token():
    config = CondenseConfig(rate=0.1, layers=(0,))
    assert method("tca").plan(config, 17, 0, 1, 1) == TierPlan(17, 15, 11, 4, 1, 2)


def test_format_layers():
    assert format_layers((3, 6, 9)) == "3,6,9"
    assert format_layers([True, 12.0]) == "1,12"
    assert format_layers(()) == ""


def test_default_layers_rule():
    """depth/4 * {1, 2, 3}, halves up: the paper's 3/6/9 of 12 exactly, 6/12/18 for ViT-L/14."""
    from tca.config import DEFAULT_LAYERS, default_layers

    assert default_layers(12) == DEFAULT_LAYERS == (3, 6, 9)
    assert default_layers(24) == (6, 12, 18)
    assert default_layers(32) == (8, 16, 24)
    assert default_layers(6) == (2, 3, 5)
    assert default_layers(3) == (1, 2)
    assert default_layers(1) == (0,)
    with pytest.raises(ConfigError, match="at least one block, got depth 0"):
        default_layers(0)
