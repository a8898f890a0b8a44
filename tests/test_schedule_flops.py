"""Settings, token schedules and analytic FLOPs, checked against the paper and open_clip."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tca
from tca.config import ConfigError, CondenseConfig, keep_rate_to_rate, plan_layers
from tca.flops import Geometry, macs_for


def b16() -> Geometry:
    # built inside each test (not at import) so that mutation testing exercises from_name
    return Geometry.from_name("ViT-B-16-quickgelu")


def _tokens(config: CondenseConfig, geom: Geometry | None = None) -> list[int]:
    geom = geom or b16()
    s = plan_layers(config, geom.n_tokens, geom.depth)
    return [s.tokens[i] for i in (3, 6, 9)]


def test_keep_rate_mapping_reproduces_released_settings():
    assert keep_rate_to_rate(1.0) == 0.0
    assert keep_rate_to_rate(0.9) == 0.035
    assert keep_rate_to_rate(0.7) == 0.1
    assert keep_rate_to_rate(0.8) == pytest.approx(0.0675)
    assert keep_rate_to_rate(0.5) == pytest.approx(0.5 / 3)
    rates = [keep_rate_to_rate(r / 100) for r in range(1, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # monotone
    assert max(rates) < 1 / 3


@pytest.mark.parametrize("config, expected", [
    (CondenseConfig(keep_rate=0.9), [180, 163, 149]),
    (CondenseConfig(keep_rate=0.7), [141, 100, 74]),
    (CondenseConfig(rate=0.035), [180, 163, 149]),
    (CondenseConfig(rate=0.035, merge_centers=4), [182, 167, 155]),  # the released K=4
    (CondenseConfig(rate=0.105, merge_centers=4), [140, 101, 74]),
    (CondenseConfig(rate=0.175, merge_centers=4), [98, 53, 29]),
    (CondenseConfig(method="evit", keep_rate=0.9), [179, 163, 148]),
    (CondenseConfig(method="evit", keep_rate=0.7), [140, 100, 72]),
    (CondenseConfig(method="tome", keep_rate=0.9), [178, 161, 145]),
    (CondenseConfig(method="tome", keep_rate=0.7), [138, 97, 68]),
    (CondenseConfig(keep_rate=1.0), [197, 197, 197]),
    (CondenseConfig(method="none"), [197, 197, 197]),
])
def test_vit_b16_token_schedules(config, expected):
    assert _tokens(config) == expected


def test_linear_d_would_not_reproduce_the_paper():
    # d = (1 - R) / 3 at R = 0.9 gives 180/166/152: why the mapping is piecewise
    assert _tokens(CondenseConfig(rate=0.1 / 3)) == [180, 166, 152]


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_rate=0.0), "keep rate"),
    (dict(keep_rate=1.5), "keep rate"),
    (dict(method="magic"), "unknown method"),
    (dict(score="median"), "unknown score"),
    (dict(merge_centers=0), "merge centres"),
    (dict(rate=0.4), "rate d"),
    (dict(layers=(-1,)), "layer indices"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CondenseConfig(**kwargs)


def test_layer_out_of_range_and_k_too_large():
    with pytest.raises(ConfigError, match="layer index 12 is out of range.*12 blocks"):
        plan_layers(CondenseConfig(layers=(3, 12)), 197, 12)
    # R=0.97 -> tier 2 holds 6 tokens at layer 3
    with pytest.raises(ConfigError, match="K=7 is larger than tier 2 at layer 3"):
        plan_layers(CondenseConfig(rate=0.01, merge_centers=7), 197, 12)


def test_baseline_gmacs_match_open_clip_profile():
    # open_clip docs/model_profile.csv image_gflops / 2
    for name, gflops in [("ViT-B-32", 8.82), ("ViT-B-16", 35.13), ("ViT-L-14", 162.03)]:
        g = macs_for(Geometry.from_name(name), CondenseConfig(method="none")).gmacs
        assert g * 2 == pytest.approx(gflops, abs=0.006)
    assert macs_for(b16(), CondenseConfig(method="none")).gmacs == pytest.approx(17.56, abs=0.005)


@pytest.mark.parametrize("config, paper", [
    (CondenseConfig(keep_rate=0.9), 15.45),
    (CondenseConfig(keep_rate=0.7), 11.68),
    (CondenseConfig(method="evit", keep_rate=0.9), 15.41),
    (CondenseConfig(method="evit", keep_rate=0.7), 11.62),
])
def test_paper_gflops_within_half_a_percent(config, paper):
    assert macs_for(b16(), config).gmacs == pytest.approx(paper, rel=0.005)


def test_vit_l14_at_r07_saves_the_papers_48_9_percent():
    g = Geometry.from_name("ViT-L-14")
    base = macs_for(g, CondenseConfig(method="none"))
    cond = macs_for(g, CondenseConfig(keep_rate=0.7))
    assert tca.flops.saved_percent(base, cond) == pytest.approx(48.9, abs=0.2)


def test_anchor_token_adds_attention_cost_at_condensing_layers_only():
    assert plan_layers(CondenseConfig(layers=(0, 3)), 197, 12, anchors=True).attention_tokens(0) == 197
    plain = macs_for(b16(), CondenseConfig(keep_rate=0.7))
    anchored = macs_for(b16(), CondenseConfig(keep_rate=0.7), anchors=True)
    diff = [a.total - p.total for a, p in zip(anchored.layers, plain.layers)]
    assert [i for i, d in enumerate(diff) if d] == [3, 6, 9]
    # one more token through qkv/out projections and both attention products
    n, d = 141, 768
    assert diff[6] == 4 * d * d + 2 * ((n + 1) ** 2 - n ** 2) * d


def test_geometry_from_model_matches_config(tiny_clip, b16_clip):
    assert Geometry.from_model(b16_clip.model) == b16()
    assert Geometry.from_model(tiny_clip.model).width == 64


@pytest.mark.parametrize("config", [
    CondenseConfig(method="none"), CondenseConfig(keep_rate=0.7), CondenseConfig(keep_rate=0.9),
    CondenseConfig(method="evit", keep_rate=0.7), CondenseConfig(method="tome", keep_rate=0.7),
])
def test_flop_counter_agrees_with_analytic_count(b16_clip, config):
    """torch's FlopCounterMode counts every matmul of the explicit-attention path exactly."""
    model = b16_clip.model
    tca.patch(model)
    x = torch.randn(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        enc = tca.encode(model, x, config, explicit_attention=True)
    report = tca.count_macs(Geometry.from_model(model), enc.schedule)
    measured = counter.get_total_flops() / 2
    # model MACs exactly; ToMe's matching products are part of the reported overhead
    assert report.model <= measured <= report.total
    assert measured == pytest.approx(report.model, rel=1e-3)
