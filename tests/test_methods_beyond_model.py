"""PiToMe, ToFu, Zero-TPrune and Representation Shift on real (tiny, random) towers: token
schedules and GMACs on ViT-B/16, forwards against an independent computation with open_clip's
own modules, trace fates, batched == one image at a time, towers without CLS, FLOP counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tca
from tca import beyond
from tca.config import CondenseConfig, plan_layers
from tca.flops import Geometry, count_macs, macs_for
from tca.trace import DROPPED, KEPT, PRUNED

B16 = Geometry.from_name("ViT-B-16-quickgelu")
NEW = ("pitome", "tofu", "zero-tprune", "repshift")


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize(
    "method, keep_rate, after_3_6_9",
    [
        ("pitome", 0.9, [178, 161, 145]),
        ("pitome", 0.7, [138, 97, 68]),
        ("tofu", 0.9, [178, 161, 145]),
        ("tofu", 0.7, [138, 97, 68]),
        ("zero-tprune", 0.9, [178, 161, 145]),
        ("zero-tprune", 0.7, [138, 97, 68]),
        # ceil(R P) patches + CLS: 0.9 -> 177/160/144 patches, 0.7 -> 138/97/68
        ("repshift", 0.9, [178, 161, 145]),
        ("repshift", 0.7, [139, 98, 69]),
    ],
)
def test_vit_b16_schedules(method, keep_rate, after_3_6_9):
    s = plan_layers(CondenseConfig(method=method, keep_rate=keep_rate), 197, 12)
    assert [s.tokens[i] for i in (3, 6, 9)] == after_3_6_9
    assert [i for i, p in enumerate(s.plans) if p] == [3, 6, 9]
    assert s.tokens[:3] == (197,) * 3 and s.tokens[9:] == (after_3_6_9[2],) * 3
    assert not s.adaptive


def test_plans_exactly():
    s = plan_layers(CondenseConfig(method="pitome", keep_rate=0.7), 197, 12)
    assert [(p.r, p.n_in, p.n_out) for p in s.plans if p] == [
        (59, 197, 138),
        (41, 138, 97),
        (29, 97, 68),
    ]
    assert [p.margin for p in s.plans if p] == pytest.approx([0.675, 0.45, 0.225])
    s = plan_layers(CondenseConfig(method="tofu", keep_rate=0.7), 197, 12)
    assert [p.prune for p in s.plans if p] == [True, False, False]  # block 3 < 12 // 2
    s = plan_layers(CondenseConfig(method="tofu", keep_rate=0.7, layers=(5, 6)), 197, 12)
    assert [p.prune for p in s.plans if p] == [True, False]
    s = plan_layers(CondenseConfig(method="zero-tprune", keep_rate=0.7), 197, 12)
    assert [p.r for p in s.plans if p] == [59, 41, 29]
    s = plan_layers(CondenseConfig(method="repshift", keep_rate=0.7), 197, 12)
    assert [(p.n_drop, p.n_out) for p in s.plans if p] == [(58, 139), (41, 98), (29, 69)]
    # without CLS: P = N, the same removals as with CLS on the same patch count
    s = plan_layers(CondenseConfig(method="pitome", keep_rate=0.7), 196, 12, prefix=0)
    assert [p.r for p in s.plans if p] == [58, 41, 29] and s.plans[3].prefix == 0
    s = plan_layers(CondenseConfig(method="repshift", keep_rate=0.7), 196, 12, prefix=0)
    assert [s.tokens[i] for i in (3, 6, 9)] == [138, 97, 68]
    # R = 1 removes nothing; a tiny R is capped at half the patches per block (pairs / halves)
    assert (
        plan_layers(CondenseConfig(method="pitome", keep_rate=1.0), 197, 12).tokens == (197,) * 12
    )
    s = plan_layers(CondenseConfig(method="zero-tprune", keep_rate=0.01), 197, 12)
    assert [s.tokens[i] for i in (3, 6, 9)] == [99, 50, 26]


@pytest.mark.parametrize(
    "method, keep_rate, gmacs",
    [
        ("pitome", 0.9, 15.27379616),
        ("pitome", 0.7, 11.425520192),
        ("tofu", 0.9, 15.269580736),
        ("tofu", 0.7, 11.422502592),
        ("zero-tprune", 0.9, 15.280377616),
        ("zero-tprune", 0.7, 11.430072592),
        ("repshift", 0.9, 15.26769408),
        ("repshift", 0.7, 11.4852096),
    ],
)
def test_vit_b16_gmacs_exactly(method, keep_rate, gmacs):
    report = macs_for(B16, CondenseConfig(method=method, keep_rate=keep_rate))
    assert report.gmacs == pytest.approx(gmacs, abs=1e-9)


def test_overhead_per_block_by_hand():
    d, h = B16.width, B16.heads
    dh = d // h

    def overhead(method, keep_rate=0.7):
        r = macs_for(B16, CondenseConfig(method=method, keep_rate=keep_rate))
        return [r.layers[i].overhead for i in (3, 6, 9)]

    # PiToMe: the P x P cosine matrix on d_h-wide keys + the weighted merge
    assert overhead("pitome") == [p * p * dh + n * d for n, p in ((197, 196), (138, 137), (97, 96))]
    # ToFu: ToMe's matching; block 3 prunes (nothing else), 6 and 9 merge (sum + norms)
    m = lambda n: ((n + 1) // 2) * (n // 2) * dh  # noqa: E731
    assert overhead("tofu") == [m(197), m(138) + 2 * 138 * d + 97 * d, m(97) + 2 * 97 * d + 68 * d]
    # Zero-TPrune: 10 PageRank iterations per head on N x N, half against half on the keys
    z = lambda n, p: 10 * h * n * n + (p // 2) * (p - p // 2) * dh  # noqa: E731
    assert overhead("zero-tprune") == [z(197, 196), z(138, 137), z(97, 96)]
    assert overhead("repshift") == [197 * d, 139 * d, 98 * d]
    assert all(
        l.overhead == 0
        for i, l in enumerate(macs_for(B16, CondenseConfig(method="repshift")).layers)
        if i not in (3, 6, 9)
    )


# ------------------------------------------------------------------------------ forwards


def _block_input(model, x, index):
    seen = {}
    block = model.visual.transformer.resblocks[index]
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        tca.encode(model, x, CondenseConfig(method="none"))
    finally:
        handle.remove()
    return seen["x"]


def _attention(block, h, size=None):
    """open_clip's attention on h with the block's own module; proportional attention through
    its float mask. Returns (output, head-mean keys (B, N, d_h), probabilities (B, h, N, N))."""
    attn = block.attn
    b, n, d = h.shape
    heads = attn.num_heads
    y = block.ln_1(h)
    mask = None
    if size is not None:
        mask = size.log()[:, None, None, :].expand(b, heads, n, n).reshape(b * heads, n, n)
    out, probs = attn(y, y, y, need_weights=True, average_attn_weights=False, attn_mask=mask)
    k = F.linear(y, attn.in_proj_weight[d : 2 * d], attn.in_proj_bias[d : 2 * d])
    keys = k.view(b, n, heads, d // heads).mean(dim=2)
    return out, keys, probs


def _hand_forward(model, x, layer, condense_step, proportional):
    """Blocks before ``layer`` by open_clip; at ``layer``: attention, residual, the condensing
    step (given the tokens, keys, probabilities and the attention update), MLP; after it the
    blocks again by hand (with proportional attention where asked)."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    h = _block_input(model, x, layer)
    out, keys, probs = _attention(blocks[layer], h)
    update = blocks[layer].ls_1(out)
    c = condense_step(h + update, keys, probs, beyond.representation_shift(h, h + update))
    h = c.x
    size = c.size if proportional else None
    h = h + blocks[layer].ls_2(blocks[layer].mlp(blocks[layer].ln_2(h)))
    for block in blocks[layer + 1 :]:
        if size is None:
            h = block(h)
        else:
            h = h + block.ls_1(_attention(block, h, size)[0])
            h = h + block.ls_2(block.mlp(block.ln_2(h)))
    return visual.ln_post(h[:, 0]) @ visual.proj


STEPS = {
    "pitome": (
        lambda h, keys, probs, shift: beyond.pitome_merge(
            h, h.new_ones(h.shape[:2]), keys, 59, beyond.pitome_margin(9, 12)
        ),
        True,
    ),
    "tofu": (
        lambda h, keys, probs, shift: beyond.tofu_merge(h, h.new_ones(h.shape[:2]), keys, 59),
        True,
    ),
    "zero-tprune": (
        lambda h, keys, probs, shift: beyond.zero_tprune_prune(h, probs, keys, 59),
        False,
    ),
    "repshift": (lambda h, keys, probs, shift: beyond.repshift_prune(h, shift, 58), False),
}


@pytest.mark.parametrize("method", NEW)
def test_forward_equals_a_computation_with_open_clip_modules(tiny_clip, method):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(2, 4)
    config = CondenseConfig(method=method, keep_rate=0.7, layers=(9,))
    with torch.inference_mode():
        got = tca.encode(model, x, config)
        step, proportional = STEPS[method]
        want = _hand_forward(model, x, 9, step, proportional)
        plain = tca.encode(model, x, CondenseConfig(method="none")).features
    assert got.tokens_per_layer[8:] == [197] + [138 if method != "repshift" else 139] * 3
    torch.testing.assert_close(got.features, want, atol=1e-5, rtol=1e-5)
    assert (got.features - plain).abs().max() > 1e-4  # condensing changed the features


def test_tofu_prunes_early_with_open_clip_modules(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(1, 6)
    config = CondenseConfig(method="tofu", keep_rate=0.7, layers=(5,))
    with torch.inference_mode():
        got = tca.encode(model, x, config)
        want = _hand_forward(
            model,
            x,
            5,
            lambda h, keys, probs, shift: beyond.tofu_prune(h, h.new_ones(h.shape[:2]), keys, 59),
            True,
        )
    torch.testing.assert_close(got.features, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_batched_equals_one_image_at_a_time(tiny_clip, method):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(3, 7)
    cfg = CondenseConfig(method=method, keep_rate=0.6)
    with torch.inference_mode():
        batch = tca.encode(model, x, cfg, trace=True)
        for i in range(3):
            one = tca.encode(model, x[i : i + 1], cfg, trace=True)
            torch.testing.assert_close(batch.features[i], one.features[0], atol=1e-5, rtol=1e-5)
            assert torch.equal(batch.trace.token_index[i], one.trace.token_index[0])


# ------------------------------------------------------------------------------ trace


@pytest.mark.parametrize("method", NEW)
def test_trace_fates_and_scores(tiny_clip, method):
    model = tiny_clip.model
    tca.patch(model)
    cfg = CondenseConfig(method=method, keep_rate=0.7)
    with torch.inference_mode():
        enc = tca.encode(model, _images(1, 9), cfg, trace=True)
    trace, schedule = enc.trace, enc.schedule
    assert enc.tokens_per_layer == list(schedule.tokens)
    pruned_before = 0
    for layer in (3, 6, 9):
        plan = schedule.plans[layer]
        counts = trace.fate_counts(layer)
        n = trace.tokens_per_layer[layer]
        removed = plan.n_in - plan.n_out
        drops = method in ("zero-tprune", "repshift") or (method == "tofu" and plan.prune)
        if drops:  # dropped patches: no token holds them, they are pruned, and only they
            assert counts["pruned"] == pruned_before + removed
            idx = trace.token_index[0, layer]
            assert torch.equal(idx == DROPPED, trace.fate[0, layer] == PRUNED)
        else:
            assert counts["pruned"] == pruned_before
        assert counts["kept"] + counts["merged"] + counts["pruned"] == 196
        if method in ("zero-tprune", "repshift"):
            assert counts["merged"] == 0 and counts["kept"] == n - 1
        pruned_before = counts["pruned"]
        held = trace.token_index[0, layer]
        assert sorted(set(held[held >= 0].tolist())) == list(range(1, n))  # every token holds one
        score = trace.scores[layer][0]
        alive = trace.token_index[0, layer - 1] != DROPPED
        assert torch.isfinite(score[alive]).all() and torch.isnan(score[~alive]).all()
    if method == "pitome":  # merged groups of the first block: the A and B tokens, 2r at most
        r = schedule.plans[3].r
        assert r + 1 <= trace.fate_counts(3)["merged"] <= 2 * r
        assert (trace.fate[0, 3] != PRUNED).all()
    if method == "tofu":
        assert trace.fate_counts(3)["merged"] == 0 and trace.fate_counts(6)["merged"] > 0
    assert sorted(trace.scores) == [3, 6, 9]
    assert trace.cls_attention == {}


def test_repshift_score_is_the_attention_update_norm(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = _images(1, 12)
    with torch.inference_mode():
        enc = tca.encode(
            model, x, CondenseConfig(method="repshift", keep_rate=0.7, layers=(4,)), trace=True
        )
        block = model.visual.transformer.resblocks[4]
        h = _block_input(model, x, 4)
        want = block.ls_1(_attention(block, h)[0]).norm(dim=-1)[:, 1:]
    torch.testing.assert_close(enc.trace.scores[4], want, atol=1e-5, rtol=1e-5)
    kept = enc.trace.fate[0, 4] == KEPT
    # the kept patches are exactly the 138 with the largest shift
    assert set(kept.nonzero().flatten().tolist()) == set(want[0].topk(138).indices.tolist())


# ------------------------------------------------------------------------------ towers / FLOPs


@pytest.fixture(scope="module")
def siglip():
    clip = tca.load_model("ViT-B-16-SigLIP2", pretrained="none", seed=0)
    clip.model.requires_grad_(False)
    return clip


def test_towers_without_cls_condense_every_token(siglip):
    model = siglip.model
    tca.patch(model)
    x = _images(1, 2)
    with torch.inference_mode():
        for method in NEW:
            cfg = CondenseConfig(method=method, keep_rate=0.7)
            enc = tca.encode(model, x, cfg, trace=True)
            want = plan_layers(cfg, 196, 12, prefix=0).tokens
            assert enc.tokens_per_layer == list(want), method
            assert enc.trace.prefix == 0 and torch.isfinite(enc.features).all()
            n9 = want[9]
            held = enc.trace.token_index[0, 9]
            assert sorted(set(held[held >= 0].tolist())) == list(range(n9)), method


@pytest.mark.parametrize("method", NEW)
def test_flop_counter_agrees_with_the_analytic_count(b16_clip, method):
    from torch.utils.flop_counter import FlopCounterMode

    model = b16_clip.model
    tca.patch(model)
    counter = FlopCounterMode(display=False)
    config = CondenseConfig(method=method, keep_rate=0.7)
    with torch.no_grad(), counter:
        enc = tca.encode(model, _images(1, 8), config, explicit_attention=True)
    report = count_macs(Geometry.from_model(model), enc.schedule)
    measured = counter.get_total_flops() / 2
    assert report.model <= measured <= report.total


# ------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "method, after_3_6_9",
    [
        ("pitome", [138, 97, 68]),
        ("tofu", [138, 97, 68]),
        ("zero-tprune", [138, 97, 68]),
        ("repshift", [139, 98, 69]),
    ],
)
def test_cli_predict_and_flops(capsys, monkeypatch, example_image, method, after_3_6_9):
    import json

    from tca.cli import main

    from .conftest import HERE, TINY

    monkeypatch.setenv("TCA_MODEL_CONFIGS", str(HERE / "model_configs"))
    code = main(
        [
            "predict",
            str(example_image),
            "--labels",
            "cat,dog",
            "--model",
            TINY,
            "--pretrained",
            "none",
            "--method",
            method,
            "--keep-rate",
            "0.7",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    assert [d["tokens_per_layer"][i] for i in (3, 6, 9)] == after_3_6_9
    assert d["settings"]["method"] == method
    code = main(
        ["flops", "--method", method, "--keep-rate", "0.7", "--model", "ViT-B-16", "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    want = macs_for(B16, CondenseConfig(method=method, keep_rate=0.7))
    assert d["gmacs"]["condensed"] == pytest.approx(want.gmacs, abs=1e-9)
    assert [d["tokens_per_layer"][i] for i in (3, 6, 9)] == after_3_6_9
