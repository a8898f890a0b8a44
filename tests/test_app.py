"""The Gradio app: handler unit tests (no server), then the API contract and every bad input
through gradio_client against the real app launched in-process. Tiny random-weight model."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app as app_module
import tca
from tca import budget, charts, render
from tca.app import export, follow, page, panels, runs, serving, sweeps
from tca.flops import Geometry
from tca.methods import COMPARED
from tca.trace import KEPT
from tca.weights import WEIGHTS_HELP

TINY = "tca-tiny-ViT"
LABELS = "cat, dog, tiger, fox"


# ------------------------------------------------------------------------ handler unit tests


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory) -> app_module.App:
    app = app_module.App(TINY, "none", exports=export.ExportDir(tmp_path_factory.mktemp("exports")))
    app_module.build_demo(TINY, "none", app=app)  # the layout names the page's components
    return app


def _named(app, out: dict) -> dict:
    """A handler's dict of updates, keyed by the components' names instead."""
    names = {id(c): n for n, c in app.ui.items()}
    return {names[id(c)]: v for c, v in out.items()}


class _Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, frac, desc=None):
        self.calls.append((frac, desc))


CONTROLS = dict(
    model=TINY,
    method="tca",
    keep_rate=0.7,
    layers="3,6,9",
    merge_centers=2,
    score="mean",
    templates="single",
)


def _controls(**kw):
    return {**CONTROLS, **kw}


def _classify(app, image, labels=LABELS, stream=False, stream_state=None, **kw):
    return app.classify(
        image,
        labels,
        **_controls(**kw),
        stream=stream,
        stream_state=stream_state,
        progress=_Progress(),
    )


def test_classify_handler_returns_the_api_summary(tiny_app, example_image):
    summary, state, stream = _classify(tiny_app, str(example_image))
    assert stream is None
    assert summary["labels"] == ["cat", "dog", "tiger", "fox"]  # order kept
    for key in ("baseline", "condensed"):
        assert abs(sum(summary[key]["probs"]) - 1.0) < 1e-4
        # the probabilities are the softmax of the logits given beside them
        logits = np.array(summary[key]["logits"], dtype=np.float64)
        soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert summary[key]["probs"] == pytest.approx(soft.tolist(), abs=1e-5)
        top = summary["top"][key]
        assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    assert summary["tokens_per_layer"] == [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3
    assert summary["baseline_tokens_per_layer"] == [197] * 12
    g = summary["gmacs"]
    assert g["condensed"] < g["baseline"]
    assert abs(g["saved_percent"] - 100 * (1 - g["condensed"] / g["baseline"])) < 1e-6
    assert "GMACs" in g["convention"]
    assert summary["random_weights"] is True and summary["settings"]["keep_rate"] == 0.7
    json.dumps(summary)  # JSON-ready
    assert isinstance(state, runs.ExplorerRun) and state.seen.shape == (224, 224, 3)
    assert state.request.labels == ("cat", "dog", "tiger", "fox")
    assert state.request.config == tca.CondenseConfig(keep_rate=0.7)


def _show(
    app,
    state,
    layer=9,
    view="fates",
    overlay=False,
    opacity=0.5,
    patch=None,
    shown_depth=12,
    stream_on=False,
    stream_state=None,
):
    return _named(
        app,
        app.show_run(
            state, layer, view, overlay, opacity, patch, shown_depth, stream_on, stream_state
        ),
    )


def test_show_run_renders_everything_from_the_cached_run(tiny_app, example_image):
    _, state, _ = _classify(tiny_app, str(example_image))
    out = _show(tiny_app, state)
    assert set(out) == set(page.RUN_PARTS)
    banner, base, cond = out["banner"]["value"], out["baseline"], out["condensed"]
    shift, current, slider = out["shift"]["value"], out["map"]["value"], out["layer"]
    info, chart, cost = out["info"]["value"], out["chart"]["value"], out["cost"]["value"]
    strip, follow, stream_md = out["strip"], out["follow"]["value"], out["stream"]["value"]
    corrected, stale = out["corrected"], out["stale"]["value"]
    depth, patch = out["depth"], out["patch"]
    assert "RANDOM WEIGHTS" in banner and "<details>" in banner  # operator help folded away
    assert base["value"] == dict(zip(state.result.labels, state.result.baseline.probs))
    assert base["label"] == "Baseline CLIP (all tokens)"
    assert cond["label"] == "Condensed: TCA, R=0.7"
    assert "tiger" in shift and "pp" in shift and "-0.0 pp" not in shift
    assert "Probability shift" in shift
    assert current.shape == (896, 896, 3)  # drawn at 4x
    small = render.fate_map(state.seen, state.trace, 9)
    assert np.array_equal(current[::4, ::4], small)
    assert (slider["maximum"], slider["value"]) == (11, 9)
    assert "After block 9" in info and "(a condensing block): 74 tokens" in info
    assert np.array_equal(chart, page.chart_image(state, 9))
    r = state.result
    assert (
        f"{r.flops_baseline.gmacs:.2f} &rarr; {r.flops_condensed.gmacs:.2f} GMACs "
        f"<span class='saved'>({r.saved_percent:.1f}% saved)</span>"
    ) in cost
    assert f"<td>{r.baseline_tokens[-1]}</td><td>{r.tokens_per_layer[-1]}</td>" in cost
    assert (r.baseline_tokens[-1], r.tokens_per_layer[-1]) == (197, 74)
    assert "warm-up" in cost
    # the strip: one (map, caption) per block, the shown block selected, condensing blocks marked
    assert strip["selected_index"] == 9 and len(strip["value"]) == 12
    assert [c for _, c in strip["value"]][3] == f"3 {panels.CONDENSING_MARK} \u00b7 141"
    # tiles are drawn on the image shrunk by 2 (patches of 16 px for this 32-px-patch model)
    tile_view = render.shrink(state.seen, state.trace.grid, page.STRIP_SHRINK)
    assert tile_view.shape == (112, 112, 3)
    assert np.array_equal(strip["value"][9][0], render.fate_map(tile_view, state.trace, 9))
    assert "Click a patch" in follow
    assert "Stream mode is off" in stream_md and corrected["visible"] is False
    assert stale == "" and depth == 12 and patch is None
    # a run of another depth (ViT-L/14 after ViT-B/16) opens at its last block
    out = _show(tiny_app, state, layer=4, shown_depth=24)
    assert out["layer"]["value"] == 11 and "After block 11" in out["info"]["value"]
    # the same depth keeps the block the user chose
    assert _show(tiny_app, state, layer=4)["layer"]["value"] == 4


def test_exports_name_the_image_and_the_settings(tiny_app, example_image):
    _, state, _ = _classify(tiny_app, str(example_image))
    files = _named(tiny_app, tiny_app.export(state, 11, "fates", None))
    png, gif, js = files["strip_file"], files["gif_file"], files["json_file"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 6 * 224
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 12
    data = json.loads(Path(js).read_text())
    assert data["image"]["name"] == example_image.name
    assert data["image"]["content_key"] == state.request.image_key
    assert len(data["trace"]["layers"]) == 12
    layer9 = data["trace"]["layers"][9]
    assert sum(len(g) for g in layer9["groups"]) == layer9["fates"]["merged"]
    assert data["flops"]["condensed"]["gmacs"] == pytest.approx(data["gmacs"]["condensed"])
    line = page.settings_line(state)
    assert example_image.name in line and "R=0.7" in line and "GMACs" in line


def test_display_only_changes_do_not_run_the_model(tiny_app, example_image, monkeypatch):
    _, state, _ = _classify(tiny_app, str(example_image))

    def boom(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(tca, "classify", boom)
    monkeypatch.setattr(runs, "classify_request", boom)
    monkeypatch.setattr(tiny_app.cache.peek(TINY).clip.model.visual, "forward", boom)

    def layer(*args):
        out = _named(tiny_app, tiny_app.show_layer(state, *args))
        assert set(out) == {"map", "info", "chart", "follow", "strip"}
        return out

    a, b = layer(3, "fates", False, 0.5), layer(11, "fates", False, 0.5)
    c, m = layer(11, "fates", True, 0.6), layer(11, "model", False, 0.5)
    maps = [x["map"]["value"] for x in (a, b, c, m)]
    assert not np.array_equal(maps[0], maps[1]) and not np.array_equal(maps[1], maps[2])
    assert not np.array_equal(maps[1], maps[3])
    assert np.array_equal(maps[1], page.map_image(state, page.Display(11)))
    assert not np.array_equal(a["chart"]["value"], b["chart"]["value"])  # marks the shown block
    assert a["strip"] == {"__type__": "update", "selected_index": 3}  # the strip is not redrawn
    assert b["strip"]["selected_index"] == 11
    assert "141 tokens" in a["info"]["value"] and "74 tokens" in b["info"]["value"]
    assert "Overlay: CLS attention at block 9" in c["info"]["value"]
    # clicking a strip tile selects that block; the strip is not redrawn
    evt = gr.SelectData(None, {"index": 7, "value": None})
    out = _named(tiny_app, tiny_app.pick_layer(state, "fates", False, 0.5, None, evt))
    assert set(out) == {"layer", "map", "info", "chart", "follow"}
    assert out["layer"]["value"] == 7 and "After block 7" in out["info"]["value"]
    assert np.array_equal(out["map"]["value"], layer(7, "fates", False, 0.5)["map"]["value"])

    # the arrows step one block and stop at the ends
    def step(at, delta):
        out = _named(tiny_app, tiny_app.step_layer(state, at, delta, "fates", False, 0.5, None))
        return out["layer"]["value"]

    assert (step(7, 1), step(11, 1), step(0, -1)) == (8, 11, 0)
    # follow a patch: a click on the big map
    trace = state.trace
    lv = render.layer_view(trace, 11)
    merged = int(np.flatnonzero(lv.fate.ravel() == 1)[0])
    r, c = divmod(merged, trace.grid[1])
    px = page.MAP_ZOOM * 16  # the tiny ViT's 16 px patches on the big map
    evt = gr.SelectData(None, {"index": [c * px + 5, r * px + 5], "value": None})
    out = _named(tiny_app, tiny_app.pick_patch(state, 11, "fates", False, 0.5, evt))
    assert out["patch"] == merged
    assert "Following patch" in out["follow"]["value"]
    assert "merged into group" in out["follow"]["value"]
    assert np.array_equal(
        out["map"]["value"], page.map_image(state, page.Display(11, patch=merged))
    )
    cleared = _named(tiny_app, tiny_app.clear_patch(state, 11, "fates", False, 0.5))
    assert cleared["patch"] is None and "Click a patch" in cleared["follow"]["value"]
    # a view change redraws the strip in that view
    strip = _named(tiny_app, tiny_app.change_view(state, 11, "model", False, 0.5, None))["strip"]
    assert len(strip["value"]) == 12
    tile_view = render.shrink(state.seen, state.trace.grid, page.STRIP_SHRINK)
    assert np.array_equal(
        strip["value"][11][0], render.fate_map(tile_view, state.trace, 11, view="model")
    )
    # no Run on screen: the display events change nothing (one output skipped: an empty dict
    # would be taken for the value of the first output)
    assert _named(tiny_app, tiny_app.show_layer(None, 3)) == {"info": gr.skip()}
    assert _named(
        tiny_app, tiny_app.show_run(None, 3, "fates", False, 0.5, None, 12, False, None)
    ) == {"map": gr.skip()}


def test_follow_a_patch_from_the_trace(tiny_app, example_image):
    _, state, _ = _classify(tiny_app, str(example_image))
    trace = state.trace
    for patch in range(0, 196, 13):
        steps = follow.follow_patch(trace, patch)
        assert [s.layer for s in steps] == list(range(12))
        for s in steps:
            tok = trace.token_index[0, s.layer]
            assert s.token == int(tok[patch]) and s.group_size == int((tok == s.token).sum())
            assert s.fate == ("kept", "merged", "pruned")[int(trace.fate[0, s.layer, patch])]
            assert (s.attention_rank is not None) == (s.layer in (3, 6, 9))
        # ranks at condensing blocks are among the tokens entering the block
        for s in steps:
            if s.attention_rank is not None:
                assert (
                    1
                    <= s.attention_rank
                    <= s.ranked_tokens
                    <= trace.tokens_per_layer[s.layer - 1] - 1
                )
        # once fused, always fused
        fates = [s.fate for s in steps]
        if "pruned" in fates:
            assert all(f == "pruned" for f in fates[fates.index("pruned") :])
    # the most attended patch at block 3 ranks 1 there
    att = trace.cls_attention[3][0].numpy()  # per patch: its token's attention
    best = int(np.nanargmax(att))
    assert follow.follow_patch(trace, best)[3].attention_rank == 1
    with pytest.raises(ValueError, match="outside"):
        follow.follow_patch(trace, 196)


def test_stale_results_are_marked(tiny_app, example_image, tmp_path):
    _, state, _ = _classify(tiny_app, str(example_image))
    args = [str(example_image), LABELS, TINY, "tca", 0.7, "3,6,9", 2, "mean", "single"]
    assert tiny_app.check_stale(state, *args) == ""
    assert tiny_app.request(*args) == state.request  # the one test: the same request
    copy = tmp_path / "copy.jpg"  # the same picture under another path is not a change
    copy.write_bytes(example_image.read_bytes())
    assert tiny_app.check_stale(state, str(copy), *args[1:]) == ""
    assert tiny_app.check_stale(state, *args[:1], "cat,dog ,tiger, fox", *args[2:]) == ""
    assert tiny_app.check_stale(state, *args[:2], None, *args[3:]) == ""  # the default model
    for i, value in (
        (1, "cat, dog"),
        (3, "evit"),
        (4, 0.5),
        (5, "3,6"),
        (6, 3),
        (7, "rank"),
        (8, "imagenet80"),
        (4, 7.0),
        (1, "cat"),
    ):  # the last two: invalid inputs
        changed = list(args)
        changed[i] = value
        assert "Outdated" in tiny_app.check_stale(state, *changed), i
    other = sorted(example_image.parent.glob("*.jpg"))[-1]
    assert "Outdated" in tiny_app.check_stale(state, str(other), *args[1:])
    assert tiny_app.check_stale(None, *args) == ""  # nothing shown: nothing outdated


def _sweep(app, image, labels=LABELS, all_methods=False, shown=None, **kw):
    out = app.sweep(
        image, labels, **_controls(**kw), all_methods=all_methods, shown=shown, progress=_Progress()
    )
    out = _named(app, out)
    return out["sweep_plot"], out["sweep_table"]


def test_sweep_handler(tiny_app, example_image):
    plot, table = _sweep(tiny_app, str(example_image))
    assert plot.ndim == 3 and plot.dtype == np.uint8
    assert table.count("<tr") == 1 + len(sweeps.SWEEP_RATES)
    assert "1 baseline + 7 condensed passes" in table  # R = 1 is the baseline: no pass
    # after a Run of the same inputs its baseline is reused, with the same numbers
    _, state, _ = _classify(tiny_app, str(example_image))
    _, table2 = _sweep(tiny_app, str(example_image), shown=state)
    assert "the Run's baseline + 7 condensed passes" in table2
    # the Run's own keep rate does not matter: the sweep sets every rate itself
    _, table2b = _sweep(tiny_app, str(example_image), shown=state, keep_rate=0.4)
    assert "the Run's baseline + 7 condensed passes" in table2b
    req = tiny_app.request(
        str(example_image), LABELS, TINY, "tca", 0.7, "3,6,9", 2, "mean", "single"
    )
    fresh = sweeps.sweep(tiny_app.cache, req)
    reused = sweeps.sweep(tiny_app.cache, req, reuse=state)
    assert not reused.baseline_pass and fresh.baseline_pass
    for a, b in zip(fresh.points["tca"], reused.points["tca"]):
        assert a.gmacs == b.gmacs and a.top1 == b.top1
        assert a.top1_prob == pytest.approx(b.top1_prob, abs=1e-5)
        assert a.kl == pytest.approx(b.kl, abs=1e-5)
    # another image or other labels: the Run's baseline is not used
    other = sorted(example_image.parent.glob("*.jpg"))[-1]
    _, table3 = _sweep(tiny_app, str(other), shown=state)
    assert "1 baseline + 7" in table3
    _, table4 = _sweep(tiny_app, str(example_image), "cat, dog", shown=state)
    assert "1 baseline + 7" in table4
    sw = sweeps.sweep(tiny_app.cache, req.with_config(tca.CondenseConfig(method="evit")))
    pts = sw.points["evit"]
    assert [p.keep_rate for p in pts] == list(sweeps.SWEEP_RATES)
    gm = [p.gmacs for p in pts]
    assert gm == sorted(gm) and gm[-1] == pytest.approx(sw.gmacs_baseline)
    assert pts[-1].kl == pytest.approx(0.0, abs=1e-6)  # R = 1 is the baseline
    assert pts[-1].base_label_prob == pytest.approx(max(sw.baseline.probs), abs=1e-6)
    # each point's KL is KL(baseline || condensed) of a plain classify at that rate
    clip = tiny_app.cache.get(TINY).clip
    for p in (pts[0], pts[3]):
        one = tca.classify(
            clip,
            str(example_image),
            LABELS,
            tca.CondenseConfig(method="evit", keep_rate=p.keep_rate),
            trace=False,
        )
        assert p.kl == pytest.approx(
            sweeps.kl_divergence(one.baseline.probs, one.condensed.probs), abs=1e-6
        )
        assert p.gmacs == pytest.approx(one.flops_condensed.gmacs)
    with pytest.raises(gr.Error, match="condensing method"):
        _sweep(tiny_app, str(example_image), method="none")
    both = sweeps.sweep(tiny_app.cache, req, methods=COMPARED)
    assert list(both.points) == list(COMPARED)
    assert sweeps.kl_divergence([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert sweeps.kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        0.5 * np.log(2) + 0.5 * np.log(2 / 3), abs=1e-12
    )
    assert sweeps.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(np.log(2), abs=1e-12)


def test_sweep_at_equal_gmacs_every_method(tiny_app, example_image):
    req = tiny_app.request(
        str(example_image), LABELS, TINY, "tca", 0.7, "3,6,9", 2, "mean", "single"
    )
    sw = sweeps.sweep(tiny_app.cache, req, runs.ALL_METHODS, by="gmacs")
    assert list(sw.points) == EVERY_METHOD and sw.by == "gmacs" and sw.refused == {}
    base = budget.gmacs_at(Geometry.from_name(TINY), tca.CondenseConfig(method="none"))
    assert sw.gmacs_baseline == pytest.approx(base, rel=1e-12)
    base_top = sw.baseline.top(1)[0][0]
    distinct = 0
    for m, pts in sw.points.items():
        targets = [p.target for p in pts]
        assert targets == pytest.approx([f * base for f in sweeps.SWEEP_COST_FRACTIONS], rel=1e-12)
        lowest = budget.solve(Geometry.from_name(TINY), tca.CondenseConfig(method=m), 1e-3, lo=0.1)
        for p in pts:
            cfg = tca.CondenseConfig(method=m, keep_rate=p.keep_rate)
            planned = budget.gmacs_at(Geometry.from_name(TINY), cfg)
            assert p.gmacs <= planned + 1e-12 if m == "ats" else p.gmacs == pytest.approx(planned)
            if p.target >= lowest.lowest:  # reachable: within the stated tolerance
                assert abs(planned - p.target) <= budget.TOLERANCE * p.target, (m, p)
                assert not p.floor
            else:  # below the method's floor: it runs at its cheapest
                assert planned == lowest.lowest and p.floor
            assert p.top1_kept == (p.top1 == base_top)
        assert pts[-1].keep_rate == 1.0 and pts[-1].kl == 0.0  # 100%: the baseline, no pass
        # 40%: ToMe's family merges at most half a block's tokens; the others get there
        assert (pts[0].target < lowest.lowest) == (
            m in ("tome", "tome-paper", "pitome", "tofu", "zero-tprune")
        )
        distinct += len({p.keep_rate for p in pts if p.keep_rate < 1.0})
    assert sw.passes == distinct  # a floor reached by several targets runs once
    out = _named(
        tiny_app,
        tiny_app.sweep(
            str(example_image),
            LABELS,
            **_controls(),
            all_methods=True,
            by="gmacs",
            progress=_Progress(),
        ),
    )
    table = out["sweep_table"]
    assert table.count("<tr data-method=") == len(EVERY_METHOD) * len(sweeps.SWEEP_COST_FRACTIONS)
    assert "<th>target GMACs</th>" in table and "cannot reach" in table
    assert out["sweep_plot"].ndim == 3


def test_first_screen_is_computed_once(tiny_app):
    first = tiny_app.first_screen()
    assert first is not None and tiny_app.first_screen() is first
    assert first.image_name == "chelsea.jpg" and first.result.config.keep_rate == 0.7
    demo = app_module.build_demo(TINY, "none", app=tiny_app)
    ui = tiny_app.ui
    assert demo.tca_app is tiny_app and ui["layer"].value == 11 and ui["layer"].maximum == 11
    # the first screen built into the page is the one page function's parts of that Run
    # (as the start-up example: its wall-clock is no visitor's, so it shows none)
    parts = page.parts(first, page.Display(11), screen=page.Screen(startup=True))
    assert ui["condensed"].label == parts["condensed"]["label"] == "Condensed: TCA, R=0.7"
    assert ui["info"].value == parts["info"]["value"] and "74 tokens" in ui["info"].value
    assert ui["cost"].value == parts["cost"]["value"]
    assert ui["run"].value.request == first.request and ui["depth"].value == 12


def test_stream_mode_reservoir_per_label_set(tiny_app, example_image):
    stream = None
    for i in range(3):
        summary, state, stream = _classify(
            tiny_app, str(example_image), stream=True, stream_state=stream
        )
        assert summary["reservoir"]["images_seen"] == i + 1
        assert "corrected" in summary["top"] and summary["final"] == "corrected"
    assert isinstance(stream, runs.StreamState)
    assert set(summary["reservoir"]["buckets"]) == {"cat", "dog", "tiger", "fox"}
    panel = panels.stream_html(state, stream, True)
    assert "Images seen: 3" in panel and "anchors inactive" in panel
    assert "Logits correction on this image" in panel
    # different labels: a new reservoir tied to them
    summary, state, stream = _classify(
        tiny_app, str(example_image), labels="cat, dog", stream=True, stream_state=stream
    )
    assert summary["reservoir"]["images_seen"] == 1
    assert set(summary["reservoir"]["buckets"]) == {"cat", "dog"}
    assert "labels changed" in stream.notice
    # stream mode only applies to TCA
    summary, _, _ = _classify(
        tiny_app,
        str(example_image),
        labels="cat, dog",
        method="evit",
        stream=True,
        stream_state=stream,
    )
    assert "reservoir" not in summary and "corrected" not in summary["top"]
    panel = _show(tiny_app, state, 11, stream_on=True, stream_state=stream)["stream"]["value"]
    assert "TCA only" not in panel
    _, evit_state, _ = _classify(
        tiny_app,
        str(example_image),
        labels="cat, dog",
        method="evit",
        stream=True,
        stream_state=stream,
    )
    assert (
        "Stream mode applies to TCA only"
        in _show(tiny_app, evit_state, 11, stream_on=True, stream_state=stream)["stream"]["value"]
    )
    out = _named(tiny_app, tiny_app.reset_stream(stream, state, True))
    stream = out["stream_state"]
    assert stream.reservoir.steps == 0 and "Reservoir cleared" in out["stream"]
    assert out["corrected"]["visible"] is False
    # with stream mode off, the reset says so (not "Stream mode is on")
    panel = _named(tiny_app, tiny_app.reset_stream(stream, state, False))["stream"]
    assert "Reservoir cleared" in panel and "Stream mode is off" in panel


def _compare(app, image, labels=LABELS, match_by="tca", target=None, a="tca", b="evit", **kw):
    return _named(
        app,
        app.compare(
            image,
            labels,
            **_controls(**kw),
            match_by=match_by,
            target_gmacs=target,
            method_a=a,
            method_b=b,
            progress=_Progress(),
        ),
    )


EVERY_METHOD = ["tca", "evit", "tome", "tome-paper", "ats", "pitome", "tofu", "zero-tprune"]
EVERY_METHOD += ["repshift"]


def test_compare_every_method_at_equal_gmacs(tiny_app, example_image):
    out = _compare(tiny_app, str(example_image))
    cmp = out["compare_state"]
    assert list(cmp.results) == EVERY_METHOD == list(runs.ALL_METHODS) and cmp.refused == {}
    geom = Geometry.from_name(TINY)
    target = budget.gmacs_at(geom, tca.CondenseConfig(keep_rate=0.7))
    assert cmp.target == target and cmp.matching == runs.Matching("tca")
    table = out["compare_table"]
    for m, r in cmp.results.items():
        match = cmp.matches[m]
        assert r.config.keep_rate == match.keep_rate and r.config.method == m
        assert abs(match.gmacs - target) <= budget.TOLERANCE * target, m
        assert match.gmacs == budget.gmacs_at(geom, r.config)  # the flops command's number
        if m == "ats":  # its budget is an upper bound; this image kept no more
            assert r.flops_condensed.gmacs <= match.gmacs
        else:
            assert r.flops_condensed.gmacs == pytest.approx(match.gmacs, rel=1e-12)
        row = table.split(f"data-method='{m}'")[1].split("</tr>")[0]
        assert f"<td>{match.keep_rate:g}</td><td>{match.gmacs:.3f}" in row
        assert f"({100 * match.relative_error:+.2f}%)" in row
        kl = sweeps.kl_divergence(cmp.baseline.probs, r.condensed.probs)
        assert f"<td>{charts.significant(kl, 2)}</td>" in row
    assert cmp.matches["tca"].keep_rate == 0.7  # matched to its own cost: its own R
    assert "Equal GMACs" in table and f"{target:.3f} (TCA's cost at R = 0.7)" in table
    assert isinstance(out["compare_picture"], Image.Image)
    assert out["compare_picture"].height > len(EVERY_METHOD) * 224
    assert set(out["compare_baseline"]) == {"cat", "dog", "tiger", "fox"}
    assert "RANDOM WEIGHTS" in out["banner"] and out["compare_stale"] == ""
    assert out["compare_target"] == round(target, 3)  # a starting point for one's own target

    # the disagreement of two methods: set differences of their traced fates at block 9
    for a, b in (("tca", "evit"), ("tome", "ats"), ("repshift", "tca")):
        got = _named(tiny_app, tiny_app.compare_disagree(cmp, a, b))
        fa = cmp.results[a].trace.fate[0, 9].numpy()
        fb = cmp.results[b].trace.fate[0, 9].numpy()
        kept_a, kept_b = set(np.flatnonzero(fa == KEPT)), set(np.flatnonzero(fb == KEPT))
        every = set(range(fa.size))
        expected = {
            "only_a": len(kept_a - kept_b),
            "only_b": len(kept_b - kept_a),
            "both_kept": len(kept_a & kept_b),
            "neither": len(every - kept_a - kept_b),
        }
        html = got["compare_disagree"]
        for key, n in expected.items():
            assert f"data-count='{key}'>" in html
            assert (
                html.split(f"data-count='{key}'>")[1]
                .split("</tr>")[0]
                .endswith(f"<td><b>{n}</b></td>")
            ), (a, b, key)
        assert sum(expected.values()) == 196 and "After block 9" in html
        assert got["compare_disagree_picture"].shape == (448, 448, 3)
    assert (
        out["compare_disagree"]
        == _named(tiny_app, tiny_app.compare_disagree(cmp, "tca", "evit"))["compare_disagree"]
    )


def test_compare_at_equal_keep_rate_and_at_a_target(tiny_app, example_image):
    image = str(example_image)
    same = _compare(tiny_app, image, match_by="rate")["compare_state"]
    assert list(same.results) == EVERY_METHOD and same.target is None and same.matches == {}
    assert {r.config.keep_rate for r in same.results.values()} == {0.7}
    base = next(iter(same.results.values())).flops_baseline.gmacs
    # 40% of the baseline's cost: ToMe's family cannot merge more than half a block's tokens
    out = _compare(tiny_app, image, match_by="gmacs", target=0.4 * base)
    cmp, table = out["compare_state"], out["compare_table"]
    assert cmp.target == pytest.approx(0.4 * base) and "compare_target" not in out
    for m in EVERY_METHOD:
        match = cmp.matches[m]
        row = table.split(f"data-method='{m}'")[1].split("</tr>")[0]
        assert match.floor == (m in ("tome", "tome-paper", "pitome", "tofu", "zero-tprune")), m
        assert ("cannot reach the target" in row) == match.floor
        assert match.within != match.floor, m
    with pytest.raises(gr.Error, match="target GMACs must be a positive number"):
        _compare(tiny_app, image, match_by="gmacs", target=None)


def test_compare_is_marked_outdated_when_the_explore_inputs_change(tiny_app, example_image):
    image = str(example_image)
    cmp = _compare(tiny_app, image)["compare_state"]
    args = [image, LABELS, *_controls().values()]
    stale = tiny_app.check_compare_stale
    assert stale(cmp, *args, "tca", None) == ""
    assert stale(cmp, *args[:3], "ats", *args[4:], "tca", None) == ""  # the method: all run
    assert stale(None, *args, "rate", None) == ""  # nothing shown
    for i, value in ((1, "cat, dog"), (4, 0.5), (5, "3,6"), (6, 3), (7, "rank"), (1, "cat")):
        changed = list(args)
        changed[i] = value
        assert "Outdated" in stale(cmp, *changed, "tca", None), i
    other = sorted(example_image.parent.glob("*.jpg"))[-1]
    assert "Outdated" in stale(cmp, str(other), *args[1:], "tca", None)
    assert "Outdated" in stale(cmp, *args, "rate", None)  # Compare's own matching
    assert "Outdated" in stale(cmp, *args, "gmacs", None)
    assert "Press <b>Compare</b>" in stale(cmp, *args, "rate", None)


def test_compare_opens_with_the_first_example(tiny_app, example_image):
    first = tiny_app.first_screen()
    args = [first.image_name and str(example_image.parent / first.image_name), LABELS]
    controls = [*args, *_controls().values(), "tca", None, "tca", "evit"]
    out = _named(tiny_app, tiny_app.open_compare(None, *controls))
    cmp = out["compare_state"]
    assert cmp is tiny_app.first_comparison() and cmp.request == first.request
    assert list(cmp.results) == EVERY_METHOD and cmp.matching == runs.Matching("tca")
    # the first example's labels are not LABELS: shown, marked Outdated
    assert "Outdated" in out["compare_stale"]
    # a comparison on screen stays (nothing changes: one output skipped)
    assert _named(tiny_app, tiny_app.open_compare(cmp, *controls)) == {"compare_picture": gr.skip()}
    # computed once: a later opening is served from memory, even while the visitor's Run goes
    visitor = SimpleNamespace(session_hash="busy-visitor")
    with tiny_app.gate.hold(*serving.visitor_keys("busy-visitor", None)):
        again = _named(tiny_app, tiny_app.open_compare(None, *controls, request=visitor))
        assert again["compare_state"] is cmp
        tiny_app._first_cmp = None  # not computed yet and the visitor busy: the tab waits
        try:
            waits = tiny_app.open_compare(None, *controls, request=visitor)
            assert _named(tiny_app, waits) == {"compare_picture": gr.skip()}
        finally:
            tiny_app._first_cmp = cmp


BAD_INPUTS = [
    (dict(image=None), "no image"),
    (dict(image="GARBAGE"), "not a readable image"),
    (dict(labels="cat"), "at least two"),
    (dict(labels=""), "at least two"),
    (dict(labels=" , ,\n"), "at least two"),
    (dict(labels="cat, Cat"), "duplicate"),
    (dict(labels="cat, " + "x" * 400), "characters long"),
    (dict(labels=", ".join(f"label{i}" for i in range(150))), "too many labels"),
    (dict(labels="a, " * 12000), "characters long"),
    (dict(keep_rate=0.0), "keep rate"),
    (dict(keep_rate=1.5), "keep rate"),
    (dict(layers="3,x,9"), "layers must be"),
    (dict(layers="3,6,40"), "out of range"),
    (dict(layers=""), "no condensing layers"),
    (dict(merge_centers=0), "merge centres"),
    (dict(merge_centers=2.5), "merge centres"),
    (dict(merge_centers=200), "merge centres"),
    (dict(method="magic"), "unknown method"),
    (dict(score="best"), "unknown score"),
    (dict(templates="poems"), "unknown prompt templates"),
    (dict(model="ViT-Z-99"), "unknown model"),
]


@pytest.mark.parametrize("bad,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_inputs_raise_gr_error(tiny_app, example_image, tmp_path, bad, message):
    kw = dict(bad)
    image = kw.pop("image", str(example_image))
    if image == "GARBAGE":
        image = tmp_path / "photo.jpg"
        image.write_bytes(b"this is not a jpeg" * 100)
        image = str(image)
    labels = kw.pop("labels", LABELS)
    with pytest.raises(gr.Error) as err:
        _classify(tiny_app, image, labels, **kw)
    assert message in err.value.message
    assert "/tmp" not in err.value.message  # server paths are not shown


def test_model_cache_falls_back_to_random_weights_and_says_why():
    calls = []

    def loader(name, pretrained, checkpoint=None, seed=0):
        calls.append((name, pretrained))
        if pretrained is not None:
            raise tca.WeightsUnavailableError(f"could not load {name}/{pretrained}. {WEIGHTS_HELP}")
        return SimpleNamespace(is_random=True, name=name)

    cache = serving.ModelCache("openai", max_models=1, loader=loader)
    # the tag exists for ViT-B-16-quickgelu, so loading is tried, fails, falls back
    entry = cache.get("ViT-B-16-quickgelu")
    assert entry.is_random and "could not load" in entry.note
    assert calls == [("ViT-B-16-quickgelu", "openai"), ("ViT-B-16-quickgelu", None)]
    html = panels.banner_html(entry, "ViT-B-16-quickgelu")
    assert "RANDOM WEIGHTS" in html and "tca-random" in html and "TCA_CHECKPOINT" in html
    assert cache.get("ViT-B-16-quickgelu") is entry and len(calls) == 2  # cached
    cache.get("ViT-B-32-quickgelu")  # bounded: the first one is evicted
    assert cache.loaded() == ["ViT-B-32-quickgelu"]
    # a model without the requested tag is not even tried
    entry = cache.get(TINY)
    assert "no pretrained weights tagged 'openai'" in entry.note and calls[-1] == (TINY, None)


def test_model_cache_loads_once_under_concurrency():
    calls = []

    def loader(name, pretrained, checkpoint=None, seed=0):
        calls.append(name)
        time.sleep(0.2)
        return SimpleNamespace(is_random=True, name=name)

    cache = serving.ModelCache(None, loader=loader)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(TINY))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [TINY] and len({id(g) for g in got}) == 1


def test_offline_fallback_with_real_open_clip():
    """The real path: pretrained weights cannot be downloaded offline, so ViT-B/32 loads with
    random weights and the banner says how to supply real ones."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    cache = serving.ModelCache("openai")
    entry = cache.get("ViT-B-32-quickgelu")
    assert entry.clip.is_random and entry.clip.name == "ViT-B-32-quickgelu"
    assert "ViT-B-32-quickgelu/openai" in entry.note and WEIGHTS_HELP in entry.note


def test_checkpoint_applies_to_its_model_only(tmp_path):
    seen = []

    def loader(name, pretrained, checkpoint=None, seed=0):
        seen.append((name, pretrained, checkpoint))
        return SimpleNamespace(is_random=checkpoint is None and pretrained is None, name=name)

    cache = serving.ModelCache(
        "openai",
        checkpoint="/w/b16.safetensors",
        checkpoint_model="ViT-B-16-quickgelu",
        loader=loader,
    )
    cache.get("ViT-B-16-quickgelu")
    cache.get("ViT-B-32-quickgelu")
    assert seen == [
        ("ViT-B-16-quickgelu", "openai", "/w/b16.safetensors"),
        ("ViT-B-32-quickgelu", "openai", None),
    ]


# ------------------------------------------------------------------------ through gradio_client


@pytest.fixture(scope="module")
def server():
    demo = app_module.build_demo(TINY, "none")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_options())
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture
def client(server):
    return Client(server[1], verbose=False)


def test_api_exposes_only_classify_and_flops(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/classify", "/flops"]  # /flops: tests/test_mcp.py
    assert api["unnamed_endpoints"] == {}
    params = [p["parameter_name"] for p in api["named_endpoints"]["/classify"]["parameters"]]
    assert params[:2] == ["image", "labels"]
    assert {
        "model",
        "method",
        "keep_rate",
        "layers",
        "merge_centers",
        "score",
        "templates",
        "stream",
    } <= set(params)
    assert "stream_state" not in params
    assert "tokens_per_layer" in api["named_endpoints"]["/classify"]["description"]
    returns = api["named_endpoints"]["/classify"]["returns"]
    assert len(returns) == 1 and returns[0]["component"] == "Json"


def test_api_classify_contract(client, example_image):
    out = client.predict(
        handle_file(str(example_image)),
        "cat, dog, car",
        method="evit",
        keep_rate=0.5,
        api_name="/classify",
    )
    assert out["labels"] == ["cat", "dog", "car"]
    assert out["settings"]["method"] == "evit" and out["settings"]["keep_rate"] == 0.5
    assert len(out["tokens_per_layer"]) == 12 and out["tokens_per_layer"][0] == 197
    assert out["tokens_per_layer"][-1] < out["tokens_per_layer"][2]
    assert out["gmacs"]["condensed"] < out["gmacs"]["baseline"]
    assert abs(sum(out["condensed"]["probs"]) - 1) < 1e-4
    top = out["top"]["baseline"]
    assert sorted(t["label"] for t in top) == ["car", "cat", "dog"]  # top-5 of 3 labels: all
    probs = dict(zip(out["labels"], out["baseline"]["probs"]))
    assert [t["label"] for t in top] == sorted(probs, key=lambda l: -probs[l])
    assert out["random_weights"] is True


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(image=None), "no image"),
        (dict(labels="cat"), "at least two"),
        (dict(labels=", ".join(f"l{i}" for i in range(300))), "too many labels"),
        (dict(labels="cat, " + "y" * 1000), "characters long"),
        (dict(keep_rate=5), "greater than maximum"),
        (dict(merge_centers=0), "merge centres K must be a whole number from 1"),
        (dict(layers="1,2,99"), "out of range"),
        (dict(method="nope"), "not in the list of choices"),
        (dict(unreadable=True), "not a readable image"),
    ],
)
def test_api_bad_inputs_then_keeps_serving(client, example_image, tmp_path, kwargs, message):
    kw = dict(kwargs)
    image = handle_file(str(example_image))
    if kw.pop("unreadable", False):
        bad = tmp_path / "notes.png"
        bad.write_text("hello, I am not a PNG")
        image = handle_file(str(bad))
    if "image" in kw:
        image = kw.pop("image")
    labels = kw.pop("labels", "cat, dog")
    with pytest.raises(AppError, match=message):
        client.predict(image, labels, api_name="/classify", **kw)
    ok = client.predict(handle_file(str(example_image)), "cat, dog", api_name="/classify")
    assert ok["labels"] == ["cat", "dog"]


def test_upload_size_is_bounded(client, example_image, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes(os.urandom(11 * 1024 * 1024))  # over the 10 MB limit
    # gradio_client reads the server's limit and refuses before sending ...
    with pytest.raises(
        ValueError, match="huge.png exceeds the maximum file size of 10485760 bytes"
    ):
        client.predict(handle_file(str(big)), "cat, dog", api_name="/classify")
    # ... and the server's upload route refuses the same file sent by hand
    import httpx

    with big.open("rb") as f:
        r = httpx.post(
            f"{client.src.rstrip('/')}/gradio_api/upload",
            files={"files": ("huge.png", f, "image/png")},
            timeout=60,
        )
    assert r.status_code == 413 and "10485760" in r.text
    ok = client.predict(handle_file(str(example_image)), "cat, dog", api_name="/classify")
    assert ok["labels"] == ["cat", "dog"]


def test_sessions_never_share_stream_state(server, example_image):
    a, b = Client(server[1], verbose=False), Client(server[1], verbose=False)
    img = handle_file(str(example_image))
    for _ in range(2):
        out_a = a.predict(img, "cat, dog", stream=True, api_name="/classify")
    out_b = b.predict(img, "cat, dog", stream=True, api_name="/classify")
    assert out_a["reservoir"]["images_seen"] == 2
    assert out_b["reservoir"]["images_seen"] == 1
    out_a = a.predict(img, "cat, dog", stream=True, api_name="/classify")
    assert out_a["reservoir"]["images_seen"] == 3


def test_build_demo_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TCA_MODEL", TINY)
    monkeypatch.setenv("TCA_PRETRAINED", "none")
    demo = app_module.build_demo()
    assert demo.tca_app.default_model == TINY and demo.tca_app.cache.pretrained is None
    assert demo._queue.max_size == app_module.QUEUE_SIZE
    assert demo._queue.default_concurrency_limit == app_module.CONCURRENCY
    assert app_module.launch_options()["max_file_size"] == app_module.MAX_UPLOAD


def test_python_app_py_serves_with_env_settings(tmp_path):
    """`python app.py` as a user (or a Space) runs it: host/port from the Gradio variables,
    model from TCA_MODEL / TCA_PRETRAINED, the /classify endpoint published."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        TCA_MODEL=TINY,
        TCA_PRETRAINED="none",
        HF_HUB_OFFLINE="1",
        TCA_MODEL_CONFIGS=str(Path(__file__).parent / "model_configs"),
        TCA_FIRST_SCREEN="background",
        TCA_PRECISION="fp32",
    )  # serve at once; the first screen in a thread
    root = Path(app_module.__file__).parent
    proc = subprocess.Popen(
        [sys.executable, str(root / "app.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/gradio_api/info", timeout=2
                ) as resp:
                    info = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "app.py did not start within 90 s"
                time.sleep(0.3)
        assert list(info["named_endpoints"]) == ["/classify", "/flops"]
        params = info["named_endpoints"]["/classify"]["parameters"]
        model = next(p for p in params if p["parameter_name"] == "model")
        assert model["parameter_default"] == TINY
        # the tiny test model from TCA_MODEL_CONFIGS answers a Run
        out = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(str(Path(__file__).parent.parent / "assets" / "coffee.jpg")),
            "cat, dog",
            api_name="/classify",
        )
        assert out["labels"] == ["cat", "dog"] and out["model"].startswith(TINY)
        assert out["tokens_per_layer"] == [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3
        assert out["precision"] == "fp32"  # TCA_PRECISION
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/mcp/", timeout=10) as r:
            assert r.status == 200 and b"MCP" in r.read()  # the MCP server's landing page
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_load_hands_over_the_background_first_screen(tiny_app):
    out = _named(tiny_app, tiny_app.load_first(None))
    assert set(out) == {"image", "labels", "run", *page.RUN_PARTS}
    state = out["run"]
    assert Path(out["image"]).name == "chelsea.jpg"
    assert out["labels"] == "cat, dog, tiger, fox, rabbit"
    assert isinstance(state, runs.ExplorerRun) and state is not tiny_app.first_screen()  # a copy
    assert state.request == tiny_app.first_screen().request
    assert Path(out["map"]["value"]).is_file() and out["layer"]["value"] == 11
    assert "After block 11" in out["info"]["value"]
    assert out["strip"]["selected_index"] == 11 and len(out["strip"]["value"]) == 12
    assert all(Path(f).is_file() for f, _ in out["strip"]["value"])
    # the same parts as any Run of it shows, pictures aside
    direct = page.parts(state, page.Display(11), screen=page.Screen(startup=True))
    for name in ("baseline", "condensed", "shift", "info", "cost", "follow", "layer", "depth"):
        assert out[name] == direct[name], name
    again = _named(tiny_app, tiny_app.load_first(None))
    assert again["map"]["value"] == out["map"]["value"]  # the pictures are written once
    # a session that already shows a Run keeps it (one output skipped: nothing changes)
    assert _named(tiny_app, tiny_app.load_first(state)) == {"banner": gr.skip()}


def test_legend_words_each_methods_fates():
    """The legend under the map: the method's own words (the registry's), only the fates it
    gives, and the note for a tower without CLS."""
    from tca.methods import METHODS

    for name, record in METHODS.items():
        legend = panels.legend_html(name)
        fates = record.fates
        for style, said in zip(render.FATES.values(), (fates.kept, fates.merged, fates.pruned)):
            assert (f'data-fate="{style.name}"' in legend) == (said is not None), (name, style)
            if said is not None:
                drawn = style.meaning.split("; ")[1]
                assert f"<b>{style.name}</b> ({said}; {drawn})" in legend.replace("&amp;", "&")
        assert panels.NO_CLS not in legend
    assert panels.legend_html("evit").count('class="sw"') == 2  # kept and pruned, no merging
    assert panels.legend_html("tome").count('class="sw"') == 2  # kept and merged, no pruning
    assert panels.legend_html().count('class="sw"') == 3


@pytest.mark.parametrize(
    "model,tokens",
    [
        (TINY, [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3),
        ("tca-tiny-timm-token", [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3),
        ("ViT-B-16-SigLIP2", [196] * 3 + [140] * 3 + [99] * 3 + [73] * 3),  # no CLS token
    ],
)
def test_every_event_on_every_tower(model, tokens, example_image, tmp_path):
    """Run (stream mode on), the page, Compare, the sweep and the downloads on open_clip's ViT, a
    timm ViT with a CLS token and SigLIP 2 (a timm tower without one), offline, random weights."""
    app = app_module.App(model, "none", exports=export.ExportDir(tmp_path))
    app_module.build_demo(model, "none", app=app, first_screen=None)
    assert ("SigLIP 2 B/16", "ViT-B-16-SigLIP2") in app.model_choices
    image = str(example_image)
    summary, shown, stream = _classify(app, image, model=model, stream=True)
    assert summary["tokens_per_layer"] == tokens
    assert summary["baseline_tokens_per_layer"] == [tokens[0]] * 12
    assert summary["reservoir"]["images_seen"] == 1 and summary["final"] == "corrected"
    r = shown.result
    assert summary["gmacs"]["condensed"] == r.flops_condensed.gmacs < r.flops_baseline.gmacs
    out = _show(app, shown, 11, stream_on=True, stream_state=stream)
    no_cls = tokens[0] == 196
    assert (panels.NO_CLS in out["legend"]["value"]) == no_cls
    assert (panels.NO_CLS in out["cost"]["value"]) == no_cls
    assert f"<td>{tokens[0]}</td><td>{tokens[-1]}</td>" in out["cost"]["value"]
    assert f"{tokens[-1]} tokens" in out["info"]["value"]
    assert len(out["strip"]["value"]) == 12 and "Images seen: 1" in out["stream"]["value"]
    assert out["map"]["value"].shape == (896, 896, 3)
    overlay = _named(app, app.show_layer(shown, 9, "fates", True, 0.5))
    word = "pool-query attention" if no_cls else "CLS attention"
    assert f"Overlay: {word} at block 9" in overlay["info"]["value"]
    cmp = _compare(app, image, model=model)
    state = cmp["compare_state"]
    assert list(state.results) == [m for m in EVERY_METHOD if not (no_cls and m == "ats")]
    if no_cls:  # ATS is listed with the reason it cannot run, by name
        assert "no CLS token" in state.refused["ats"]
        assert "not run: ats scores patches by their CLS attention" in cmp["compare_table"]
    for m in state.results:
        assert state.matches[m].within, m
    plot, table = _sweep(app, image, model=model, shown=shown)
    assert "the Run's baseline + 7 condensed passes" in table
    files = _named(app, app.export(shown, 11, "fates", None))
    data = json.loads(Path(files["json_file"]).read_text())
    assert data["tokens_per_layer"] == tokens and len(data["trace"]["layers"]) == 12
    assert data["image"]["model_view_px"] == [224, 224]
    if no_cls:  # ATS ranks by CLS attention: refused with its reason, by name
        with pytest.raises(
            gr.Error,
            match="ats scores patches by their CLS attention and this tower has no CLS token",
        ):
            _classify(app, image, model=model, method="ats")
