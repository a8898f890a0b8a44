"""ATS (Adaptive Token Sampling): the sampling maths on hand-made scores, per-image token counts
on a real (tiny, random) open_clip ViT, batched == one image at a time, trace and FLOPs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tca
from tca import condense
from tca.config import CondenseConfig, plan_layers
from tca.flops import Geometry, count_macs, macs_for, macs_per_image, mean_gmacs
from tca.trace import DROPPED, KEPT, MERGED, PRUNED

B16 = Geometry.from_name("ViT-B-16-quickgelu")


# ------------------------------------------------------------------------------ pure maths


def test_ats_score_is_cls_attention_times_value_norm_summed_over_heads_and_normalised():
    attn = torch.tensor([[[0.2, 0.5, 0.3, 0.0], [0.1, 0.1, 0.4, 0.4]]])  # (1, h=2, N=4)
    vnorm = torch.tensor([[[9.0, 1.0, 2.0, 5.0], [9.0, 3.0, 1.0, 1.0]]])
    # raw per patch: 0.5*1 + 0.1*3 = 0.8; 0.3*2 + 0.4*1 = 1.0; 0 + 0.4*1 = 0.4 (CLS excluded)
    score = condense.ats_score(attn, vnorm)
    torch.testing.assert_close(score, torch.tensor([[0.8, 1.0, 0.4]]) / 2.2)
    valid = torch.tensor([[True, True, True, False]])  # the last token is padding
    torch.testing.assert_close(
        condense.ats_score(attn, vnorm, valid), torch.tensor([[0.8, 1.0, 0.0]]) / 1.8
    )


def test_ats_budget_is_ceil_of_keep_rate_times_patches():
    n = torch.tensor([196, 140, 10, 1, 0])
    assert condense.ats_budget(n, 0.7).tolist() == [138, 98, 7, 1, 0]
    assert condense.ats_budget(n, 0.9).tolist() == [177, 126, 9, 1, 0]  # 0.9*140 is not 127
    assert condense.ats_budget(n, 1.0).tolist() == n.tolist()


@pytest.mark.parametrize(
    "score, budget, expected",
    [
        # sorted ascending 0.125/0.125/0.25/0.5 -> CDF .125 .25 .5 1; quantiles .125 .375 .625 .875
        ([0.5, 0.125, 0.25, 0.125], 4, [1, 2, 0, 0]),
        # uniform mass, one sample per stratum: every patch once
        ([0.25, 0.25, 0.25, 0.25], 4, [0, 1, 2, 3]),
        # two samples on uniform mass: quantiles .25 and .75 land on the first and third patch
        ([0.25, 0.25, 0.25, 0.25], 2, [0, 2]),
        # one dominant patch takes every quantile above its start
        ([0.03125, 0.90625, 0.03125, 0.03125], 4, [1, 1, 1, 1]),
        # a single sample: the median of the distribution
        ([0.125, 0.125, 0.625, 0.125], 1, [2]),
        # a quantile exactly on a CDF step belongs to the patch whose step reaches it
        ([0.125, 0.125, 0.5, 0.25], 1, [3]),
    ],
)
def test_inverse_cdf_sample_exact_indices(score, budget, expected):
    got = condense.inverse_cdf_sample(torch.tensor([score]), torch.tensor([budget]))
    assert got.tolist() == [expected]


def test_inverse_cdf_sample_batched_budgets_pad_with_minus_one():
    score = torch.tensor([[0.125, 0.125, 0.625, 0.125], [0.25, 0.25, 0.25, 0.25]])
    got = condense.inverse_cdf_sample(score, torch.tensor([1, 4]))
    assert got.tolist() == [[2, -1, -1, -1], [0, 1, 2, 3]]


def test_inverse_cdf_sample_never_picks_zero_mass_padding():
    score = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]])  # zeros: padding or irrelevant
    got = condense.inverse_cdf_sample(score, torch.tensor([4]))
    assert got.tolist() == [[1, 1, 3, 3]]


def test_unique_indices_collapses_duplicates():
    samples = torch.tensor([[1, 1, 3, 3], [0, 2, -1, -1]])
    keep = condense.unique_indices(samples, 5)
    assert keep.tolist() == [[False, True, False, True, False], [True, False, True, False, False]]


def test_keep_patches_packs_and_pads():
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    c = condense.keep_patches(x, keep)
    assert c.x.shape == (2, 4, 2)
    torch.testing.assert_close(c.x[0], x[0, [0, 1, 3, 4]])
    torch.testing.assert_close(c.x[1, :2], x[1, [0, 2]])
    assert (c.x[1, 2:] == 0).all()  # padding rows are zero
    assert c.valid.tolist() == [[True] * 4, [True, True, False, False]]
    assert c.dest.tolist() == [[0, 1, -1, 2, 3], [0, -1, 1, -1, -1]]
    assert c.pruned.tolist() == [
        [False, False, True, False, False],
        [False, True, False, True, True],
    ]


def test_keep_patches_respects_input_padding():
    x = torch.randn(1, 5, 3)
    valid = torch.tensor([[True, True, True, False, False]])
    keep = torch.tensor([[True, True, True, True]])  # padding cannot be kept
    c = condense.keep_patches(x, keep, valid)
    assert c.x.shape[1] == 3 and c.dest.tolist() == [[0, 1, 2, -1, -1]]
    assert c.pruned.tolist() == [[False] * 5]  # padding is not a pruned patch


@settings(max_examples=60, deadline=None)
@given(
    p=st.integers(1, 120),
    rate=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
    peak=st.floats(0.0, 8.0),
)
def test_sampled_counts_never_exceed_the_budget(p, rate, seed, peak):
    g = torch.Generator().manual_seed(seed)
    raw = (torch.randn(3, p, generator=g) * peak).exp()
    score = raw / raw.sum(-1, keepdim=True)
    budget = condense.ats_budget(torch.full((3,), p), rate)
    keep = condense.unique_indices(condense.inverse_cdf_sample(score, budget), p)
    counts = keep.sum(-1)
    assert (counts <= budget).all() and (counts >= 1).all()
    # a patch holding more than one stratum (1/K of the mass) contains a quantile: always kept
    assert keep[score > 1.0 / budget.unsqueeze(1)].all()
    # the sample count adapts: K samples land on K distinct patches only if no patch spans two
    spans_two = (score > 2.0 / budget.unsqueeze(1)).any(-1)
    assert (counts[spans_two] < budget[spans_two]).all()


# ------------------------------------------------------------------------------ schedule / FLOPs


def test_ats_schedule_is_the_budget_upper_bound():
    s = plan_layers(CondenseConfig(method="ats", keep_rate=0.7), 197, 12)
    assert s.adaptive
    assert [s.tokens[i] for i in (3, 6, 9)] == [139, 98, 69]  # 1 + ceil(0.7 (n - 1))
    assert [s.plans[i].budget for i in (3, 6, 9)] == [138, 97, 68]
    assert not plan_layers(CondenseConfig(method="evit"), 197, 12).adaptive


def test_flops_from_actual_counts():
    s = plan_layers(CondenseConfig(method="ats", keep_rate=0.9), B16.n_tokens, B16.depth)
    counts = [197] * 3 + [150] * 3 + [120] * 3 + [90] * 3
    (report,) = macs_per_image(B16, s, [counts])
    d = B16.width
    block = lambda n_in, n_out: 4 * n_in * d * d + 2 * n_in * n_in * d + 8 * n_out * d * d  # noqa: E731
    expected_blocks = sum(block(a, b) for a, b in zip([197] + counts[:-1], counts))
    assert report.blocks == expected_blocks
    assert report.overhead == sum(2 * n * d for n in (197, 150, 120))  # CLS row + value norms
    # the analytic budget bounds every realised count from above
    assert report.total < macs_for(B16, CondenseConfig(method="ats", keep_rate=0.9)).total
    other = count_macs(B16, s.realised([197] * 12))
    assert mean_gmacs([report, other]) == pytest.approx((report.gmacs + other.gmacs) / 2)
    with pytest.raises(ValueError):
        s.realised([197] * 11)


# ------------------------------------------------------------------------------ on a real ViT


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 224, 224, generator=g)
    # scale the images differently so their attention (and so their ATS counts) differ
    return x * torch.linspace(0.2, 3.0, n).view(n, 1, 1, 1)


@pytest.mark.parametrize("keep_rate", [0.9, 0.5])
def test_batched_equals_one_image_at_a_time(tiny_clip, keep_rate):
    model = tiny_clip.model
    tca.patch(model)
    cfg = CondenseConfig(method="ats", keep_rate=keep_rate)
    x = _images(4, 3)
    with torch.inference_mode():
        batch = tca.encode(model, x, cfg, trace=True, record_cls=True)
        singles = [
            tca.encode(model, x[i : i + 1], cfg, trace=True, record_cls=True) for i in range(len(x))
        ]
    counts = batch.tokens_per_image
    assert len({tuple(c) for c in counts}) > 1, "the test images must keep different counts"
    for i, one in enumerate(singles):
        assert one.tokens_per_image == [counts[i]]
        torch.testing.assert_close(batch.features[i], one.features[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.cls_tokens[i], one.cls_tokens[0], atol=1e-4, rtol=1e-5)
        assert torch.equal(batch.trace.token_index[i], one.trace.token_index[0])
        assert torch.equal(batch.trace.fate[i], one.trace.fate[0])
        assert batch.trace.tokens(i) == one.trace.tokens_per_layer == tuple(counts[i])
    # the padded width is the largest count
    assert batch.tokens_per_layer == [max(c[l] for c in counts) for l in range(12)]


def test_per_image_counts_within_budget_and_equal_before_the_first_layer(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    cfg = CondenseConfig(method="ats", keep_rate=0.7, layers=(2, 5, 8))
    with torch.inference_mode():
        enc = tca.encode(model, _images(3, 5), cfg)
    budget = enc.schedule.tokens
    for counts in enc.tokens_per_image:
        assert counts[:2] == [197, 197]
        assert all(n <= b for n, b in zip(counts, budget))
        assert all(a >= b for a, b in zip(counts, counts[1:]))  # never grows
        # constant between condensing layers
        assert counts[2] == counts[3] == counts[4] and counts[5] == counts[6] == counts[7]
        p = 196
        for layer in (2, 5, 8):  # each layer samples at most ceil(R (n - 1))
            assert counts[layer] - 1 <= math.ceil(0.7 * p - 1e-9)
            p = counts[layer] - 1


def test_trace_invariants_with_varying_counts(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    cfg = CondenseConfig(method="ats", keep_rate=0.6)
    with torch.inference_mode():
        enc = tca.encode(model, _images(3, 11), cfg, trace=True)
    trace = enc.trace
    assert trace.tokens_per_image == tuple(tuple(c) for c in enc.tokens_per_image)
    for image in range(3):
        counts = trace.tokens(image)
        for l in range(trace.depth):
            idx, fate = trace.token_index[image, l], trace.fate[image, l]
            held = idx != DROPPED
            n = counts[l]
            # ATS keeps or drops: nothing merged; a dropped patch is pruned, and only they are
            assert not (fate == MERGED).any()
            assert torch.equal(~held, fate == PRUNED)
            # every non-CLS token of this image holds exactly one patch
            assert sorted(idx[held].tolist()) == list(range(1, n))
            src = trace.source(l, image)
            assert src.shape == (n, 196) and (src.sum(0) == held.long()).all()
            if l > 0:
                prev = trace.fate[image, l - 1]
                assert not ((prev == PRUNED) & (fate != PRUNED)).any()
            assert trace.fate_counts(l, image) == {
                "kept": n - 1,
                "merged": 0,
                "pruned": 196 - (n - 1),
            }
        assert (trace.fate[image, :3] == KEPT).all()
        one = trace.select(image)
        assert one.tokens_per_layer == counts and one.to_dict()["layers"][9]["tokens"] == counts[9]
        for layer, att in trace.cls_attention.items():
            # attention is recorded for the patches still alive when the layer decided
            alive = trace.token_index[image, layer - 1] != DROPPED
            assert torch.isfinite(att[image][alive]).all() and torch.isnan(att[image][~alive]).all()


def test_render_draws_dropped_patches(tiny_clip):
    import numpy as np

    from tca import render

    model = tiny_clip.model
    tca.patch(model)
    with torch.inference_mode():
        enc = tca.encode(
            model, _images(1, 2), CondenseConfig(method="ats", keep_rate=0.5), trace=True
        )
    image = np.full((224, 224, 3), 200, dtype=np.uint8)
    out = render.fate_map(image, enc.trace, 11, attention=True)
    dropped = (enc.trace.token_index[0, 11] == DROPPED).view(14, 14).numpy()
    assert dropped.any()
    r, c = np.argwhere(dropped)[0]
    assert (out[r * 16 + 8, c * 16 + 8] != 200).any()  # darkened


def test_classify_reports_per_image_gmacs(tiny_clip, example_image):
    from tca.pipeline import classify

    config = CondenseConfig(method="ats", keep_rate=0.7)
    result = classify(tiny_clip, example_image, "cat,dog", config)
    geom = Geometry.from_model(tiny_clip.model)
    schedule = plan_layers(config, geom.n_tokens, geom.depth)
    assert (
        result.flops_condensed.total
        == count_macs(geom, schedule.realised(result.tokens_per_layer)).total
    )
    assert result.flops_condensed.total <= count_macs(geom, schedule).total
    assert result.trace.tokens_per_layer == tuple(result.tokens_per_layer)


def test_app_runs_ats_with_per_image_gmacs_and_dataset_prompts(tmp_path, example_image):
    import app as app_module
    from tca.app import export

    tiny_app = app_module.App("tca-tiny-ViT", "none", exports=export.ExportDir(tmp_path))
    assert ("ATS (adaptive sampling)", "ats") in app_module.METHOD_CHOICES
    assert "eurosat" in dict((v, k) for k, v in app_module.TEMPLATE_CHOICES)

    class _Progress:
        def __call__(self, frac, desc=None):
            pass

    summary, state, _ = tiny_app.classify(
        str(example_image),
        "forest, river, highway",
        progress=_Progress(),
        model="tca-tiny-ViT",
        method="ats",
        keep_rate=0.7,
        layers="3,6,9",
        merge_centers=2,
        score="mean",
        templates="eurosat",
        stream=False,
        stream_state=None,
    )
    counts = summary["tokens_per_layer"]
    geom = Geometry.from_model(tiny_app.cache.get("tca-tiny-ViT").clip.model)
    schedule = plan_layers(CondenseConfig(method="ats", keep_rate=0.7), geom.n_tokens, geom.depth)
    assert summary["gmacs"]["condensed"] == pytest.approx(
        count_macs(geom, schedule.realised(counts)).gmacs, rel=1e-12
    )
    assert all(n <= b for n, b in zip(counts, schedule.tokens))
    assert state.result.flops_condensed.gmacs == summary["gmacs"]["condensed"]  # cost panel source


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(method="ats", keep_rate=0.7),
        CondenseConfig(method="ats", keep_rate=0.9),
        CondenseConfig(method="tome-paper", keep_rate=0.7),
    ],
)
def test_flop_counter_agrees_with_per_image_count(b16_clip, config):
    """FlopCounterMode on the explicit-attention path against the analytic count from the
    image's own token counts."""
    from torch.utils.flop_counter import FlopCounterMode

    model = b16_clip.model
    tca.patch(model)
    x = _images(2, 8)[1:]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        enc = tca.encode(model, x, config, explicit_attention=True)
    (report,) = macs_per_image(Geometry.from_model(model), enc.schedule, enc.tokens_per_image)
    measured = counter.get_total_flops() / 2
    assert report.model <= measured <= report.total
    assert measured == pytest.approx(report.model, rel=1e-3)


def test_eval_mean_gmacs_over_per_image_counts_and_preset_templates(tiny_clip, tmp_path):
    import numpy as np
    from PIL import Image

    import tca.eval as ev

    rng = np.random.default_rng(0)
    for cls in ("forest", "river"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for j in range(3):
            scale = 0.2 + j  # different contrast -> different ATS counts
            arr = np.clip(128 + rng.normal(0, 60 * scale, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / cls / f"{j}.png")
    data, records = tmp_path / "data", tmp_path / "records"
    result = ev.evaluate(
        tiny_clip,
        ev.load_dataset(data),
        ("ats",),
        (0.9,),
        batch_size=3,
        preset="eurosat",
        num_workers=0,
        progress=False,
        records_dir=records,
        echo=lambda s: None,
    )
    assert result["options"]["templates"] == "eurosat"  # implied by the preset
    (entry,) = result["results"]
    (log,) = sorted(records.glob("*.jsonl"))
    per_image = [json.loads(line)["gmacs"] for line in log.read_text().splitlines()[1:]]
    assert len(per_image) == 6 and len(set(per_image)) > 1  # each image its own count
    assert entry["gmacs"] == pytest.approx(sum(per_image) / 6, rel=1e-12)
    assert entry["gmacs"] <= entry["gmacs_analytic"]  # the analytic figure is the budget
    assert (
        entry["gmacs"]
        < macs_for(Geometry.from_model(tiny_clip.model), CondenseConfig(method="none")).gmacs
    )
