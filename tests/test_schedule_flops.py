"""Settings, token schedules and analytic FLOPs, checked against the paper and open_clip."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tca
from tca.config import CondenseConfig, ConfigError, keep_rate_to_rate, parse_layers, plan_layers
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


@pytest.mark.parametrize(
    "config, expected",
    [
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
    ],
)
def test_vit_b16_token_schedules(config, expected):
    assert _tokens(config) == expected


def test_linear_d_would_not_reproduce_the_paper():
    # d = (1 - R) / 3 at R = 0.9 gives 180/166/152: why the mapping is piecewise
    assert _tokens(CondenseConfig(rate=0.1 / 3)) == [180, 166, 152]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep_rate=0.0), "keep rate"),
        (dict(keep_rate=1.5), "keep rate"),
        (dict(method="magic"), "unknown method"),
        (dict(score="median"), "unknown score"),
        (dict(merge_centers=0), "merge centres"),
        (dict(rate=0.4), "rate d"),
        (dict(layers=(-1,)), "layer indices"),
    ],
)
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


@pytest.mark.parametrize(
    "config, paper",
    [
        (CondenseConfig(keep_rate=0.9), 15.45),
        (CondenseConfig(keep_rate=0.7), 11.68),
        (CondenseConfig(method="evit", keep_rate=0.9), 15.41),
        (CondenseConfig(method="evit", keep_rate=0.7), 11.62),
    ],
)
def test_paper_gflops_within_half_a_percent(config, paper):
    assert macs_for(b16(), config).gmacs == pytest.approx(paper, rel=0.005)


def test_vit_l14_at_r07_saves_the_papers_48_9_percent():
    g = Geometry.from_name("ViT-L-14")
    base = macs_for(g, CondenseConfig(method="none"))
    cond = macs_for(g, CondenseConfig(keep_rate=0.7))
    assert tca.flops.saved_percent(base, cond) == pytest.approx(48.9, abs=0.2)


def test_anchor_token_adds_attention_cost_at_condensing_layers_only():
    assert (
        plan_layers(CondenseConfig(layers=(0, 3)), 197, 12, anchors=True).attention_tokens(0) == 197
    )
    plain = macs_for(b16(), CondenseConfig(keep_rate=0.7))
    anchored = macs_for(b16(), CondenseConfig(keep_rate=0.7), anchors=True)
    diff = [a.total - p.total for a, p in zip(anchored.layers, plain.layers)]
    assert [i for i, d in enumerate(diff) if d] == [3, 6, 9]
    # one more token through qkv/out projections and both attention products
    n, d = 141, 768
    assert diff[6] == 4 * d * d + 2 * ((n + 1) ** 2 - n**2) * d


def test_geometry_from_model_matches_config(tiny_clip, b16_clip):
    assert Geometry.from_model(b16_clip.model) == b16()
    assert Geometry.from_model(tiny_clip.model).width == 64


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(method="none"),
        CondenseConfig(keep_rate=0.7),
        CondenseConfig(keep_rate=0.9),
        CondenseConfig(method="evit", keep_rate=0.7),
        CondenseConfig(method="tome", keep_rate=0.7),
    ],
)
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(method="magic"),
            "unknown method 'magic'; choose one of tca, evit, tome, tome-paper, ats, "
            "pitome, tofu, zero-tprune, repshift, none",
        ),
        (dict(score="median"), "unknown score 'median'; choose one of mean, rank"),
        (dict(keep_rate="0.7"), "keep rate must be in (0, 1], got 0.7"),
        (dict(keep_rate=0.0), "keep rate must be in (0, 1], got 0.0"),
        (dict(rate=1 / 3), f"rate d must be in [0, 1/3), got {1 / 3}"),
        (dict(rate=-0.01), "rate d must be in [0, 1/3), got -0.01"),
        (dict(merge_centers=2.0), "merge centres K must be a positive integer, got 2.0"),
        (dict(merge_centers=0), "merge centres K must be a positive integer, got 0"),
        (dict(layers=(3, -1)), "layer indices must be >= 0, got [3, -1]"),
    ],
)
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
    assert CondenseConfig().with_(method="evit", keep_rate=0.5) == CondenseConfig(
        method="evit", keep_rate=0.5
    )
    with pytest.raises(ConfigError, match="unknown method"):
        CondenseConfig().with_(method="magic")


def test_describe_is_exact():
    assert CondenseConfig().describe() == "tca R=0.9, d=0.035, K=2, score=mean, layers [3, 6, 9]"
    assert (
        CondenseConfig(rate=0.1, merge_centers=4, score="rank", layers=(1,)).describe()
        == "tca R=0.9, d=0.1, K=4, score=rank, layers [1]"
    )
    assert (
        CondenseConfig(method="tome", keep_rate=0.75).describe() == "tome R=0.75, layers [3, 6, 9]"
    )
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
    assert s.plans[1] == tca.plans.TierPlan(17, 15, 11, 4, 1, 2)
    assert s.plans[2] == tca.plans.TierPlan(15, 13, 9, 4, 1, 2)
    assert [s.attention_tokens(i) for i in range(4)] == [17, 18, 16, 13]
    # anchors are TCA only
    evit = plan_layers(
        CondenseConfig(method="evit", keep_rate=0.5, layers=(1,)), 17, 4, anchors=True
    )
    assert not evit.anchors and evit.plans[1] == tca.plans.TierPlan(17, 10, 8, 0, 8, 0)
    assert [evit.attention_tokens(i) for i in range(4)] == [17, 17, 10, 10]
    tome = plan_layers(CondenseConfig(method="tome", keep_rate=0.8, layers=(0, 3)), 17, 4)
    assert tome.plans[0] == tca.plans.TomePlan(17, 14, r=3)
    assert tome.tokens == (14, 14, 14, 12)
    # int(17 * 0.1) = 1: a ToMe layer merging a single pair still condenses
    one = plan_layers(CondenseConfig(method="tome", keep_rate=0.9, layers=(0,)), 17, 4)
    assert one.plans[0] == tca.plans.TomePlan(17, 16, r=1)
    # d·P < 1: nothing to fuse, so no fused token (tiers 14 / 2 / 0, K = 2 -> 17 tokens)
    assert plan_layers(CondenseConfig(rate=1e-4, layers=(0,)), 17, 4).plans[
        0
    ] == tca.plans.TierPlan(17, 17, 14, 2, 0, 2)
    # EViT fusing a single patch still condenses (ceil(0.9 * 16) = 15 kept + 1 fused: 17 tokens)
    assert plan_layers(CondenseConfig(method="evit", keep_rate=0.9, layers=(0,)), 17, 4).plans[
        0
    ] == tca.plans.TierPlan(17, 17, 15, 0, 1, 0)
    assert not plan_layers(CondenseConfig(rate=0.1, layers=(1,)), 17, 4).anchors  # off by default
    assert plan_layers(CondenseConfig(rate=0.3, merge_centers=1, layers=(0,)), 2, 1).plans[
        0
    ] == tca.plans.TierPlan(2, 2, 0, 1, 0, 1)
    # N = 2 at d = 0.3: tier 2 holds the only patch, so K = 2 is refused
    with pytest.raises(
        ConfigError, match="K=2 is larger than tier 2 at layer 0 \\(1 class-ambiguous"
    ):
        plan_layers(CondenseConfig(rate=0.3, layers=(0,)), 2, 1)
    # a ToMe layer with nothing to merge is a plain layer; so is an identity TCA layer
    assert (
        plan_layers(CondenseConfig(method="tome", keep_rate=0.95, layers=(0,)), 17, 4).plans[0]
        is None
    )
    assert plan_layers(CondenseConfig(rate=0.0, layers=(0,)), 17, 4).plans == (None,) * 4
    # out-of-range layers are fine when nothing condenses
    assert plan_layers(CondenseConfig(method="none", layers=(7,)), 17, 4).tokens == (17,) * 4
    with pytest.raises(ConfigError) as err:
        plan_layers(CondenseConfig(rate=0.1, layers=(4,)), 17, 4)
    assert (
        str(err.value)
        == "layer index 4 is out of range: this model has 4 blocks (valid indices 0..3)"
    )
    with pytest.raises(ConfigError) as err:
        plan_layers(CondenseConfig(rate=0.1, merge_centers=5, layers=(1,)), 17, 4)
    assert str(err.value) == (
        "merge centres K=5 is larger than tier 2 at layer 1 (4 class-ambiguous "
        "tokens of 17); use K <= 4 or a lower keep rate"
    )
    # K equal to tier 2: every tier-2 token is its own centre
    assert (
        plan_layers(CondenseConfig(rate=0.1, merge_centers=4, layers=(1,)), 17, 4).plans[1].k == 4
    )


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
    assert [l.overhead for l in r.layers] == [
        0,
        18 * 64 + 16 * 64 + 4 * 64 + 64,
        16 * 64 + 16 * 64 + 4 * 64 + 64,
        0,
    ]
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
        cond.total / 1e9,
        cond.model / 1e9,
        cond.overhead / 1e9,
    )
    assert (d["patch_embed"], d["head"]) == (cond.patch_embed, cond.head)
    assert d["layers"][1] == {
        "layer": 1,
        "n_attention": 17,
        "n_mlp": 15,
        "attention": cond.layers[1].attention,
        "mlp": cond.layers[1].mlp,
        "overhead": cond.layers[1].overhead,
        "total": cond.layers[1].total,
    }
    assert len(d["layers"]) == 4
    assert tca.flops.saved_percent(base, cond) == 100.0 * (1.0 - cond.total / base.total)
    assert tca.flops.saved_percent(base, base) == 0.0


def test_geometry_from_name_reads_every_field(tmp_path):
    import json

    import open_clip

    cfg = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": [96, 96],
            "layers": 3,
            "width": 48,
            "head_width": 16,
            "patch_size": 16,
            "mlp_ratio": 2.0,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / "tca-geometry-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    g = Geometry.from_name("tca-geometry-test")
    assert g == Geometry(
        width=48, depth=3, heads=3, patch=16, image_size=96, embed_dim=24, mlp_ratio=2.0
    )
    assert type(g.heads) is int and (g.grid, g.n_tokens) == (6, 37)
    model = open_clip.create_model("tca-geometry-test", pretrained=None)
    assert Geometry.from_model(model) == g == Geometry.from_model(model.visual)
    model.visual.proj = None  # no projection: the embedding is the width
    assert Geometry.from_model(model).embed_dim == 48
    for name, message in [
        ("tca-no-such-model", "unknown open_clip model 'tca-no-such-model'"),
        ("RN50", "RN50 has no ViT vision tower (ResNets have no tokens to condense)"),
    ]:
        with pytest.raises(ValueError) as err:
            Geometry.from_name(name)
        assert str(err.value) == message
    assert Geometry.from_name("ViT-B-16") == Geometry(768, 12, 12, 16, 224, 512, 4.0)


# --------------------------------------------------------------------------- timm towers


def _timm_config(tmp_path, name: str, embed_dim: int = 40, **vision) -> str:
    """Register an open_clip config ``name`` whose vision tower is the timm model in ``vision``."""
    import json

    import open_clip

    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_pretrained": False, **vision},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    return name


def _block_macs(d: int, hidden: int, n_in: int, n_out: int) -> int:
    # q, k, v and the output projection (4·N·D²), QKᵀ and AV (2·N²·D), the MLP's two layers
    return n_in * d * (4 * d + 2 * n_in) + n_out * d * 2 * hidden


def test_geometry_of_timm_configs_is_read_from_the_meta_tower(tmp_path):
    """``from_name`` builds a timm config's tower on the meta device and reads every field; the
    adapter's defaults (no ``timm_pool``: average pooling, no ``timm_proj``: a linear projection)
    are open_clip's."""
    vit_tiny = dict(timm_model_name="vit_tiny_patch16_224")  # D = 192, 12 blocks, 3 heads, CLS
    # CLS pooling with open_clip's default linear projection to the 40-wide embedding
    g = Geometry.from_name(
        _timm_config(tmp_path, "tca-flops-timm-token", timm_pool="token", **vit_tiny)
    )
    assert g == Geometry(
        width=192,
        depth=12,
        heads=3,
        patch=16,
        image_size=224,
        embed_dim=40,
        mlp_ratio=4.0,
        prefix=1,
        pool="tok",
        pool_hidden=0,
        proj=True,
    )
    assert type(g.mlp_ratio) is float and (g.grid, g.n_tokens) == (14, 197)
    # the trunk's own features, unprojected: the embedding is the width
    g = Geometry.from_name(
        _timm_config(
            tmp_path, "tca-flops-timm-bare", timm_pool="token", timm_proj="none", **vit_tiny
        )
    )
    assert g == Geometry(
        192, 12, 3, 16, 224, 192, 4.0, prefix=1, pool="tok", pool_hidden=0, proj=False
    )
    # SigLIP's tower (no CLS, MAP head) with a linear projection after the pool
    g = Geometry.from_name(
        _timm_config(
            tmp_path,
            "tca-flops-timm-map",
            embed_dim=56,
            timm_pool="map",
            timm_proj="linear",
            timm_model_name="vit_base_patch16_siglip_224",
        )
    )
    assert g == Geometry(
        768, 12, 12, 16, 224, 56, 4.0, prefix=0, pool="map", pool_hidden=3072, proj=True
    )
    assert (g.grid, g.n_tokens) == (14, 196)
    # open_clip's own SigLIP configs: no projection, the MAP head's MLP as wide as the blocks'
    assert Geometry.from_name("ViT-B-16-SigLIP2") == Geometry(
        768, 12, 12, 16, 224, 768, 4.0, prefix=0, pool="map", pool_hidden=3072, proj=False
    )
    so400m = Geometry.from_name("ViT-SO400M-14-SigLIP")  # MLP 4304 wide on 1152: ratio 269/72
    assert so400m == Geometry(
        1152, 27, 16, 14, 224, 1152, 4304 / 1152, prefix=0, pool="map", pool_hidden=4304, proj=False
    )
    assert (so400m.grid, so400m.n_tokens) == (16, 256)


@pytest.mark.parametrize(
    "vision, message",
    [
        # no timm_pool: open_clip's default is average pooling, which has no signal to rank patches by
        (
            dict(timm_model_name="vit_tiny_patch16_224"),
            "this timm tower has no usable pooling signal to rank patches by: it has 1 prefix token(s) and "
            "pools with global_pool='avg'. Condensation needs either one CLS token that the tower pools by "
            "('token') or no CLS token and a single-query attention pool ('map', as in SigLIP); average "
            "pooling weighs all tokens alike",
        ),
        # an MLP projection (two linear layers) after the pool
        (
            dict(timm_model_name="vit_tiny_patch16_224", timm_pool="token", timm_proj="mlp"),
            "timm towers with an MLP or classifier head are not counted",
        ),
        # no open_clip projection: the trunk keeps a classifier head as wide as the embedding
        (
            dict(timm_model_name="vit_tiny_patch16_224", timm_pool="token", timm_proj=""),
            "timm towers with an MLP or classifier head are not counted",
        ),
    ],
)
def test_timm_towers_that_cannot_be_counted_are_refused_with_the_reason(tmp_path, vision, message):
    name = _timm_config(
        tmp_path, f"tca-flops-refused-{len(vision)}-{vision.get('timm_proj')}", **vision
    )
    with pytest.raises(tca.errors.UnsupportedModelError) as err:
        Geometry.from_name(name)
    assert str(err.value) == message


def test_timm_token_tower_geometry_and_macs_by_hand(tmp_path):
    """A real (CPU, random) timm ViT-Ti/16 with CLS pooling inside an open_clip model, cut to one
    block: Geometry reads the model and its tower alike, and the MACs are the hand count."""
    import open_clip

    name = _timm_config(
        tmp_path, "tca-flops-timm-cut", timm_pool="token", timm_model_name="vit_tiny_patch16_224"
    )
    model = open_clip.create_model(name, pretrained=None)
    model.visual.trunk.blocks = model.visual.trunk.blocks[:1]
    g = Geometry.from_model(model)
    assert (
        g
        == Geometry.from_model(model.visual)
        == Geometry(192, 1, 3, 16, 224, 40, 4.0, prefix=1, pool="tok", pool_hidden=0, proj=True)
    )
    base = macs_for(g, CondenseConfig(method="none"))
    d, n = 192, 197
    assert base.layers == (
        tca.flops.LayerMacs(0, n, n, 4 * n * d * d + 2 * n * n * d, 2 * n * d * 768, 0),
    )
    assert base.patch_embed == 196 * 3 * 16 * 16 * 192 and base.head == 192 * 40  # CLS -> linear
    assert (
        base.total
        == 196 * 3 * 256 * 192 + _block_macs(192, 768, 197, 197) + 192 * 40
        == 130_958_208
    )


SIGLIP_B16 = Geometry(
    768, 12, 12, 16, 224, 768, 4.0, prefix=0, pool="map", pool_hidden=3072, proj=False
)


def _map_head(d: int, n: int, hidden: int) -> int:
    # the pool's query (D²), its keys and values over the n tokens (2·n·D²), q·k and attention·v
    # (2·n·D), its output projection (D²) and its MLP (2·D·hidden)
    return d * d + 2 * n * d * d + 2 * n * d + d * d + 2 * d * hidden


def test_map_head_and_pool_row_macs_by_hand():
    """SigLIP B/16: 196 tokens, no CLS, the MAP head; the baseline is what torch's FlopCounterMode
    measures on the tower (tests/test_siglip.py)."""
    d, h = 768, 12
    base = macs_for(SIGLIP_B16, CondenseConfig(method="none"))
    assert base.patch_embed == 196 * 3 * 16 * 16 * d
    assert base.head == _map_head(d, 196, 3072) == 237_410_304
    assert [l.total for l in base.layers] == [_block_macs(d, 3072, 196, 196)] * 12
    assert base.total == base.model == 17_708_292_096
    # condensing at block 3 and the last block: the head sees the last block's 99 tokens
    r = macs_for(SIGLIP_B16, CondenseConfig(keep_rate=0.7, layers=(3, 11)))
    plans = r.layers
    assert [(l.n_attention, l.n_mlp) for l in plans] == [(196, 196)] * 3 + [(196, 140)] + [
        (140, 140)
    ] * 7 + [(140, 99)]
    assert r.head == _map_head(d, 99, 3072)
    # no CLS: the pool's query folded into its key projection (2·D²), then one score per token
    # and head (N·D·h); coreset on tier 2 (t2²·D + t2·D), fusing tier 3 (t3·D)
    # block 3: tiers 137 / 40 / 19 of 196; block 11: 96 / 30 / 14 of 140 (K = 2)
    assert [l.overhead for l in plans] == [0] * 3 + [
        2 * d * d + 196 * d * h + 40 * 40 * d + 40 * d + 19 * d
    ] + [0] * 7 + [2 * d * d + 140 * d * h + 30 * 30 * d + 30 * d + 14 * d]
    # with domain anchors the pool's row runs over the anchor too
    anchored = macs_for(SIGLIP_B16, CondenseConfig(keep_rate=0.7, layers=(3, 11)), anchors=True)
    assert anchored.layers[3].overhead - plans[3].overhead == d * h
    assert anchored.head == r.head
    # a projection after the pool adds D·E
    projected = Geometry(768, 12, 12, 16, 224, 56, 4.0, prefix=0, pool="map", pool_hidden=1000)
    assert macs_for(projected, CondenseConfig(method="none")).head == 768 * 56 + _map_head(
        d, 196, 1000
    )
    # the pool's row replaces the CLS row only for an attention pool without a CLS token: a CLS
    # pooled tower without CLS, and a MAP head over a tower with CLS, pay the CLS row N·D
    config = CondenseConfig(keep_rate=0.7, layers=(3,))  # tiers 137 / 40 / 19 either way
    for pool, prefix in [("tok", 0), ("map", 1)]:
        g = Geometry(
            768, 12, 12, 16, 224, 768, 4.0, prefix=prefix, pool=pool, pool_hidden=3072, proj=False
        )
        s = g.schedule(config)
        assert (s.prefix, s.n_tokens) == (prefix, 196 + prefix)
        assert s.plans[3] == tca.plans.TierPlan(
            196 + prefix, 140 + prefix, prefix=prefix, t1=137, t2=40, t3=19, k=2
        )
        assert (
            macs_for(g, config).layers[3].overhead
            == (196 + prefix) * d + 40 * 40 * d + 40 * d + 19 * d
        )
    assert macs_for(SIGLIP_B16, config).layers[3].overhead == plans[3].overhead


def test_schedule_defaults_and_the_mean_over_images():
    import math

    config = CondenseConfig(rate=0.1, layers=(1, 2))
    assert SMALL.schedule(config) == plan_layers(config, 17, 4, False, 1)  # no anchors by default
    assert not SMALL.schedule(config).anchors and SMALL.schedule(config, anchors=True).anchors
    # per-image counts (as ATS has them): one report each, their mean is the plain average
    s = SMALL.schedule(config)
    one, two = tca.flops.macs_per_image(SMALL, s, [[17, 15, 13, 13], [17, 12, 9, 9]])
    assert one == macs_for(SMALL, config)
    assert [l.n_mlp for l in two.layers] == [17, 12, 9, 9]
    assert [l.n_attention for l in two.layers] == [17, 17, 12, 9]
    assert tca.flops.mean_gmacs([one, two]) == (one.total / 1e9 + two.total / 1e9) / 2
    assert tca.flops.mean_gmacs([two]) == two.gmacs
    assert math.isnan(tca.flops.mean_gmacs([]))


def test_tome_paper_and_ats_overhead_exactly():
    # ToMe as in the paper matches on attention rows (N wide): Na·Nb·N, then the merge N·D
    paper = macs_for(SMALL, CondenseConfig(method="tome-paper", keep_rate=0.8, layers=(0, 3)))
    assert [l.overhead for l in paper.layers] == [9 * 8 * 17 + 17 * 64, 0, 0, 7 * 7 * 14 + 14 * 64]
    # ATS: the CLS attention row and the value norms, all heads (2·N·D)
    ats = macs_for(SMALL, CondenseConfig(method="ats", keep_rate=0.8, layers=(0, 3)))
    assert [l.overhead for l in ats.layers] == [2 * 17 * 64, 0, 0, 2 * 14 * 64]
    # ToMe on a tower without CLS: no pool row, the 16 patches split 8 / 8
    g = Geometry(64, 4, 2, 16, 64, 64, prefix=0, pool="map", pool_hidden=100, proj=False)
    for method, metric in [("tome", 32), ("tome-paper", 16)]:
        r = macs_for(g, CondenseConfig(method=method, keep_rate=0.8, layers=(0,)))
        assert r.layers[0].overhead == 8 * 8 * metric + 16 * 64
    # the CLS row is the default for a direct call
    plan = SMALL.schedule(CondenseConfig(rate=0.1, layers=(1,))).plans[1]
    assert plan.overhead(17, 64, 2) == 17 * 64 + 4 * 4 * 64 + 4 * 64 + 64


def test_one_block_open_clip_tower_geometry_and_macs_by_hand(tmp_path):
    import json

    import open_clip

    cfg = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
            "mlp_ratio": 3.0,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / "tca-flops-one-block.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    model = open_clip.create_model("tca-flops-one-block", pretrained=None)
    g = Geometry.from_model(model)
    assert g == Geometry.from_name("tca-flops-one-block") == Geometry(32, 1, 2, 16, 32, 24, 3.0)
    # 4 patches + CLS, one block, MLP 96 wide
    r = macs_for(g, CondenseConfig(method="none"))
    assert r.total == 4 * 3 * 16 * 16 * 32 + _block_macs(32, 96, 5, 5) + 32 * 24 == 151_872
