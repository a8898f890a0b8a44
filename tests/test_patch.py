"""Patching real open_clip models: equivalence, restoration, token counts, batching, anchors."""

from __future__ import annotations

import threading

import open_clip
import pytest
import torch

import tca
from tca.block import select_anchor
from tca.config import CondenseConfig, plan_layers
from tca.patch import UnsupportedModelError

FAMILIES = [
    "ViT-B-32",
    "ViT-B-32-quickgelu",
    "ViT-B-16",
    "ViT-B-16-quickgelu",
    "ViT-L-14",
    "ViT-L-14-quickgelu",
]


def _images(n: int, seed: int = 0, size: int = 224) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_nothing_removed_equals_open_clip(name):
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    x = _images(2 if "L-14" not in name else 1)
    with torch.inference_mode():
        ref = model.encode_image(x)
        tca.patch(model, method="tca", keep_rate=1.0)
        assert torch.equal(model.encode_image(x), ref)  # R=1: every block runs open_clip's code
        for config in [
            CondenseConfig(method="none"),
            CondenseConfig(method="evit", keep_rate=1.0),
            CondenseConfig(method="tome", keep_rate=1.0),
        ]:
            assert torch.equal(tca.encode(model, x, config).features, ref)
        # The condensing path itself with nothing removed: explicit attention everywhere, and a
        # TCA rate so small that layers 3/6/9 reorder tokens and "merge" 2 tokens into K=2.
        explicit = tca.encode(model, x, CondenseConfig(method="none"), explicit_attention=True)
        torch.testing.assert_close(explicit.features, ref, rtol=0, atol=1e-5)
        tiny_rate = tca.encode(model, x, CondenseConfig(rate=1e-4))
        assert tiny_rate.tokens_per_layer == [
            197 if "16" in name else (50 if "32" in name else 257)
        ] * len(tiny_rate.tokens_per_layer)
        torch.testing.assert_close(tiny_rate.features, ref, rtol=0, atol=1e-5)
        tca.unpatch(model)
        assert not tca.is_patched(model)
        assert type(model.visual) is open_clip.transformer.VisionTransformer
        assert torch.equal(model.encode_image(x), ref)


def test_unpatch_restores_bit_identical_output_after_condensed_runs(tiny_clip):
    model = tiny_clip.model
    x = _images(2)
    with torch.inference_mode():
        tca.unpatch(model)
        ref = model.encode_image(x)
        tca.patch(model, method="tca", keep_rate=0.7)
        condensed = model.encode_image(x)
        assert not torch.allclose(condensed, ref)  # plain encode_image now runs condensed
        assert torch.equal(condensed, tca.encode(model, x).features)
        tca.encode(
            model, x, CondenseConfig(method="tome", keep_rate=0.5), trace=True, record_cls=True
        )
        tca.unpatch(model)
        assert torch.equal(model.encode_image(x), ref)
        assert not any(hasattr(b, "_tca") for b in model.visual.transformer.resblocks)


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(keep_rate=0.9),
        CondenseConfig(keep_rate=0.7),
        CondenseConfig(keep_rate=0.5),
        CondenseConfig(keep_rate=0.7, score="rank"),
        CondenseConfig(method="evit", keep_rate=0.7),
        CondenseConfig(method="tome", keep_rate=0.7),
        CondenseConfig(keep_rate=0.7, layers=(0, 2, 4, 8)),
    ],
)
def test_real_token_counts_follow_the_analytic_schedule(b16_clip, config):
    model = b16_clip.model
    tca.patch(model)
    with torch.inference_mode():
        enc = tca.encode(model, _images(1), config)
    assert enc.tokens_per_layer == list(plan_layers(config, 197, 12).tokens)


def test_vit_b16_paper_schedules_in_a_real_forward(b16_clip):
    tca.patch(b16_clip.model)
    with torch.inference_mode():
        r09 = tca.encode(b16_clip.model, _images(1), CondenseConfig(keep_rate=0.9))
        r07 = tca.encode(b16_clip.model, _images(1), CondenseConfig(keep_rate=0.7))
    assert [r09.tokens_per_layer[i] for i in (3, 6, 9)] == [180, 163, 149]
    assert [r07.tokens_per_layer[i] for i in (3, 6, 9)] == [141, 100, 74]


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(keep_rate=0.7),
        CondenseConfig(keep_rate=0.7, score="rank"),
        CondenseConfig(method="evit", keep_rate=0.6),
        CondenseConfig(method="tome", keep_rate=0.6),
    ],
)
def test_batched_equals_per_image(tiny_clip, config):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(4, seed=1)
    with torch.inference_mode():
        batch = tca.encode(model, x, config, trace=True, record_cls=True)
        for i in range(4):
            one = tca.encode(model, x[i : i + 1], config, trace=True, record_cls=True)
            torch.testing.assert_close(one.features[0], batch.features[i], rtol=0, atol=1e-5)
            torch.testing.assert_close(one.cls_tokens[0], batch.cls_tokens[i], rtol=0, atol=1e-4)
            assert torch.equal(one.trace.token_index[0], batch.trace.token_index[i])
            assert torch.equal(one.trace.fate[0], batch.trace.fate[i])


def test_deterministic(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(2, seed=3)
    config = CondenseConfig(keep_rate=0.6, merge_centers=3)
    with torch.inference_mode():
        a = tca.encode(model, x, config, trace=True)
        torch.manual_seed(123)  # the global RNG must not matter
        b = tca.encode(model, x, config, trace=True)
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.trace.token_index, b.trace.token_index)


def test_tracing_changes_nothing_but_adds_the_trace(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(2, seed=4)
    with torch.inference_mode():
        off = tca.encode(model, x, CondenseConfig(keep_rate=0.7))
        on = tca.encode(model, x, CondenseConfig(keep_rate=0.7), trace=True)
    assert off.trace is None and on.trace is not None
    assert torch.equal(off.features, on.features)


def test_domain_anchors_change_tca_only(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(2, seed=5)
    with torch.inference_mode():
        cls = tca.encode(model, x, CondenseConfig(method="none"), record_cls=True).cls_tokens
        anchors = torch.stack([cls[0], cls[1], -cls[0]])  # (C=3, L, D)
        plain = tca.encode(model, x, CondenseConfig(keep_rate=0.7))
        guided = tca.encode(model, x, CondenseConfig(keep_rate=0.7), anchors=anchors)
        evit = tca.encode(model, x, CondenseConfig(method="evit", keep_rate=0.7), anchors=anchors)
        evit_plain = tca.encode(model, x, CondenseConfig(method="evit", keep_rate=0.7))
    assert guided.anchors_used and not plain.anchors_used and not evit.anchors_used
    assert guided.tokens_per_layer == plain.tokens_per_layer
    assert not torch.allclose(guided.features, plain.features)
    assert torch.equal(evit.features, evit_plain.features)


def test_select_anchor_is_most_cosine_similar():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    cls = torch.tensor([[0.1, 5.0], [3.0, 0.2], [-1.0, -0.1]])
    assert torch.equal(select_anchor(anchors, cls), anchors[[1, 0, 2]])


def test_repatch_replaces_config_and_validates_against_model(tiny_clip):
    model = tiny_clip.model
    tca.patch(model, method="evit", keep_rate=0.5)
    assert model.visual._tca.config.method == "evit"
    tca.patch(model, method="tca", keep_rate=0.9)
    assert model.visual._tca.config.method == "tca"
    with pytest.raises(tca.ConfigError, match="out of range"):
        tca.patch(model, layers=(3, 30))
    with pytest.raises(ValueError, match="not patched"):
        m = open_clip.create_model("tca-tiny-ViT", pretrained=None)
        tca.encode(m, _images(1))


def test_towers_without_tokens_are_refused():
    resnet = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(UnsupportedModelError, match="ModifiedResNet vision tower is not supported"):
        tca.patch(resnet)


def test_concurrent_callers_never_see_each_others_settings(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(1, seed=6)
    configs = [
        CondenseConfig(keep_rate=0.5),
        CondenseConfig(method="tome", keep_rate=0.6),
        CondenseConfig(method="none"),
        CondenseConfig(method="evit", keep_rate=0.8),
    ]
    with torch.inference_mode():
        expected = [tca.encode(model, x, c, trace=True) for c in configs]
    errors: list[str] = []

    def worker(i: int) -> None:
        with torch.inference_mode():
            for _ in range(5):
                got = tca.encode(model, x, configs[i], trace=True)
                if got.tokens_per_layer != expected[i].tokens_per_layer or not torch.equal(
                    got.features, expected[i].features
                ):
                    errors.append(f"worker {i} got another caller's result")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_rank_score_changes_tca_but_not_evit(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(1, seed=12)
    with torch.inference_mode():

        def run(**kw):
            return tca.encode(
                model, x, CondenseConfig(keep_rate=0.6, **kw), trace=True
            ).trace.token_index

        assert not torch.equal(run(score="mean"), run(score="rank"))
        assert torch.equal(run(method="evit", score="mean"), run(method="evit", score="rank"))
