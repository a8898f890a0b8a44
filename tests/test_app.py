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
from tca import explore, export, follow, page, panels, render, serving, sweeps
from tca.weights import WEIGHTS_HELP

TINY = "tca-tiny-ViT"
LABELS = "cat, dog, tiger, fox"


# ------------------------------------------------------------------------ handler unit tests

@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory) -> app_module.App:
    return app_module.App(TINY, "none", exports=export.ExportDir(tmp_path_factory.mktemp("exports")))


class _Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, frac, desc=None):
        self.calls.append((frac, desc))


def _classify(app, image, labels=LABELS, **kw):
    args = dict(model=TINY, method="tca", keep_rate=0.7, layers="3,6,9", merge_centers=2,
                score="mean", templates="single", stream=False, stream_state=None)
    args.update(kw)
    return app.classify(image, labels, progress=_Progress(), **args)


def test_classify_handler_returns_the_api_summary(tiny_app, example_image):
    summary, state, stream = _classify(tiny_app, str(example_image))
    assert stream is None
    assert summary["labels"] == ["cat", "dog", "tiger", "fox"]  # order kept
    for key in ("baseline", "condensed"):
        assert abs(sum(summary[key]["probs"]) - 1.0) < 1e-4
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
    assert isinstance(state, explore.ExplorerRun) and state.view.shape == (224, 224, 3)


def _show(app, state, layer=9, view="fates", overlay=False, opacity=0.5, patch=None,
          shown_depth=12, stream_on=False, stream_state=None):
    return app.show_run(state, layer, view, overlay, opacity, patch, shown_depth, stream_on,
                        stream_state)


def test_show_run_renders_everything_from_the_cached_run(tiny_app, example_image):
    _, state, _ = _classify(tiny_app, str(example_image))
    out = _show(tiny_app, state)
    (banner, base, cond, shift, current, slider, info, chart, cost, strip, follow, stream_md,
     corrected, stale, depth, patch) = out
    assert "RANDOM WEIGHTS" in banner and "<details>" in banner  # operator help folded away
    assert set(base.value["confidences"][i]["label"] for i in range(4)) == {"cat", "dog", "tiger", "fox"}
    assert "tiger" in shift and "pp" in shift and "-0.0 pp" not in shift
    assert "Probability shift" in shift
    assert current.shape == (448, 448, 3)  # shown at 2x
    small = render.fate_map(state.view, state.trace, 9)
    assert np.array_equal(current[::2, ::2], small)
    assert slider.maximum == 11 and slider.value == 9
    assert "After block 9" in info and "(a condensing block): 74 tokens" in info
    assert np.array_equal(chart, page.chart_image(state, 9))
    assert "saved" in cost and f"{state.result.flops_baseline.gmacs:.2f}" in cost
    assert "warm-up" in cost
    # the strip: one (map, caption) per block, the shown block selected, condensing blocks marked
    assert strip["selected_index"] == 9 and len(strip["value"]) == 12
    assert [c for _, c in strip["value"]][3] == f"3 {panels.CONDENSING_MARK} \u00b7 141"
    # tiles are drawn on the image shrunk by 2 (patches of 16 px for this 32-px-patch model)
    tile_view = render.shrink(state.view, state.trace.grid, page.STRIP_SHRINK)
    assert tile_view.shape == (112, 112, 3)
    assert np.array_equal(strip["value"][9][0], render.fate_map(tile_view, state.trace, 9))
    assert "Click a patch" in follow
    assert "Stream mode is off" in stream_md and corrected.visible is False
    assert stale == "" and depth == 12 and patch is None
    # a run of another depth (ViT-L/14 after ViT-B/16) opens at its last block
    out = _show(tiny_app, state, layer=4, shown_depth=24)
    assert out[5].value == 11 and "After block 11" in out[6]
    # the same depth keeps the block the user chose
    assert _show(tiny_app, state, layer=4)[5].value == 4


def test_exports_name_the_image_and_the_settings(tiny_app, example_image):
    _, state, _ = _classify(tiny_app, str(example_image))
    png, gif, js = tiny_app.export(state, 11, "fates", None)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 6 * 224
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 12
    data = json.loads(Path(js).read_text())
    assert data["image"]["name"] == example_image.name
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
    monkeypatch.setattr(explore, "classify", boom)
    monkeypatch.setattr(tiny_app.cache.peek(TINY).clip.model.visual, "forward", boom)
    a, info_a, chart_a, _, strip_a = tiny_app.show_layer(state, 3, "fates", False, 0.5)
    b, info_b, chart_b, _, strip_b = tiny_app.show_layer(state, 11, "fates", False, 0.5)
    c, info_c, _, _, _ = tiny_app.show_layer(state, 11, "fates", True, 0.6)
    m, _, _, _, _ = tiny_app.show_layer(state, 11, "model", False, 0.5)
    assert not np.array_equal(a, b) and not np.array_equal(b, c) and not np.array_equal(b, m)
    assert not np.array_equal(chart_a, chart_b)  # the chart marks the shown block
    assert strip_a["selected_index"] == 3 and strip_b["selected_index"] == 11
    assert "141 tokens" in info_a and "74 tokens" in info_b
    assert "Overlay: CLS attention at block 9" in info_c
    # clicking a strip tile selects that block; the strip is not redrawn
    evt = gr.SelectData(None, {"index": 7, "value": None})
    out = tiny_app.pick_layer(state, "fates", False, 0.5, None, evt)
    assert len(out) == 5 and out[0].value == 7 and "After block 7" in out[2]
    assert np.array_equal(out[1], tiny_app.show_layer(state, 7, "fates", False, 0.5)[0])
    # the arrows step one block and stop at the ends
    assert tiny_app.step_layer(state, 7, 1, "fates", False, 0.5, None)[0].value == 8
    assert tiny_app.step_layer(state, 11, 1, "fates", False, 0.5, None)[0].value == 11
    assert tiny_app.step_layer(state, 0, -1, "fates", False, 0.5, None)[0].value == 0
    # follow a patch: a click on the big map at 2x
    trace = state.trace
    lv = render.layer_view(trace, 11)
    merged = int(np.flatnonzero(lv.fate.ravel() == 1)[0])
    r, c = divmod(merged, trace.grid[1])
    evt = gr.SelectData(None, {"index": [c * 32 + 5, r * 32 + 5], "value": None})
    patch, image, follow = tiny_app.pick_patch(state, 11, "fates", False, 0.5, evt)
    assert patch == merged and "Following patch" in follow and "merged into group" in follow
    assert np.array_equal(image, page.map_image(state, page.Display(11, patch=merged)))
    # a view change redraws the strip in that view
    _, strip = tiny_app.change_view(state, 11, "model", False, 0.5, None)
    assert len(strip["value"]) == 12
    tile_view = render.shrink(state.view, state.trace.grid, page.STRIP_SHRINK)
    assert np.array_equal(strip["value"][11][0], render.fate_map(tile_view, state.trace, 11,
                                                              view="model"))


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
                assert 1 <= s.attention_rank <= s.ranked_tokens <= trace.tokens_per_layer[s.layer - 1] - 1
        # once fused, always fused
        fates = [s.fate for s in steps]
        if "pruned" in fates:
            assert all(f == "pruned" for f in fates[fates.index("pruned"):])
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
    copy = tmp_path / "copy.jpg"  # the same picture under another path is not a change
    copy.write_bytes(example_image.read_bytes())
    assert tiny_app.check_stale(state, str(copy), *args[1:]) == ""
    assert tiny_app.check_stale(state, *args[:1], "cat,dog ,tiger, fox", *args[2:]) == ""
    for i, value in ((1, "cat, dog"), (3, "evit"), (4, 0.5), (5, "3,6"), (6, 3), (8, "imagenet80")):
        changed = list(args)
        changed[i] = value
        assert "Outdated" in tiny_app.check_stale(state, *changed), i
    other = sorted(example_image.parent.glob("*.jpg"))[-1]
    assert "Outdated" in tiny_app.check_stale(state, str(other), *args[1:])


def test_sweep_handler(tiny_app, example_image):
    plot, table = tiny_app.sweep(str(example_image), LABELS, TINY, "tca", "3,6,9", 2, "mean",
                                 "single", False, progress=_Progress())
    assert plot.ndim == 3 and plot.dtype == np.uint8
    assert table.count("<tr>") == 1 + len(sweeps.SWEEP_RATES)
    assert "1 baseline + 7 condensed passes" in table  # R = 1 is the baseline: no pass
    # after a Run of the same inputs its baseline is reused, with the same numbers
    _, state, _ = _classify(tiny_app, str(example_image))
    _, table2 = tiny_app.sweep(str(example_image), LABELS, TINY, "tca", "3,6,9", 2, "mean",
                               "single", False, state, progress=_Progress())
    assert "the Run's baseline + 7 condensed passes" in table2
    fresh = sweeps.sweep(tiny_app.cache, str(example_image), LABELS, TINY, "tca")
    reused = sweeps.sweep(tiny_app.cache, str(example_image), LABELS, TINY, "tca",
                           reuse=state.result)
    assert not reused.baseline_pass and fresh.baseline_pass
    for a, b in zip(fresh.points["tca"], reused.points["tca"]):
        assert a.gmacs == b.gmacs and a.top1 == b.top1
        assert a.top1_prob == pytest.approx(b.top1_prob, abs=1e-5)
        assert a.kl == pytest.approx(b.kl, abs=1e-5)
    # another image: the Run's baseline is not used
    other = sorted(example_image.parent.glob("*.jpg"))[-1]
    _, table3 = tiny_app.sweep(str(other), LABELS, TINY, "tca", "3,6,9", 2, "mean",
                               "single", False, state, progress=_Progress())
    assert "1 baseline + 7" in table3
    sw = sweeps.sweep(tiny_app.cache, str(example_image), LABELS, TINY, "evit")
    pts = sw.points["evit"]
    assert [p.keep_rate for p in pts] == list(sweeps.SWEEP_RATES)
    gm = [p.gmacs for p in pts]
    assert gm == sorted(gm) and gm[-1] == pytest.approx(sw.gmacs_baseline)
    assert pts[-1].kl == pytest.approx(0.0, abs=1e-6)  # R = 1 is the baseline
    assert pts[-1].base_label_prob == pytest.approx(max(sw.baseline.probs), abs=1e-6)
    assert all(p.kl >= -1e-9 for p in pts)
    with pytest.raises(gr.Error, match="condensing method"):
        tiny_app.sweep(str(example_image), LABELS, TINY, "none", "3,6,9", 2, "mean", "single",
                       False, progress=_Progress())
    both = sweeps.sweep(tiny_app.cache, str(example_image), LABELS, TINY, "tca",
                         methods=explore.COMPARE_METHODS)
    assert list(both.points) == list(explore.COMPARE_METHODS)
    assert sweeps.kl_divergence([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_first_screen_is_computed_once(tiny_app):
    first = tiny_app.first_screen()
    assert first is not None and tiny_app.first_screen() is first
    assert first.image_name == "chelsea.jpg" and first.result.config.keep_rate == 0.7
    demo = app_module.build_demo(TINY, "none", app=tiny_app)
    values = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert values["layer-slider"].value == 11
    assert values["condensed-label"].value is not None
    assert "74 tokens" in values["layer-info"].value


def test_stream_mode_reservoir_per_label_set(tiny_app, example_image):
    stream = None
    for i in range(3):
        summary, state, stream = _classify(tiny_app, str(example_image), stream=True,
                                           stream_state=stream)
        assert summary["reservoir"]["images_seen"] == i + 1
        assert "corrected" in summary["top"] and summary["final"] == "corrected"
    assert isinstance(stream, explore.StreamState)
    assert set(summary["reservoir"]["buckets"]) == {"cat", "dog", "tiger", "fox"}
    panel = panels.stream_html(state, stream, True)
    assert "Images seen: 3" in panel and "anchors inactive" in panel
    assert "Logits correction on this image" in panel
    # different labels: a new reservoir tied to them
    summary, state, stream = _classify(tiny_app, str(example_image), labels="cat, dog",
                                       stream=True, stream_state=stream)
    assert summary["reservoir"]["images_seen"] == 1
    assert set(summary["reservoir"]["buckets"]) == {"cat", "dog"}
    assert "labels changed" in stream.notice
    # stream mode only applies to TCA
    summary, _, _ = _classify(tiny_app, str(example_image), labels="cat, dog", method="evit",
                              stream=True, stream_state=stream)
    assert "reservoir" not in summary and "corrected" not in summary["top"]
    panel = _show(tiny_app, state, 11, stream_on=True, stream_state=stream)[11]
    assert "TCA only" not in panel
    _, evit_state, _ = _classify(tiny_app, str(example_image), labels="cat, dog", method="evit",
                                 stream=True, stream_state=stream)
    assert "Stream mode applies to TCA only" in _show(tiny_app, evit_state, 11, stream_on=True,
                                                      stream_state=stream)[11]
    stream, panel, corrected = tiny_app.reset_stream(stream, state, True)
    assert stream.reservoir.steps == 0 and "Reservoir cleared" in panel
    # with stream mode off, the reset says so (not "Stream mode is on")
    _, panel, _ = tiny_app.reset_stream(stream, state, False)
    assert "Reservoir cleared" in panel and "Stream mode is off" in panel


def test_compare_handler(tiny_app, example_image):
    out = tiny_app.compare(str(example_image), LABELS, TINY, 0.7, "3,6,9", 2, "mean", "single",
                           progress=_Progress())
    picture, base, tca_l, evit_l, tome_l, table, banner = out
    assert isinstance(picture, Image.Image) and picture.width > 4 * 224 and picture.height > 3 * 224
    assert set(base) == {"cat", "dog", "tiger", "fox"}
    for lab, name in ((tca_l, "TCA"), (evit_l, "EViT"), (tome_l, "ToMe")):
        assert lab.label.startswith(name) and "% GMACs saved" in lab.label
    for name in ("TCA", "EViT", "ToMe", "baseline CLIP"):
        assert name in table
    # every method is measured against the same (full) baseline: all save GMACs at R = 0.7
    for lab in (tca_l, evit_l, tome_l):
        saved = float(lab.label.split(": ")[1].split("%")[0])
        assert 20.0 < saved < 50.0
    assert "R = 0.7" in table


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

    cache = serving.ModelCache("openai", checkpoint="/w/b16.safetensors",
                               checkpoint_model="ViT-B-16-quickgelu", loader=loader)
    cache.get("ViT-B-16-quickgelu")
    cache.get("ViT-B-32-quickgelu")
    assert seen == [("ViT-B-16-quickgelu", "openai", "/w/b16.safetensors"),
                    ("ViT-B-32-quickgelu", "openai", None)]


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


def test_api_exposes_only_classify(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/classify"]
    assert api["unnamed_endpoints"] == {}
    params = [p["parameter_name"] for p in api["named_endpoints"]["/classify"]["parameters"]]
    assert params[:2] == ["image", "labels"]
    assert {"model", "method", "keep_rate", "layers", "merge_centers", "score", "templates",
            "stream"} <= set(params)
    assert "stream_state" not in params
    assert "tokens_per_layer" in api["named_endpoints"]["/classify"]["description"]
    returns = api["named_endpoints"]["/classify"]["returns"]
    assert len(returns) == 1 and returns[0]["component"] == "Json"


def test_api_classify_contract(client, example_image):
    out = client.predict(handle_file(str(example_image)), "cat, dog, car", method="evit",
                         keep_rate=0.5, api_name="/classify")
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


@pytest.mark.parametrize("kwargs,message", [
    (dict(image=None), "no image"),
    (dict(labels="cat"), "at least two"),
    (dict(labels=", ".join(f"l{i}" for i in range(300))), "too many labels"),
    (dict(labels="cat, " + "y" * 1000), "characters long"),
    (dict(keep_rate=5), "greater than maximum"),
    (dict(merge_centers=0), "merge centres K must be a whole number from 1"),
    (dict(layers="1,2,99"), "out of range"),
    (dict(method="nope"), "not in the list of choices"),
    (dict(unreadable=True), "not a readable image"),
])
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
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(handle_file(str(big)), "cat, dog", api_name="/classify")
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
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               TCA_MODEL="ViT-B-32-quickgelu", TCA_PRETRAINED="none", HF_HUB_OFFLINE="1",
               TCA_FIRST_SCREEN="background")  # serve at once; the first screen in a thread
    root = Path(app_module.__file__).parent
    proc = subprocess.Popen([sys.executable, str(root / "app.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info",
                                            timeout=2) as resp:
                    info = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "app.py did not start within 90 s"
                time.sleep(0.3)
        assert list(info["named_endpoints"]) == ["/classify"]
        params = info["named_endpoints"]["/classify"]["parameters"]
        model = next(p for p in params if p["parameter_name"] == "model")
        assert model["parameter_default"] == "ViT-B-32-quickgelu"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_load_hands_over_the_background_first_screen(tiny_app):
    out = tiny_app.load_first(None)
    assert len(out) == 16
    image, labels, state = out[:3]
    assert Path(image).name == "chelsea.jpg" and labels == "cat, dog, tiger, fox, rabbit"
    assert isinstance(state, explore.ExplorerRun) and state is not tiny_app.first_screen()  # a copy
    assert Path(out[7]).is_file() and out[8].value == 11 and "After block 11" in out[9]
    assert out[12]["selected_index"] == 11 and len(out[12]["value"]) == 12
    again = tiny_app.load_first(None)
    assert again[7] == out[7]  # the pictures are written once per process
    skipped = tiny_app.load_first(state)  # a session that already shows a Run keeps it
    assert len(skipped) == 16 and all(v == gr.skip() for v in skipped)
