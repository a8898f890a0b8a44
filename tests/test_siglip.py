"""SigLIP / SigLIP 2 and other timm towers (random init, offline): the same guarantees as for
open_clip's ViT — equivalence with nothing removed, bit-exact unpatch, token schedule, trace
invariants, FLOP counter agreement — plus the pool query that stands in for CLS, the text tower
through token ids, the offline tokenizer and the model's own logit scale and bias."""

from __future__ import annotations

import open_clip
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tca
from tca.config import CondenseConfig, plan_layers
from tca.errors import UnsupportedModelError, WeightsUnavailableError
from tca.flops import Geometry
from tca.models import ByteTokenizer, load_tokenizer
from tca.pipeline import prepare_image
from tca.plans import TierPlan
from tca.towers import TimmViT, tower_for
from tca.trace import KEPT, MERGED, PRUNED

SIGLIP2 = "ViT-B-16-SigLIP2"


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def siglip():
    clip = tca.load_model(SIGLIP2, pretrained="none", seed=0)
    clip.model.requires_grad_(False)
    return clip


def test_nothing_removed_equals_the_unpatched_tower_and_unpatch_is_bit_exact(siglip):
    model = siglip.model
    tca.unpatch(model)
    x = _images(2)
    with torch.inference_mode():
        ref = model.encode_image(x)
        tca.patch(model, method="tca", keep_rate=1.0)
        assert torch.equal(model.encode_image(x), ref)
        for config in [
            CondenseConfig(method="none"),
            CondenseConfig(method="evit", keep_rate=1.0),
            CondenseConfig(method="tome", keep_rate=1.0),
        ]:
            assert torch.equal(tca.encode(model, x, config).features, ref)
        explicit = tca.encode(model, x, CondenseConfig(method="none"), explicit_attention=True)
        torch.testing.assert_close(explicit.features, ref, rtol=0, atol=1e-5)
        # the condensing path with nothing removed: every block reorders its 196 tokens and
        # "merges" two tokens into K=2, ranked by the pool query
        tiny = tca.encode(model, x, CondenseConfig(rate=1e-4), trace=True)
        assert tiny.tokens_per_layer == [196] * 12
        torch.testing.assert_close(tiny.features, ref, rtol=0, atol=1e-5)
        tca.patch(model, keep_rate=0.7)
        condensed = model.encode_image(x)
        assert not torch.allclose(condensed, ref)
        tca.encode(
            model, x, CondenseConfig(method="tome", keep_rate=0.6), trace=True, record_cls=True
        )
        tca.unpatch(model)
        assert type(model.visual) is open_clip.timm_model.TimmModel
        assert torch.equal(model.encode_image(x), ref)


def test_no_cls_token_means_every_token_is_a_patch_in_the_schedule():
    schedule = plan_layers(CondenseConfig(keep_rate=0.7), 196, 12, prefix=0)
    assert schedule.prefix == 0 and schedule.n_patches == 196
    plan = schedule.plans[3]
    assert isinstance(plan, TierPlan) and plan.prefix == 0
    assert plan.t1 + plan.t2 + plan.t3 == plan.n_in == 196  # no index-0 exemption
    # the same tiers as a CLIP tower of 196 patches, one token fewer (no CLS) at every layer
    clip = plan_layers(CondenseConfig(keep_rate=0.7), 197, 12)
    assert [t + 1 for t in schedule.tokens] == list(clip.tokens)
    assert (clip.plans[3].t1, clip.plans[3].t2, clip.plans[3].t3) == (plan.t1, plan.t2, plan.t3)
    tome = plan_layers(CondenseConfig(method="tome", keep_rate=0.7), 196, 12, prefix=0)
    assert tome.plans[3].r == 58 and tome.tokens[3] == 138  # int(196 * 0.3); set A may all merge


@pytest.mark.parametrize(
    "config, after_3_6_9",
    [
        (CondenseConfig(keep_rate=0.9), [179, 162, 148]),
        (CondenseConfig(keep_rate=0.7), [140, 99, 73]),
        (CondenseConfig(method="evit", keep_rate=0.7), [139, 99, 71]),
        (CondenseConfig(method="tome", keep_rate=0.7), [138, 97, 68]),
    ],
)
def test_real_token_counts_follow_the_schedule(siglip, config, after_3_6_9):
    tca.patch(siglip.model)
    with torch.inference_mode():
        enc = tca.encode(siglip.model, _images(1), config)
    assert enc.tokens_per_layer == list(plan_layers(config, 196, 12, prefix=0).tokens)
    assert [enc.tokens_per_layer[i] for i in (3, 6, 9)] == after_3_6_9


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(keep_rate=0.6),
        CondenseConfig(keep_rate=0.7, score="rank", merge_centers=3),
        CondenseConfig(method="evit", keep_rate=0.6),
        CondenseConfig(method="tome", keep_rate=0.6),
    ],
)
def test_trace_invariants_without_cls(siglip, config):
    tca.patch(siglip.model)
    with torch.inference_mode():
        enc = tca.encode(siglip.model, _images(2, seed=2), config, trace=True)
    trace = enc.trace
    assert trace.prefix == 0 and trace.grid == (14, 14) and trace.token_index.shape == (2, 12, 196)
    for image in range(2):
        for l in range(12):
            idx, fate = trace.token_index[image, l], trace.fate[image, l]
            n = trace.tokens_per_layer[l]
            # no CLS: every token, index 0 included, holds at least one patch
            assert idx.min() >= 0 and idx.max() <= n - 1 and len(set(idx.tolist())) == n
            assert (trace.source(l, image).sum(0) == 1).all()
            kept = torch.nonzero(fate == KEPT).flatten()
            assert len(set(idx[kept].tolist())) == len(kept)
            if l < 3:
                assert (fate == KEPT).all()
            if l > 0:
                assert not ((trace.fate[image, l - 1] == PRUNED) & (fate != PRUNED)).any()
    if config.method == "evit":
        assert not (trace.fate == MERGED).any()
    if config.method == "tome":
        assert not (trace.fate == PRUNED).any()
    else:
        for att in trace.cls_attention.values():
            assert att.shape == (2, 196) and torch.isfinite(att).all()  # no NaN slot for a CLS


def test_batched_equals_per_image(siglip):
    tca.patch(siglip.model)
    x = _images(3, seed=3)
    for config in [CondenseConfig(keep_rate=0.7), CondenseConfig(method="tome", keep_rate=0.6)]:
        with torch.inference_mode():
            batch = tca.encode(siglip.model, x, config, trace=True, record_cls=True)
            for i in range(3):
                one = tca.encode(siglip.model, x[i : i + 1], config, trace=True, record_cls=True)
                torch.testing.assert_close(one.features[0], batch.features[i], rtol=0, atol=1e-5)
                torch.testing.assert_close(
                    one.cls_tokens[0], batch.cls_tokens[i], rtol=0, atol=1e-4
                )
                assert torch.equal(one.trace.token_index[0], batch.trace.token_index[i])


def test_pool_row_is_the_attention_pool_s_own_attention(siglip):
    """The folded query (W_k^T q) gives exactly the MAP head's attention probabilities."""
    visual = siglip.model.visual
    pool = visual.trunk.attn_pool
    x = torch.randn(2, 50, 768, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        row = TimmViT.pool_row(visual, x)
        normed = visual.trunk.norm(x)
        q = pool.q(pool.latent).reshape(1, pool.num_heads, 1, pool.head_dim)
        k = (
            pool.kv(normed)
            .reshape(2, 50, 2, pool.num_heads, pool.head_dim)[:, :, 0]
            .transpose(1, 2)
        )
        expected = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(-1).squeeze(2)  # (B, h, N)
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-6)
        pooled = TimmViT.pooled_token(visual, x)
        torch.testing.assert_close(
            pooled, (expected.mean(1).unsqueeze(-1) * x).sum(1), rtol=0, atol=1e-5
        )


def test_reservoir_keys_and_domain_anchors(siglip):
    model = siglip.model
    tca.patch(model)
    x = _images(2, seed=5)
    with torch.inference_mode():
        keys = tca.encode(model, x, CondenseConfig(method="none"), record_cls=True).cls_tokens
        assert keys.shape == (2, 12, 768) and keys.dtype == torch.float32
        anchors = torch.stack([keys[0], keys[1], -keys[0]])  # (C=3, L, D)
        plain = tca.encode(model, x, CondenseConfig(keep_rate=0.7))
        guided = tca.encode(model, x, CondenseConfig(keep_rate=0.7), anchors=anchors)
    assert guided.anchors_used and guided.tokens_per_layer == plain.tokens_per_layer
    assert not torch.allclose(guided.features, plain.features)


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(method="none"),
        CondenseConfig(keep_rate=0.7),
        CondenseConfig(method="evit", keep_rate=0.7),
        CondenseConfig(method="tome", keep_rate=0.7),
    ],
)
def test_flop_counter_agrees_with_analytic_count(siglip, config):
    model = siglip.model
    tca.patch(model)
    pool = model.visual.trunk.attn_pool
    pool.fused_attn = False  # CPU SDPA has no FLOP formula; timm's own switch to plain matmuls
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            enc = tca.encode(model, _images(1), config, explicit_attention=True)
    finally:
        pool.fused_attn = True
    geom = Geometry.from_model(model)
    assert geom == Geometry.from_name(SIGLIP2)
    assert (geom.prefix, geom.pool, geom.n_tokens, geom.proj) == (0, "map", 196, False)
    report = tca.count_macs(geom, enc.schedule)
    measured = counter.get_total_flops() / 2
    assert report.model <= measured <= report.total
    if config.method == "none":
        assert measured == report.model == 17_708_292_096
    assert measured == pytest.approx(report.model, rel=1e-3)


def test_timm_tower_with_cls_pooling_uses_the_cls_row():
    model = open_clip.create_model("tca-tiny-timm-token", pretrained=None).eval()
    assert tower_for(model) is TimmViT and TimmViT.signal(model.visual) == "cls"
    x = _images(1, seed=6)
    with torch.inference_mode():
        ref = model.encode_image(x)
        tca.patch(model, keep_rate=0.7)
        enc = tca.encode(model, x, trace=True)
        assert enc.tokens_per_layer == list(
            plan_layers(CondenseConfig(keep_rate=0.7), 197, 12).tokens
        )
        assert (enc.trace.token_index >= 1).all()  # CLS at 0 holds no patch
        explicit = tca.encode(model, x, CondenseConfig(method="none"), explicit_attention=True)
        torch.testing.assert_close(explicit.features, ref, rtol=0, atol=1e-5)
        tca.unpatch(model)
        assert torch.equal(model.encode_image(x), ref)


def test_timm_tower_without_pooling_signal_is_refused_with_the_reason():
    model = open_clip.create_model("tca-tiny-timm-avg", pretrained=None)
    with pytest.raises(UnsupportedModelError, match="no usable pooling signal.*global_pool='avg'"):
        tca.patch(model)
    with pytest.raises(UnsupportedModelError, match="no usable pooling signal"):
        Geometry.from_model(model)


def test_text_tower_through_token_ids(siglip):
    ids = torch.randint(1, 256000, (3, 64), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        text = siglip.model.encode_text(ids)
        again = siglip.model.encode_text(ids[1:2])
    assert text.shape == (3, 768) and torch.isfinite(text).all()
    torch.testing.assert_close(again[0], text[1], rtol=0, atol=1e-4)


def test_hub_tokenizer_offline_fails_fast_or_stands_in_for_random_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError) as info:
        load_tokenizer(SIGLIP2, random=False)
    hf_name = open_clip.get_model_config(SIGLIP2)["text_cfg"]["hf_tokenizer_name"]
    import importlib.util

    why = (
        "is not in the local cache and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
        if importlib.util.find_spec("transformers")
        else "needs the transformers package (pip install transformers)"
    )
    assert str(info.value).startswith(
        f"{SIGLIP2}'s tokenizer {hf_name} {why}. Connect to the internet once"
    )
    assert info.value.__cause__ is None  # the offline check, before any request: no retries
    tok = load_tokenizer(SIGLIP2, random=True)
    assert isinstance(tok, ByteTokenizer) and tok.context_length == 64
    ids = tok(["a photo of a cat.", "é"])
    assert ids.shape == (2, 64) and ids[0, :3].tolist() == [
        1 + ord("a"),
        1 + ord(" "),
        1 + ord("p"),
    ]
    assert ids[1, :2].tolist() == [1 + 0xC3, 1 + 0xA9] and ids[1, 2:].eq(0).all()
    # CLIP's BPE ships with open_clip: never a stand-in
    assert not isinstance(load_tokenizer("ViT-B-16", random=True), ByteTokenizer)


def test_pretrained_siglip_offline_is_weights_unavailable():
    with pytest.raises(WeightsUnavailableError, match="not in the local cache"):
        tca.load_model(SIGLIP2, pretrained="webli")


def test_classify_uses_the_model_s_logit_scale_and_bias(siglip, example_image):
    assert siglip.logit_bias == pytest.approx(-10.0) and siglip.tokenizer_note
    assert "stand-in tokenizer" in siglip.weights_description
    result = tca.classify(
        siglip, example_image, "cat,dog,car", CondenseConfig(keep_rate=0.7), trace=False
    )
    text = siglip.encode_text(result.labels)
    with torch.inference_mode():
        feats = tca.encode(
            siglip.model, prepare_image(siglip, example_image), CondenseConfig(keep_rate=0.7)
        ).features
    cos = torch.nn.functional.normalize(feats.float(), dim=-1) @ text.T
    expected = siglip.logit_scale * cos + siglip.logit_bias
    torch.testing.assert_close(
        torch.tensor(result.condensed.logits), expected[0], rtol=0, atol=1e-4
    )
    assert sum(result.condensed.probs) == pytest.approx(1.0)


def test_cli_predict_siglip2_random_weights_offline(capsys, example_image, monkeypatch):
    from tca.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        [
            "predict",
            str(example_image),
            "--labels",
            "cat,dog,car",
            "--model",
            SIGLIP2,
            "--pretrained",
            "none",
            "--keep-rate",
            "0.7",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    import json

    data = json.loads(out)
    assert [data["tokens_per_layer"][i] for i in (3, 6, 9)] == [140, 99, 73]
    assert "stand-in tokenizer" in data["model"] and data["random_weights"]
    assert data["gmacs"]["baseline"] == pytest.approx(17.708, abs=1e-3)
