"""Settings, token schedules and analytic FLOPs, checked against the paper and open_clip."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tca
from tca.config import ConfigError, CondenseConfig, keep_rate_to_rate, parse_layers, plan_layers
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


# --------------------------------------------------------------------------- exact values

SMALL = Geometry(width=64, depth=4, heads=2, patch=16, image_size=64, embed_dim=32)  # N = 17


def test_keep_rate_mapping_refuses_out_of_range():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError) as err:
            keep_rate_to_rate(bad)
        assert str(err.value) == f"keep rate must be in (0, 1], got {bad}"
    assert keep_rate_to_rate(0.95) == 0.0175  # half way along the first segment
    assert keep_rate_to_rate(0.6) == pytest.approx(0.4 / 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="magic"), "unknown method 'magic'; choose one of tca, evit, tome, tome-paper, ats, none"),
    (dict(score="median"), "unknown score 'median'; choose one of mean, rank"),
    (dict(keep_rate="0.7"), "keep rate must be in (0, 1], got 0.7"),
    (dict(keep_rate=0.0), "keep rate must be in (0, 1], got 0.0"),
    (dict(rate=1 / 3), f"rate d must be in [0, 1/3), got {1 / 3}"),
    (dict(rate=-0.01), "rate d must be in [0, 1/3), got -0.01"),
    (dict(merge_centers=2.0), "merge centres K must be a positive integer, got 2.0"),
    (dict(merge_centers=0), "merge centres K must be a positive integer, got 0"),
    (dict(layers=(3, -1)), "layer indices must be >= 0, got [3, -1]"),
])
def test_bad_settings_messages_are_exact(kwargs, message):
    with pytest.raises(ConfigError) as err:
        CondenseConfig(**kwargs)
    assert str(err.value) == message


def test_settings_at_their_edges():
    c = CondenseConfig(keep_rate=1, rate=0.0, merge_centers=1, layers=[9, "3", 3, 0])
    assert c.layers == (0, 3, 9)  # sorted, de-duplicated, ints
    assert c.tca_rate == 0.0 and c.is_identity
    assert not CondenseConfig(rate=0.01, keep_rate=1.0).is_identity  # d overrides R
    assert CondenseConfig(keep_rate=0.9, layers=()).is_identity
    assert CondenseConfig(method="evit", keep_rate=1.0).is_identity
    assert not CondenseConfig(method="tome", keep_rate=0.99).is_identity
    assert CondenseConfig(method="none", keep_rate=0.5).is_identity
    assert CondenseConfig().with_(method="evit", keep_rate=0.5) == CondenseConfig(method="evit",
                                                                                 keep_rate=0.5)
    with pytest.raises(ConfigError, match="unknown method"):
        CondenseConfig().with_(method="magic")


def test_describe_is_exact():
    assert CondenseConfig().describe() == "tca R=0.9, d=0.035, K=2, score=mean, layers [3, 6, 9]"
    assert CondenseConfig(rate=0.1, merge_centers=4, score="rank", layers=(1,)).describe() == \
        "tca R=0.9, d=0.1, K=4, score=rank, layers [1]"
    assert CondenseConfig(method="tome", keep_rate=0.75).describe() == "tome R=0.75, layers [3, 6, 9]"
    assert CondenseConfig(method="none").describe() == "none (unmodified CLIP)"


def test_parse_layers():
    assert parse_layers("3,6,9") == (3, 6, 9)
    assert parse_layers(" 1 ; 2,, 10 ") == (1, 2, 10)
    assert parse_layers("") == ()
    assert parse_layers([4, "5"]) == (4, 5)
    with pytest.raises(ConfigError) as err:
        parse_layers("3,six")
    assert str(err.value) == "layers must be comma-separated integers like 3,6,9, got '3,six'"


def test_schedule_plans_and_attention_tokens_exactly():
    # N = 17, d = 0.1: n_keep = ceil(14.4) = 15, m = 2 -> tiers 11 / 4 / 1, K = 2 -> 15 tokens;
    # then N = 15: n_keep = ceil(12.6) = 13, m = 2 -> 9 / 4 / 1 -> 13 tokens
    s = plan_layers(CondenseConfig(rate=0.1, layers=(1, 2)), 17, 4, anchors=True)
    assert s.tokens == (17, 15, 13, 13) and s.n_tokens == 17 and s.anchors
    assert s.plans[0] is None and s.plans[3] is None
    assert s.plans[1] == tca.config.TierPlan(17, 15, 11, 4, 1, 2)
    assert s.plans[2] == tca.config.TierPlan(15, 13, 9, 4, 1, 2)
    assert [s.attention_tokens(i) for i in range(4)] == [17, 18, 16, 13]
    # anchors are TCA only
    evit = plan_layers(CondenseConfig(method="evit", keep_rate=0.5, layers=(1,)), 17, 4, anchors=True)
    assert not evit.anchors and evit.plans[1] == tca.config.TierPlan(17, 10, 8, 0, 8, 0)
    assert [evit.attention_tokens(i) for i in range(4)] == [17, 17, 10, 10]
    tome = plan_layers(CondenseConfig(method="tome", keep_rate=0.8, layers=(0, 3)), 17, 4)
    assert tome.plans[0] == tca.config.TomePlan(17, 14, r=3)
    assert tome.tokens == (14, 14, 14, 12)
    # int(17 * 0.1) = 1: a ToMe layer merging a single pair still condenses
    one = plan_layers(CondenseConfig(method="tome", keep_rate=0.9, layers=(0,)), 17, 4)
    assert one.plans[0] == tca.config.TomePlan(17, 16, r=1)
    # d·P < 1: nothing to fuse, so no fused token (tiers 14 / 2 / 0, K = 2 -> 17 tokens)
    assert plan_layers(CondenseConfig(rate=1e-4, layers=(0,)), 17, 4).plans[0] == \
        tca.config.TierPlan(17, 17, 14, 2, 0, 2)
    # EViT fusing a single patch still condenses (ceil(0.9 * 16) = 15 kept + 1 fused: 17 tokens)
    assert plan_layers(CondenseConfig(method="evit", keep_rate=0.9, layers=(0,)), 17, 4).plans[0] == \
        tca.config.TierPlan(17, 17, 15, 0, 1, 0)
    assert not plan_layers(CondenseConfig(rate=0.1, layers=(1,)), 17, 4).anchors  # off by default
    assert plan_layers(CondenseConfig(rate=0.3, merge_centers=1, layers=(0,)), 2, 1).plans[0] == \
        tca.config.TierPlan(2, 2, 0, 1, 0, 1)
    # N = 2 at d = 0.3: tier 2 holds the only patch, so K = 2 is refused
    with pytest.raises(ConfigError, match="K=2 is larger than tier 2 at layer 0 \\(1 class-ambiguous"):
        plan_layers(CondenseConfig(rate=0.3, layers=(0,)), 2, 1)
    # a ToMe layer with nothing to merge is a plain layer; so is an identity TCA layer
    assert plan_layers(CondenseConfig(method="tome", keep_rate=0.95, layers=(0,)), 17, 4).plans[0] is None
    assert plan_layers(CondenseConfig(rate=0.0, layers=(0,)), 17, 4).plans == (None,) * 4
    # out-of-range layers are fine when nothing condenses
    assert plan_layers(CondenseConfig(method="none", layers=(7,)), 17, 4).tokens == (17,) * 4
    with pytest.raises(ConfigError) as err:
        plan_layers(CondenseConfig(rate=0.1, layers=(4,)), 17, 4)
    assert str(err.value) == "layer index 4 is out of range: this model has 4 blocks (valid indices 0..3)"
    with pytest.raises(ConfigError) as err:
        plan_layers(CondenseConfig(rate=0.1, merge_centers=5, layers=(1,)), 17, 4)
    assert str(err.value) == ("merge centres K=5 is larger than tier 2 at layer 1 (4 class-ambiguous "
                              "tokens of 17); use K <= 4 or a lower keep rate")
    # K equal to tier 2: every tier-2 token is its own centre
    assert plan_layers(CondenseConfig(rate=0.1, merge_centers=4, layers=(1,)), 17, 4).plans[1].k == 4


def _macs_by_formula(d, hidden, n_in, n_out):
    return 4 * n_in * d * d + 2 * n_in * n_in * d, 2 * n_out * d * hidden


def test_count_macs_exactly_on_a_small_vit():
    d, hidden = 64, 256
    r = macs_for(SMALL, CondenseConfig(rate=0.1, layers=(1, 2)), anchors=True)
    n = [(17, 17), (18, 15), (16, 13), (13, 13)]  # (into attention, into the MLP)
    assert [(l.layer, l.n_attention, l.n_mlp) for l in r.layers] == [(i, *n[i]) for i in range(4)]
    for layer, (n_in, n_out) in zip(r.layers, n):
        assert (layer.attention, layer.mlp) == _macs_by_formula(d, hidden, n_in, n_out)
        assert layer.total == layer.attention + layer.mlp
    # overhead: CLS row N·D, coreset t2²·D + t2·D (t2 = 4 > K = 2), fusing t3·D
    assert [l.overhead for l in r.layers] == [0, 18 * 64 + 16 * 64 + 4 * 64 + 64,
                                              16 * 64 + 16 * 64 + 4 * 64 + 64, 0]
    assert r.patch_embed == 16 * 3 * 16 * 16 * 64 and r.head == 64 * 32
    assert r.blocks == sum(l.total for l in r.layers)
    assert r.overhead == 2496 + 2368
    assert r.model == r.patch_embed + r.blocks + r.head and r.total == r.model + r.overhead
    assert r.gmacs == r.total / 1e9
    assert all(type(v) is int for l in r.layers for v in (l.attention, l.mlp, l.overhead))
    # K = t2: no coreset, the tier-2 tokens are kept as centres
    k4 = macs_for(SMALL, CondenseConfig(rate=0.1, merge_centers=4, layers=(1,)))
    assert k4.layers[1].overhead == 17 * 64 + 64
    # ToMe: bipartite cosine on head-mean keys (Na·Nb·D/h) plus the weighted merge (N·D)
    tome = macs_for(SMALL, CondenseConfig(method="tome", keep_rate=0.8, layers=(0, 3)))
    assert [l.overhead for l in tome.layers] == [9 * 8 * 32 + 17 * 64, 0, 0, 7 * 7 * 32 + 14 * 64]
    assert type(tome.layers[0].overhead) is int


def test_flop_report_dict_and_saving():
    base = macs_for(SMALL, CondenseConfig(method="none"))
    cond = macs_for(SMALL, CondenseConfig(rate=0.1, layers=(1, 2)))
    d = cond.to_dict()
    assert d["convention"] == tca.flops.CONVENTION
    assert (d["gmacs"], d["gmacs_model"], d["gmacs_overhead"]) == (
        cond.total / 1e9, cond.model / 1e9, cond.overhead / 1e9)
    assert (d["patch_embed"], d["head"]) == (cond.patch_embed, cond.head)
    assert d["layers"][1] == {"layer": 1, "n_attention": 17, "n_mlp": 15, "attention": cond.layers[1].attention,
                              "mlp": cond.layers[1].mlp, "overhead": cond.layers[1].overhead,
                              "total": cond.layers[1].total}
    assert len(d["layers"]) == 4
    assert tca.flops.saved_percent(base, cond) == 100.0 * (1.0 - cond.total / base.total)
    assert tca.flops.saved_percent(base, base) == 0.0


def test_geometry_from_name_reads_every_field(tmp_path):
    import json
    import open_clip
    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": [96, 96], "layers": 3, "width": 48,
                                           "head_width": 16, "patch_size": 16, "mlp_ratio": 2.0},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tca-geometry-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    g = Geometry.from_name("tca-geometry-test")
    assert g == Geometry(width=48, depth=3, heads=3, patch=16, image_size=96, embed_dim=24, mlp_ratio=2.0)
    assert type(g.heads) is int and (g.grid, g.n_tokens) == (6, 37)
    model = open_clip.create_model("tca-geometry-test", pretrained=None)
    assert Geometry.from_model(model) == g == Geometry.from_model(model.visual)
    model.visual.proj = None  # no projection: the embedding is the width
    assert Geometry.from_model(model).embed_dim == 48
    for name, message in [("tca-no-such-model", "unknown open_clip model 'tca-no-such-model'"),
                          ("RN50", "RN50 has no ViT vision tower (ResNets have no tokens to condense)")]:
        with pytest.raises(ValueError) as err:
            Geometry.from_name(name)
        assert str(err.value) == message
    assert Geometry.from_name("ViT-B-16") == Geometry(768, 12, 12, 16, 224, 512, 4.0)
