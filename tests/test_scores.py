"""Score maps and high-norm tokens (issue 17 items 2, issue 16 item 8's score map): every method's
ranking score recorded in the one traced pass, drawn with a colour bar that names it, consistent
with the fates the method gave; high-norm ("register-like") tokens flagged by the stated rule and
their fates reported as the trace has them. Real (tiny, random) open_clip towers throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import app as app_module
import tca
from tca import charts, norms, render, why
from tca.app import export, page, panels
from tca.config import CondenseConfig
from tca.methods import METHODS
from tca.trace import DROPPED

TINY = "tca-tiny-ViT"
RANKING = [name for name, m in METHODS.items() if m.score is not None]


@pytest.fixture(scope="module")
def score_app(tmp_path_factory) -> app_module.App:
    app = app_module.App(TINY, "none", exports=export.ExportDir(tmp_path_factory.mktemp("exports")))
    app_module.build_demo(TINY, "none", app=app)
    return app


def _explore(app, image, method: str, **kw):
    settings = dict(
        model=TINY,
        method=method,
        keep_rate=0.7,
        layers="3,6,9",
        merge_centers=2,
        score="mean",
        templates="single",
    )
    settings.update(kw)
    _, shown, _ = app.classify(
        image, "cat, dog, tiger", **settings, stream=False, stream_state=None, progress=_quiet
    )
    return shown


def _quiet(frac, desc=None):
    pass


def _encode(clip, cfg: CondenseConfig, seed: int = 3, hooks=()):
    model = clip.model
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    tca.patch(model, CondenseConfig(method="none"))
    handles = [model.visual.transformer.resblocks[b].register_forward_hook(h) for b, h in hooks]
    try:
        with torch.no_grad():
            return tca.encode(model, images, cfg, trace=True)
    finally:
        for h in handles:
            h.remove()
        tca.unpatch(model)


# --------------------------------------------------------------------------- the score map


def test_every_ranking_method_names_its_score():
    assert RANKING == [n for n in METHODS if n != "none"]
    names = {n: METHODS[n].score.name for n in RANKING}
    assert names["tca"] == names["evit"] == "CLS attention (mean over heads)"
    assert names["pitome"].startswith("energy") and names["repshift"].startswith("representation")
    assert names["zero-tprune"].startswith("PageRank") and names["ats"].startswith("significance")
    assert names["tome"] == names["tofu"] == "best key similarity to the other set (cosine)"
    assert names["tome-paper"] == "best attention-row similarity to the other set (cosine)"
    rank = METHODS["tca"].ranked_by(CondenseConfig(score="rank"))
    assert rank is not None and rank.name.startswith("cross-head rank")
    assert (
        METHODS["evit"].ranked_by(CondenseConfig(method="evit", score="rank")).name == names["evit"]
    )
    assert METHODS["ats"].score.removes is None
    assert {METHODS[n].score.removes for n in ("tome", "tome-paper", "tofu", "pitome")} == {"high"}
    assert {METHODS[n].score.removes for n in ("tca", "evit", "zero-tprune", "repshift")} == {"low"}


@pytest.mark.parametrize("method", RANKING)
def test_score_map_draws_the_traced_scores(score_app, example_image, method):
    """At every condensing block the score map's values are the trace's scores, bit for bit;
    the map's colours are those values on the colour bar's scale; the colour bar names the
    method's score; plain blocks after it show the latest ranking."""
    shown = _explore(score_app, str(example_image), method)
    trace = shown.trace
    score = METHODS[method].score
    assert sorted(trace.scores) == [3, 6, 9]
    for layer in range(trace.depth):
        src = why.score_layer(trace, layer)
        html = panels.score_scale_html(shown, layer)
        if layer < 3:
            assert src is None and "no block has ranked the tokens yet" in html
            continue
        assert src == max(l for l in (3, 6, 9) if l <= layer)
        values = why.score_grid(trace, src)
        want = trace.scores[src][0].numpy().astype(np.float64).reshape(trace.grid)
        assert np.array_equal(values, want, equal_nan=True)
        assert f"<b class='cb-label'>{score.name}</b> at block {src}" in html
        lo, hi = np.nanmin(want), np.nanmax(want)
        digits = panels.scale_digits(lo, hi)
        assert f"<span class='cb-lo'>{charts.significant(lo, digits)}</span>" in html
        assert f"<span class='cb-hi'>{charts.significant(hi, digits)}</span>" in html
        assert charts.significant(lo, digits) != charts.significant(hi, digits)
        drawn = render.fate_map(shown.seen, trace, layer, view="score")
        assert np.array_equal(drawn, render.score_picture(shown.seen, values))
    # the highest score's patch wears the bar's top colour, the lowest its bottom one
    values = why.score_grid(trace, 9)
    pic = render.score_picture(shown.seen, values)
    lut = render._colormap_lut(render.SCORE_CMAP)
    gray = render._gray(shown.seen)
    ph = shown.seen.shape[0] // trace.grid[0]
    for which, colour in ((np.nanargmax(values), lut[255]), (np.nanargmin(values), lut[0])):
        r, c = divmod(int(which), trace.grid[1])
        y, x = r * ph, c * ph
        g = round(float(gray[y, x]))
        want_px = np.round(g * (1 - render.SCORE_OPACITY) + colour * render.SCORE_OPACITY)
        assert pic[y, x].tolist() == want_px.astype(np.uint8).tolist()
    # patches dropped before the block have no score: drawn as pruned (grey, white stripes)
    if np.isnan(values).any():
        r, c = divmod(int(np.flatnonzero(np.isnan(values))[0]), trace.grid[1])
        box = pic[r * ph : (r + 1) * ph, c * ph : (c + 1) * ph]
        assert (box == render.PRUNED_HATCH).all(axis=-1).any()


def test_colour_bar_ends_read_apart():
    assert panels.scale_digits(0.00346, 0.0153) == 3
    assert panels.scale_digits(2.9461, 2.9539) == 4  # 2.946 ... 2.954, not 2.95 ... 2.95
    assert panels.scale_digits(1.0, 1.0) == 7  # equal ends stay equal: the most digits


def _by_outcome(trace, layer):
    scores = why.token_scores(trace, layer)
    done = np.asarray(why.outcomes(trace, layer))
    return scores, done


@pytest.mark.parametrize("method", RANKING)
@pytest.mark.parametrize("keep_rate", [0.6, 0.8])
def test_cut_offs_agree_with_the_scores(tiny_clip, method, keep_rate):
    """What each method removed sits at the end of its score that ``Score.removes`` names, at
    every condensing block, as the trace recorded both."""
    cfg = CondenseConfig(method=method, keep_rate=keep_rate, merge_centers=2)
    enc = _encode(tiny_clip, cfg)
    trace = enc.trace
    removes = METHODS[method].score.removes
    for layer in trace.condensing_layers:
        plan = enc.schedule.plans[layer]
        s, done = _by_outcome(trace, layer)
        gone = (done == why.DROP) | (done == why.FUSE)
        if method in ("tca", "evit", "repshift"):  # a strict cut: every kept >= every removed
            assert removes == "low" and gone.any()
            assert s[~gone].min() >= s[gone].max()
            if method == "tca":  # merged tokens are tier 2: below the t1 kept ones
                top_t1 = np.sort(s)[::-1][plan.t1 - 1]
                assert (s[done == why.MERGE] <= top_t1).all()
        elif method == "zero-tprune":  # only the less important half can be dropped
            order = np.argsort(-s, kind="stable")
            n_imp = len(s) - len(s) // 2
            assert set(np.flatnonzero(gone)) <= set(order[n_imp:].tolist())
            assert gone.sum() == plan.r and s[order[:n_imp]].min() >= s[gone].max()
        elif method == "pitome":  # the 2r highest energies are paired, the rest protected
            order = np.argsort(-s, kind="stable")
            top = set(order[: 2 * plan.r].tolist())
            merged = set(np.flatnonzero(done == why.MERGE).tolist())
            assert merged <= top and len(merged) >= plan.r + 1
            assert all(done[t] == why.KEEP for t in order[2 * plan.r :])
        elif method in ("tome", "tome-paper", "tofu"):  # set A (even positions) ranks
            is_a = (np.arange(len(s)) + trace.prefix) % 2 == 0
            a_gone = is_a & ((done == why.DROP) | (done == why.MERGE))
            a_kept = is_a & (done == why.KEEP)
            assert a_gone.sum() == plan.r and a_kept.any()
            assert s[a_gone].min() >= s[a_kept].max()
            assert not (~is_a & (done == why.DROP)).any()  # B tokens are never removed
        else:  # ATS samples its score's CDF: no cut-off, the shares of the image sum to 1
            assert method == "ats" and removes is None
            assert math.isclose(float(np.nansum(s)), 1.0, rel_tol=1e-5)


def test_why_this_patch_ranks_by_the_map_score(tiny_clip):
    """The "why this patch?" chart reads the same recorded score as the map, under the same name."""
    for method in ("pitome", "zero-tprune", "repshift", "tome"):
        cfg = CondenseConfig(method=method, keep_rate=0.7)
        trace = _encode(tiny_clip, cfg).trace
        rankings, places = why.why_patch(trace, cfg, 20)
        assert [r.layer for r in rankings] == [3, 6, 9]
        for r, place in zip(rankings, places):
            assert r.score_name == METHODS[method].score.name
            per_patch = trace.scores[r.layer][0].numpy().astype(np.float64)
            tok = why.entering_tokens(trace, r.layer)
            alive = tok >= 0
            assert np.array_equal(r.scores[tok[alive]], per_patch[alive])
            if place is not None:
                assert place.score == float(why.score_grid(trace, r.layer).flat[20])


def test_score_view_is_a_page_choice(score_app, example_image):
    shown = _explore(score_app, str(example_image), "pitome")
    assert ("score the method ranks by (colour scale)", "score") in page.VIEW_CHOICES
    out = score_app.change_view(shown, 6, "score", False, 0.5, None)
    named = {n: out[c] for n, c in score_app.ui.items() if c in out}
    assert set(named) == {"map", "strip", "info"}
    assert np.array_equal(named["map"]["value"], page.map_image(shown, page.Display(6, "score")))
    assert (
        "<b class='cb-label'>energy (mean ELU of key similarity minus margin)</b> at block 6"
        in named["info"]["value"]
    )
    tile = render.shrink(shown.seen, shown.trace.grid, page.STRIP_SHRINK)
    assert np.array_equal(
        named["strip"]["value"][6][0], render.fate_map(tile, shown.trace, 6, view="score")
    )


# --------------------------------------------------------------------------- high-norm tokens


def test_the_rule_by_hand():
    nan = float("nan")
    # all alike (MAD 0): only twice the median counts; padding (NaN) is no token
    t = norms.high_norm_threshold(torch.tensor([[1.0, 1.0, 1.0, 1.04, 1.0, 10.0, nan]]))
    assert t.tolist() == [2.0]
    # a wide spread: median 12, MAD 4 -> 12 + 6 * 4 = 36 beats 2 * 12
    t = norms.high_norm_threshold(torch.tensor([[6.0, 8.0, 10.0, 12.0, 14.0, 40.0, 50.0]]))
    assert t.tolist() == [36.0]
    assert norms.RULE.startswith("norm > max(2 \u00d7 median, median + 6 \u00d7 MAD)")


def _blow_up(position: int, factor: float = 10.0):
    """A forward hook scaling one token of a block's output: the next block's input then holds
    one token whose norm is ``factor`` times what it was."""

    def hook(module, args, out):
        out = out.clone()
        out[:, position] *= factor
        return out

    return hook


# The block whose output is edited: its next block condenses. After ToMe-style merging, blocks
# run from their weights (proportional attention), where a module hook would not fire, so the
# merging methods are edited before their first condensing block.
FORCED = [("tca", 5), ("evit", 5), ("repshift", 5), ("ats", 5), ("pitome", 2), ("tome", 2)]


@pytest.mark.parametrize("method, block", FORCED)
def test_a_forced_high_norm_token_is_flagged_and_its_fate_reported(tiny_clip, method, block):
    """The output token 7 of ``block`` scaled tenfold: the next (condensing) block flags exactly
    the patches that token holds, and the reported fate is what the trace did to it."""
    cfg = CondenseConfig(method=method, keep_rate=0.7, merge_centers=2)
    plain = _encode(tiny_clip, cfg).trace
    trace = _encode(tiny_clip, cfg, hooks=[(block, _blow_up(7))]).trace
    nxt = block + 1
    assert nxt in trace.condensing_layers
    held = (trace.token_index[0, block] == 7).numpy()
    assert held.sum() >= 1
    for layer in range(trace.depth):
        flags = trace.high_norm(layer).numpy()
        if layer == nxt:
            assert np.array_equal(flags, held)
        elif layer < nxt:
            assert not flags.any() and not plain.high_norm(layer).numpy().any()
    # the recorded norm is the token's own: ten times the untouched run's
    ratio = trace.token_norm[0, nxt][held] / plain.token_norm[0, nxt][held]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 10.0), rtol=1e-4, atol=0)
    hn = why.high_norm_tokens(trace, nxt)
    assert hn.tokens == (7 - trace.prefix,) and hn.patches == int(held.sum())
    assert hn.outcome == (why.outcomes(trace, nxt)[7 - trace.prefix],)
    fate = hn.outcome[0]
    assert panels.high_norm_line(trace, nxt).endswith(
        f"**1 high-norm token entered block {nxt}: 1 {fate}** ({hn.patches} patch"
        f"{'es' if hn.patches != 1 else ''} marked; {norms.RULE}, here "
        f"{charts.significant(hn.threshold, 3)})."
    )
    assert panels.high_norm_line(trace, block) == f"High-norm tokens entering block {block}: none."
    # token 7 holds one patch here, whose fate in the trace is the one reported
    assert held.sum() == 1
    code = {why.KEEP: 0, why.MERGE: 1, why.FUSE: 2, why.DROP: 2}[fate]
    assert trace.fate[0, nxt].numpy()[held].tolist() == [code]
    assert (fate == why.DROP) == bool((trace.token_index[0, nxt][held] == DROPPED).all())


def test_several_high_norm_tokens_counted_by_fate(tiny_clip):
    """Three tokens forced high at block 6's input: the line counts them by what the block did,
    as the trace has it, in the outcomes' order."""
    cfg = CondenseConfig(method="tca", keep_rate=0.5, merge_centers=2)

    def hook(module, args, out):
        out = out.clone()
        out[:, [7, 40, 90]] *= 10.0
        return out

    trace = _encode(tiny_clip, cfg, hooks=[(5, hook)]).trace
    hn = why.high_norm_tokens(trace, 6)
    assert hn.tokens == (6, 39, 89)
    done = why.outcomes(trace, 6)
    assert hn.outcome == (done[6], done[39], done[89])
    want = {o: hn.outcome.count(o) for o in why.OUTCOMES if o in hn.outcome}
    assert hn.counts() == want and sum(want.values()) == 3
    said = ", ".join(f"{n} {o}" for o, n in want.items())
    assert f"**3 high-norm tokens entered block 6: {said}**" in panels.high_norm_line(trace, 6)


def test_high_norm_marks_on_the_map(tiny_clip):
    cfg = CondenseConfig(method="evit", keep_rate=0.7)
    trace = _encode(tiny_clip, cfg, hooks=[(5, _blow_up(7))]).trace
    image = np.full((224, 224, 3), 128, dtype=np.uint8)
    flags = trace.high_norm(6).numpy().reshape(trace.grid)
    for view in render.VIEWS:
        plain = render.fate_map(image, trace, 6, view=view)
        marked = render.fate_map(image, trace, 6, view=view, high_norm=True)
        changed = (plain != marked).any(axis=-1)
        rows, cols = np.nonzero(changed)
        assert set(zip((rows // 16).tolist(), (cols // 16).tolist())) == set(
            zip(*np.nonzero(flags))
        )
        r, c = map(int, np.argwhere(flags)[0])
        assert marked[r * 16 + 2, c * 16 + 2].tolist() == list(render.HIGH_NORM_FILL)
        assert marked[r * 16, c * 16].tolist() == list(render.HIGH_NORM_EDGE)
    assert "class='hn-mark'" in panels.legend_html("evit") and norms.RULE in panels.legend_html()
    layers = trace.to_dict()["layers"]
    assert layers[6]["high_norm"] == np.flatnonzero(flags).tolist()
    assert not any(layers[l]["high_norm"] for l in range(6))


def test_norms_are_the_block_inputs_and_select_keeps_them(tiny_clip):
    """Block 0's recorded norms are the embedded tokens' own (recorded in the one pass); a
    selected image keeps its norms and thresholds."""
    from tca.towers import tower_for

    enc = _encode(tiny_clip, CondenseConfig(method="tome", keep_rate=0.7))
    trace = enc.trace
    assert trace.token_norm.shape == (1, 12, 196) and trace.norm_threshold.shape == (1, 12)
    visual = tiny_clip.model.visual
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = tower_for(visual).embed(visual, images)
    want = x.norm(dim=-1)[:, 1:]
    torch.testing.assert_close(trace.token_norm[:, 0], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(trace.norm_threshold[:, 0], norms.high_norm_threshold(want))
    one = trace.select(0)
    assert torch.equal(one.token_norm, trace.token_norm)
    assert torch.equal(one.norm_threshold, trace.norm_threshold)


# --------------------------------------------------------------------------- ToMe's score by hand


def _best_similarity_by_hand(metric: torch.Tensor, prefix: int) -> list[float]:
    """Each non-prefix token's best cosine similarity to the other set (A = even positions,
    B = odd), written as loops; the prefix tokens (in A) are nobody's partner."""
    m = [v / v.norm() for v in metric[0].double()]
    n = len(m)
    out = []
    for i in range(prefix, n):
        # an A token's partners: every B token; a B token's: the A tokens but the prefix
        others = [j for j in range(n) if j % 2 != i % 2 and (i % 2 == 0 or j >= prefix)]
        out.append(max(float(m[i] @ m[j]) for j in others))
    return out


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("n", [6, 7])
def test_bipartite_similarity_by_hand(prefix, n):
    from tca import beyond, condense

    metric = torch.randn(1, n, 5, generator=torch.Generator().manual_seed(n + 10 * prefix))
    dest, n_out, sim = condense.bipartite_match(metric, 2, prefix)
    assert sim.shape == (1, n - prefix)
    want = _best_similarity_by_hand(metric, prefix)
    torch.testing.assert_close(sim[0].double(), torch.tensor(want, dtype=torch.float64))
    plain_dest, plain_n = condense.bipartite_soft_matching(metric, 2, prefix)
    assert torch.equal(dest, plain_dest) and n_out == plain_n == n - 2
    # the two merged A tokens are the ones with the highest similarity among set A
    is_a = (torch.arange(prefix, n) % 2 == 0).tolist()
    a_scores = sorted((s for s, a in zip(want, is_a) if a), reverse=True)
    merged = [
        i - prefix for i in range(prefix, n) if i % 2 == 0 and int(dest[0, i]) >= n_out - n // 2
    ]
    assert sorted(want[t] for t in merged) == sorted(a_scores[:2])
    size = torch.ones(1, n)
    x = torch.randn(1, n, 4)
    for c in (
        condense.tome_merge(x, size, metric, 2, prefix),
        beyond.tofu_prune(x, size, metric, 2, prefix),
        beyond.tofu_merge(x, size, metric, 2, prefix),
    ):
        assert torch.equal(c.score, sim)
