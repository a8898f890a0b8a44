"""TCA Explorer: the Gradio app (layout and event wiring only; the handlers are
``tca.app.events``, the page's updates ``tca.app.page``, the Runs ``tca.app.runs``).

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Environment: TCA_MODEL (default ViT-B-16-quickgelu), TCA_PRETRAINED (default openai; "none" for
random weights), TCA_CHECKPOINT (a local weights file for TCA_MODEL), TCA_MODEL_CONFIGS (a folder
of extra open_clip model configs, e.g. tests/model_configs), TCA_QUEUE_SIZE (256),
TCA_FIRST_SCREEN (now: the first example's result is computed before serving and is part of the
page; background: serve at once, compute it in a thread, hand it over on page load; off),
TCA_BEHIND_PROXY (1: the first X-Forwarded-For hop is the visitor's address; default on Spaces),
TCA_UPLOAD_TOTAL_MB (2048: the upload bytes kept on disk for everyone together).
TCA_DEVICE (auto, cpu, cuda) and TCA_PRECISION (auto, fp32, bf16, fp16): where and in which
precision the models run (tca/app/device.py). /classify and /flops are MCP tools too.
Without reachable weights the app starts anyway on random weights and says so in a banner.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

import tca  # noqa: E402
from tca.app import device, limits, page, panels, serving, sweeps, tools, uploads  # noqa: E402
from tca.app.cleanup import delete_old_dirs, keep_deleting  # noqa: E402
from tca.app.events import (  # noqa: E402
    ASSETS,
    TOP_K,
    App,
    an_index,
    check_every_input,
    checked_input,
    checked_payloads,
    examples,
    image_input,
    join_admission,
    upload_policy,
    user_errors,
)
from tca.app.request import DEFAULT_CONFIG, KEEP_RATE_RANGE, PLAY_INTERVAL_S  # noqa: E402
from tca.app.runs import ALL_METHODS  # noqa: E402
from tca.app.shown import PLAY_LABEL, OnScreen  # noqa: E402
from tca.cli import register_model_configs  # noqa: E402
from tca.config import format_layers  # noqa: E402
from tca.methods import METHODS  # noqa: E402

tools.mcp_state_outputs()  # /classify's State outputs over MCP (Gradio 6.31)

MAX_UPLOAD = uploads.MAX_UPLOAD_BYTES  # bytes, for the upload route and every other way in
CONCURRENCY = 2  # events running at once; model events share one lane of MODEL_SLOTS
# Two model requests at once: the vision passes take turns (the cache's image lane) while a
# request with many new prompts encodes them beside it, so it holds up nobody's Run.
MODEL_SLOTS = 2
# A busy public Space: room for every visitor's one request (see serving.SessionGate).
QUEUE_SIZE = int(os.environ.get("TCA_QUEUE_SIZE", "256"))
STATE_TTL_S = 2 * 3600  # per-session state is dropped after two idle hours...
MAX_SESSIONS = 400  # ...and only the most recent sessions keep any (about 0.4 MB each)
DELETE_CACHE = (900, 3600)  # every 15 min, uploads and outputs older than an hour are deleted

METHOD_CHOICES = [(m.label, m.name) for m in METHODS.values()]
TEMPLATE_CHOICES = [
    ('one prompt: "a photo of a {}."', "single"),
    ("80 ImageNet prompts (slower first run)", "imagenet80"),
] + [
    (
        f'{name} (paper): "{tca.TEMPLATES[name][0]}"'
        if len(tca.TEMPLATES[name]) == 1
        else f"{name} (paper, {len(tca.TEMPLATES[name])} prompts)",
        name,
    )
    for name in tca.PRESET_TEMPLATES
    if name != "default"
]

# A 16:9 screen (1280x720 projector, 1920x1080): the map, the strip and the predictions in the
# first viewport. The page's order stays phone-first (predictions, map, strip); on a wide screen
# the results column becomes a grid: the map column on the left spanning two rows, the
# predictions and then the strip's column on the right. The header and banner are compact, the
# map box as tall as the screen allows, and fullscreen shows the map as large as the screen.
PRESENTER = """
@media (min-width: 1100px) {
  /* the title and its sentence on one line, the banner's operator help beside its sentence */
  #tca-header h1 {display: inline; font-size: 24px !important; margin: 0 12px 0 0 !important}
  #tca-header p {display: inline; font-size: 14px !important; margin: 0 !important}
  .tca-banner {padding: 4px 12px; font-size: 14px}
  .tca-banner details {display: inline !important; margin-left: 8px}
  .tca-banner details[open] {display: block !important}
  .tca-banner summary {display: inline}
  .tca-banner summary::before {content: "\\25b8  "}
  #weights-banner .html-container {padding: 4px 12px}
  #preds-row meter.bar {margin: 0 !important}
  #preds-row .confidence-set {padding-top: 0 !important; padding-bottom: 0 !important}
  #strip-caption {font-size: 13px}
  #results-col {display: grid !important; grid-template-columns: minmax(0, 11fr) minmax(0, 9fr);
    grid-template-rows: auto auto 1fr; gap: var(--layout-gap); align-items: start}
  #results-col > * {grid-column: 1 / -1}
  #results-col > #stale-notice {grid-row: 1}
  #stage-row {display: contents}
  #map-col {grid-column: 1; grid-row: 2 / span 2; width: auto !important; min-width: 0 !important}
  #results-col > #preds-row {grid-column: 2; grid-row: 2}
  #side-col {grid-column: 2; grid-row: 3; width: auto !important; min-width: 0 !important}
  #preds-row > div {min-width: 0 !important}
  /* as tall as the screen allows under the header, never taller than wide */
  #layer-map .image-container {aspect-ratio: 1 / 1; max-height: max(340px, calc(100vh - 235px))}
  #strip-head {align-items: center; flex-wrap: nowrap; gap: 8px}
  #layer-strip .grid-container {grid-template-columns: repeat(calc(var(--grid-cols) + 1),
    minmax(0, 1fr)) !important}
}
#layer-map {height: auto !important}
#layer-map .image-container, #layer-map .image-frame, #layer-map button {height: 100% !important}
#layer-map img {width: 100%; height: 100%; object-fit: contain}
/* the predictions compact: the top label is the first row already */
/* a 720 px high screen: the top 4 of each prediction (the shift table lists every label) */
@media (min-width: 1100px) and (max-height: 820px) {
  #preds-row .confidence-set:nth-of-type(n+5) {display: none}
}
#preds-row .output-class {display: none}
#preds-row .container {padding-top: 34px !important}
#preds-row label.float {font-size: 13px; white-space: nowrap; max-width: calc(100% - 8px);
  overflow: hidden; text-overflow: ellipsis; display: block}
#preds-row label.float span {display: none}
#preds-row .confidence-set {margin-bottom: 0 !important}
#preds-row .container {padding-bottom: 4px !important}
#preds-row dl.label {margin: 0 !important}
/* fullscreen: the map fills the screen (pixelated, aspect kept); clicks there would miss the
   patch (Gradio's click position assumes a shrunk picture), so following waits for the page */
#layer-map.fullscreen {width: 100vw !important; height: 100vh !important; background: #111}
#layer-map.fullscreen .image-container {aspect-ratio: auto !important; max-height: none !important;
  width: 100% !important; height: 100% !important}
#layer-map.fullscreen img {object-fit: contain; pointer-events: none}
"""

# The page on a phone (and wherever the visitor is): Run stays on screen while the settings are
# (sticky), the Outdated notice floats at the bottom of the screen, the three tabs fit without
# Gradio's "..." menu, the footer keeps its API link, the examples' header wraps.
FLOW = """
/* sticky needs no scroll container around it: Gradio's container hides its overflow (a scroll
   container), clip hides it the same without being one */
.gradio-container {overflow: clip !important}
#run-button {position: sticky; top: 6px; z-index: 30; box-shadow: 0 2px 8px rgba(0,0,0,.25)}
/* the notice's block has no height (it keeps its grid row: the accordions come after the stage)
   and the notice itself floats at the bottom of the screen */
#stale-notice {height: 0; min-height: 0; padding: 0; border: 0; overflow: visible;
  margin-bottom: calc(-1 * var(--layout-gap))}
#stale-notice .tca-stale {position: fixed; left: 50%; transform: translateX(-50%); bottom: 12px;
  z-index: 40; width: max-content; max-width: min(760px, calc(100vw - 24px));
  box-shadow: 0 4px 16px rgba(0,0,0,.3)}
#tca-examples th, #tca-examples th * {white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important}
footer .show-api, footer .show-api-divider {display: flex !important}
/* the follow table fits its column: "where it is" wraps, so the rank column is never cut */
.tca-follow .tca-table td:nth-child(2) {white-space: normal; min-width: 9em}
@media (max-width: 640px) {
  .tab-wrapper button {padding: 6px 7px !important; font-size: 14px !important}
}
"""

CSS = (
    """
.tca-banner {padding: 6px 12px; border-radius: 8px; margin: 2px 0; font-size: 15px}
.tca-banner details {font-size: 13px; margin-top: 2px}
.tca-banner summary {cursor: pointer}
.tca-random {background: #fee2e2; color: #7f1d1d; border-left: 6px solid #b91c1c}
.tca-ok {background: #dcfce7; color: #14532d; border: 1px solid #86efac}
.tca-wait {background: #fef9c3; color: #713f12; border: 1px solid #fde047}
.tca-stale {background: #fef3c7; color: #78350f; border: 2px solid #f59e0b; padding: 6px 12px;
  border-radius: 8px; font-size: 15px}
.tca-map img {image-rendering: pixelated}
#layer-strip img {image-rendering: pixelated}
#layer-strip .thumbnail-item.selected {outline: 5px solid #ff00c8; outline-offset: -1px}
#layer-strip .grid-wrap {max-height: none !important; height: auto !important; overflow: visible;
  min-height: 0 !important}
#layer-strip .caption-label {font-size: 13px; font-weight: 600; padding: 0 4px; opacity: 0.9}
/* every column inside the strip's box at every width: Gradio's tiles keep a 100 px minimum,
   which pushed the 4th column of a 24-block model (blocks 3, 7, ..., 23) out of view */
#layer-strip .grid-container {grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr))
  !important; grid-auto-rows: min-content !important}
#layer-strip .caption-label {font-size: 12px; padding: 0 3px; max-width: 100%}
#layer-strip .thumbnail-item {min-width: 0; width: 100%; height: auto; aspect-ratio: 1}
.tca-legend {line-height: 1.9}
.tca-cost .big {font-size: 22px; font-weight: 700}
.tca-cost .saved {color: #15803d}
.tca-scroll {overflow-x: auto; max-width: 100%}
.tca-table {border-collapse: collapse; font-size: 14px}
.tca-table td, .tca-table th {padding: 2px 8px; border-bottom: 1px solid #e5e7eb; text-align: left}
.tca-table td {white-space: nowrap}
.tca-table td.lab, .tca-table td.wrap {white-space: normal; overflow-wrap: break-word; min-width: 6em}
.tca-cost .tca-table td {white-space: normal; padding: 2px 5px}
.tca-shift .tca-table {font-size: 13px}
.tca-shift .tca-table td, .tca-shift .tca-table th {padding: 2px 4px}
.tca-shift .tca-table td.lab {min-width: 4em}
.tca-follow tr.here {background: #fde7f7}
.tca-up {color: #15803d} .tca-down {color: #b91c1c}
/* Gradio's dark theme recolours <b>, <summary> and links to its light text colour: the banners
   keep their own dark ink on their light backgrounds (WCAG AA in both themes), and the shift
   colours and the followed row get dark-theme variants */
.tca-banner b, .tca-banner summary, .tca-banner details, .tca-banner a, .tca-stale b,
.tca-stale a {color: inherit !important}
.dark .tca-up {color: #4ade80} .dark .tca-down {color: #f87171}
.dark .tca-follow tr.here {background: #5b1a4a}
#depth-row button {min-width: 3em; max-width: 5em}
/* examples: the labels wrap, so the thumbnails never scroll out of the column */
#tca-examples table {table-layout: fixed; width: 100%}
#tca-examples td.textbox {text-align: left; white-space: normal; overflow-wrap: anywhere}
#tca-examples td:first-child, #tca-examples th:first-child {width: 88px}
@media (min-width: 1100px) { #settings-col {order: -1} }
"""
    + PRESENTER
    + """
/* a phone: the map box is as tall as the map, not a fixed 470 px with blank bands */
@media (max-width: 700px) {
  #layer-map {height: auto !important}
  #layer-map .image-container, #layer-map .image-frame, #layer-map button, #layer-map img
    {height: auto !important}
}
"""
    + FLOW
)

API_DESCRIPTION = (
    "Zero-shot classification of one image by baseline CLIP and token-condensed CLIP. Returns "
    "one JSON object: labels; baseline / condensed (and in stream mode corrected) probabilities "
    "and logits; top-5 lists; the per-label probability shift; tokens_per_layer and "
    "baseline_tokens_per_layer; gmacs {baseline, condensed, saved_percent, convention, per-layer}; "
    "timings_ms; settings; random_weights and weights_note."
)

SCROLL_TO_MAP = (
    "() => { const m = document.querySelector('#layer-map');"
    " if (m) m.scrollIntoView({behavior: 'smooth', block: 'nearest'}); }"
)
# After Run (inputs accepted): the predictions come into view when they are not (a phone's
# visitor presses Run among the settings, far below the results)
SCROLL_TO_RESULTS = (
    "() => { const p = document.querySelector('#preds-row'); if (!p) return;"
    " const r = p.getBoundingClientRect();"
    " if (r.top < 0 || r.top > window.innerHeight * 0.5)"
    " p.scrollIntoView({behavior: 'smooth', block: 'start'}); }"
)


def build_demo(
    model_name: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    preload: bool = False,
    app: App | None = None,
    first_screen: str | None = "now",
    delete_cache: tuple[int, int] | None = DELETE_CACHE,
) -> gr.Blocks:
    """The whole UI. ``model_name`` / ``pretrained`` default to $TCA_MODEL / $TCA_PRETRAINED;
    ``preload`` starts loading the default model in the background right away;
    ``delete_cache``: (every s, older than s) for Gradio's uploads and outputs; None: nothing
    is deleted (tests that build several apps in one process).

    first_screen: "now" runs the first curated example while building, so its result is part of
    the page itself; "background" serves at once and runs it in a background thread, the page
    load event then fills it in (waiting for it only on the first visits after start-up, which
    keeps the cold start short); None: no first screen."""
    register_model_configs()
    model_name = model_name or os.environ.get("TCA_MODEL") or tca.DEFAULT_MODEL
    if pretrained is None:
        pretrained = os.environ.get("TCA_PRETRAINED", tca.DEFAULT_PRETRAINED)
    app = app or App(model_name, pretrained, checkpoint)
    if first_screen == "background":
        threading.Thread(target=app.first_screen, name="first-screen", daemon=True).start()
    elif preload:
        app.cache.preload(model_name)
    # the first screen is built into the page from the same parts every Run shows
    first = app.first_parts() if first_screen == "now" else None
    got = first or {}
    items = examples()
    example0 = items[0] if items and first is not None else [None, ""]
    depth0 = got["depth"] if first is not None else 12
    d = DEFAULT_CONFIG
    ui: dict[str, Any] = {}

    with gr.Blocks(
        title="TCA Explorer: token condensation in CLIP", delete_cache=delete_cache
    ) as demo:
        demo.tca_app = app  # for tests and tools
        gr.Markdown(
            "# TCA Explorer\nSee how **token condensation** "
            f"({', '.join(m.title for m in METHODS.values() if m.step is not None)}) prunes and "
            "merges CLIP's image tokens, block by block, and what it costs and changes.",
            elem_id="tca-header",
        )
        ui["banner"] = gr.HTML(
            **page.initial(got.get("banner"), value=app.banner_html(model_name)),
            elem_id="weights-banner",
        )
        # per session: the last Run (a copy of the first screen to start with), the reservoir,
        # the followed patch and the depth of the run on screen
        ui["run"] = gr.State(
            app.first_screen() if first is not None else None, time_to_live=STATE_TTL_S
        )
        ui["stream_state"] = gr.State(None, time_to_live=STATE_TTL_S)
        ui["patch"] = gr.State(None, time_to_live=STATE_TTL_S)
        ui["depth"] = gr.State(depth0, time_to_live=STATE_TTL_S)
        # the block and followed patch this session's page shows, kept on the server (display
        # events draw from it under its lock: no answer brings back an unfollowed patch)
        ui["on_screen"] = gr.State(OnScreen(), time_to_live=STATE_TTL_S)
        ui["play_timer"] = gr.Timer(PLAY_INTERVAL_S, active=False)

        with gr.Tab("Explore", id="explore"):
            with gr.Row(elem_id="tca-main"):
                # results first in the page (a phone shows them before the settings); on a wide
                # screen CSS moves the settings column to the left
                with gr.Column(scale=5, min_width=340, elem_id="results-col"):
                    ui["stale"] = gr.HTML("", elem_id="stale-notice")
                    with gr.Row(elem_id="preds-row"):
                        ui["baseline"] = gr.Label(
                            **page.initial(got.get("baseline"), label="Baseline CLIP"),
                            num_top_classes=TOP_K,
                            elem_id="baseline-label",
                            min_width=200,
                            scale=2,
                        )
                        ui["condensed"] = gr.Label(
                            **page.initial(got.get("condensed"), label="Condensed"),
                            num_top_classes=TOP_K,
                            elem_id="condensed-label",
                            min_width=200,
                            scale=2,
                        )
                    # the stage: the map (left) and the strip (right); on a wide screen CSS puts
                    # the predictions above the strip, beside the map (see CSS: PRESENTER)
                    with gr.Row(elem_id="stage-row"):
                        with gr.Column(scale=3, min_width=320, elem_id="map-col"):
                            ui["map"] = gr.Image(
                                **page.initial(got.get("map"), value=None),
                                label="Token map",
                                type="numpy",
                                format="png",
                                show_label=False,
                                interactive=False,
                                height=470,
                                elem_classes=["tca-map"],
                                elem_id="layer-map",
                                buttons=["download", "fullscreen"],
                            )
                            ui["view"] = gr.Radio(
                                page.VIEW_CHOICES,
                                value="fates",
                                show_label=False,
                                elem_id="view-toggle",
                            )
                            with gr.Row(elem_id="depth-row"):
                                prev_btn = gr.Button(
                                    "\u25c0", size="sm", elem_id="prev-block", min_width=40
                                )
                                ui["layer"] = gr.Slider(
                                    0,
                                    step=1,
                                    label="Depth: after block",
                                    scale=6,
                                    elem_id="layer-slider",
                                    **page.initial(
                                        got.get("layer"), maximum=depth0 - 1, value=depth0 - 1
                                    ),
                                )
                                next_btn = gr.Button(
                                    "\u25b6", size="sm", elem_id="next-block", min_width=40
                                )
                            ui["info"] = gr.Markdown(
                                **page.initial(got.get("info"), value=""), elem_id="layer-info"
                            )
                            ui["legend"] = gr.HTML(
                                **page.initial(got.get("legend"), value=panels.legend_html()),
                                elem_id="legend",
                            )
                            ui["follow"] = gr.HTML(
                                **page.initial(got.get("follow"), value=""), elem_id="follow-panel"
                            )
                            ui["why"] = gr.Image(
                                **page.initial(got.get("why"), value=None, visible=False),
                                label="Why this patch? The score each condensing block ranked by",
                                show_label=False,
                                type="numpy",
                                format="png",
                                interactive=False,
                                elem_id="why-chart",
                                buttons=["download"],
                            )
                            ui["stop_follow"] = gr.Button(
                                "Stop following",
                                size="sm",
                                elem_id="stop-following",
                                **page.initial(got.get("stop_follow"), visible=False),
                            )
                            with gr.Row():
                                ui["overlay"] = gr.Checkbox(False, label="CLS-attention overlay")
                                ui["opacity"] = gr.Slider(
                                    0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity"
                                )
                        with gr.Column(scale=2, min_width=300, elem_id="side-col"):
                            with gr.Row(elem_id="strip-head"):
                                # ▶ play beside the strip it plays through: on a 1280x720 screen
                                # it stays in the first viewport
                                ui["play"] = gr.Button(
                                    PLAY_LABEL,
                                    size="sm",
                                    variant="primary",
                                    elem_id="play-button",
                                    min_width=96,
                                    scale=0,
                                )
                                gr.Markdown(
                                    f"**All blocks from one pass**, click one · block "
                                    f"{panels.CONDENSING_MARK} = condensing · tokens after it",
                                    elem_id="strip-caption",
                                )
                            ui["strip"] = gr.Gallery(
                                **page.initial(
                                    got.get("strip"), value=None, columns=page.STRIP_COLUMNS
                                ),
                                show_label=False,
                                label="All blocks",
                                height="auto",
                                allow_preview=False,
                                format="png",
                                object_fit="contain",
                                elem_id="layer-strip",
                                buttons=[],
                            )
                            ui["chart"] = gr.Image(
                                **page.initial(got.get("chart"), value=None),
                                label="Tokens per block",
                                show_label=False,
                                type="numpy",
                                format="png",
                                interactive=False,
                                elem_id="tokens-chart",
                                buttons=["download"],
                            )
                            ui["shift"] = gr.HTML(
                                **page.initial(got.get("shift"), value=""), elem_id="shift"
                            )
                            ui["cost"] = gr.HTML(
                                **page.initial(
                                    got.get("cost"), value="<i>Run to see GMACs and latency.</i>"
                                ),
                                elem_id="cost-panel",
                            )
                    with gr.Accordion(
                        "Keep-rate sweep: where does this image break?",
                        open=False,
                        elem_id="sweep-accordion",
                    ):
                        gr.Markdown(
                            "Runs the method at keep rates "
                            f"{', '.join(f'{r:g}' for r in sweeps.SWEEP_RATES)} on the "
                            "image and labels above, as one job; or, at **equal GMACs**, "
                            "each method at the keep rate whose cost matches "
                            f"{', '.join(f'{f:.0%}' for f in sweeps.SWEEP_COST_FRACTIONS)} "
                            "of the baseline's (KL and top-1 against GMACs)."
                        )
                        with gr.Row():
                            sweep_all = gr.Checkbox(
                                False,
                                label=f"all {len(ALL_METHODS)} methods (slower)",
                                elem_id="sweep-all",
                            )
                            sweep_by = gr.Radio(
                                [("keep rates", "rate"), ("equal GMACs", "gmacs")],
                                value="rate",
                                label="Points at",
                                elem_id="sweep-by",
                            )
                            sweep_btn = gr.Button("Run the sweep", elem_id="sweep-button")
                        ui["sweep_plot"] = gr.Image(
                            label="Sweep",
                            show_label=False,
                            type="numpy",
                            format="png",
                            interactive=False,
                            elem_id="sweep-plot",
                            buttons=["download"],
                        )
                        ui["sweep_table"] = gr.HTML(elem_id="sweep-table")
                    with gr.Accordion(
                        "Stream mode: TCA's reservoir, anchors and logits correction", open=False
                    ):
                        with gr.Row():
                            stream_on = gr.Checkbox(
                                False,
                                label="Stream mode (this session only)",
                                elem_id="stream-toggle",
                            )
                            reset_btn = gr.Button("Reset reservoir", size="sm")
                        ui["stream"] = gr.HTML(
                            panels.stream_html(None, None, False), elem_id="stream-panel"
                        )
                        demo_btn = gr.Button(
                            "\u25b6 One-click demo: 8 bundled images stream in until the "
                            "anchors switch on, then the cat with and without them",
                            elem_id="stream-demo-button",
                        )
                        ui["demo_text"] = gr.HTML(elem_id="stream-demo")
                        ui["demo_picture"] = gr.Image(
                            visible=False,
                            show_label=False,
                            label="Stream demo",
                            type="pil",
                            format="png",
                            interactive=False,
                            elem_id="stream-demo-picture",
                            buttons=["download"],
                        )
                        ui["corrected"] = gr.Label(
                            num_top_classes=TOP_K,
                            visible=False,
                            label="After the logits correction",
                        )
                    with gr.Accordion(
                        "Export: strip PNG, animated GIF of all blocks, JSON", open=False
                    ):
                        export_btn = gr.Button(
                            "Prepare the downloads", size="sm", elem_id="export-button"
                        )
                        with gr.Row():
                            ui["strip_file"] = gr.File(
                                label="All blocks (PNG)", elem_id="strip-file"
                            )
                            ui["gif_file"] = gr.File(
                                label="Play through depth (GIF)", elem_id="gif-file"
                            )
                            ui["json_file"] = gr.File(label="Whole run (JSON)", elem_id="json-file")
                    with gr.Accordion("API result (what /classify returns)", open=False):
                        api_json = gr.JSON(label="classify", elem_id="api-json")
                with gr.Column(scale=2, min_width=300, elem_id="settings-col"):
                    ui["image"] = image_input(
                        upload_policy(MAX_UPLOAD),
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=260,
                        elem_id="image-input",
                        value=example0[0],
                    )
                    ui["labels"] = gr.Textbox(
                        label="Candidate labels (comma-separated or one per line; Shift+Enter "
                        "runs)",
                        value=example0[1],
                        placeholder="cat, dog, car",
                        lines=2,
                        max_lines=8,
                        elem_id="labels-input",
                    )
                    run_btn = gr.Button("Run", variant="primary", elem_id="run-button")
                    examples_loaded = None
                    if items:
                        # a click fills the inputs and runs (wire): a curated example's Run is
                        # computed once and kept in a gr.Cache (App.example_runs) for everyone
                        shown_examples = gr.Examples(
                            items,
                            inputs=[ui["image"], ui["labels"]],
                            cache_examples=False,
                            elem_id="tca-examples",
                            label="Examples (public-domain photos, see assets/CREDITS.md)",
                        )
                        examples_loaded = shown_examples.load_input_event
                    with gr.Accordion("Settings", open=True):
                        model = gr.Dropdown(
                            app.model_choices,
                            value=model_name,
                            label="Model",
                            # the precision the models run in, and how to switch it
                            info=f"Precision: {app.placement.describe()}",
                            elem_id="model-select",
                        )
                        method = gr.Radio(METHOD_CHOICES, value=d.method, label="Method")
                        keep_rate = gr.Slider(
                            KEEP_RATE_RANGE[0],
                            KEEP_RATE_RANGE[1],
                            value=d.keep_rate,
                            step=0.05,
                            label="Keep rate R",
                            # the "d" the cost panel shows: the official TCA code's rate
                            info="share of the tokens each condensing block keeps. TCA runs it "
                            "as the official code's rate d ≈ (1 − R)/3 (R=0.7 → d=0.1): of N "
                            "patches, about 2dN merge into K tokens and dN fuse into one",
                        )
                        with gr.Row():
                            layers = gr.Textbox(
                                format_layers(d.layers),
                                label="Condensing blocks (0-based)",
                                elem_id="layers-input",
                            )
                            # no minimum / maximum here: the request checks the range and names
                            # the field in its message
                            merge_centers = gr.Number(
                                d.merge_centers,
                                precision=0,
                                label="Merge centres K (TCA, 1-16)",
                                elem_id="merge-centers",
                            )
                        score = gr.Dropdown(
                            [("head-mean CLS attention", "mean"), ("cross-head rank", "rank")],
                            value=d.score,
                            label="Token score (TCA)",
                        )
                        templates = gr.Dropdown(
                            TEMPLATE_CHOICES, value="single", label="Prompt templates"
                        )

        with gr.Tab("Compare methods", id="compare") as compare_tab:
            gr.Markdown(
                "Every method ("
                + ", ".join(METHODS[m].title for m in ALL_METHODS)
                + ") on the **image, labels and settings of the Explore tab**, at the same "
                "keep rate R or at the same cost (each method's R solved for equal GMACs)."
            )
            ui["compare_stale"] = gr.HTML("", elem_id="compare-stale")
            with gr.Row():
                ui["compare_by"] = gr.Radio(
                    [
                        ("equal GMACs: TCA's cost at the Explore tab's R", "tca"),
                        ("equal GMACs: the target below", "gmacs"),
                        ("equal keep rate R", "rate"),
                    ],
                    value="tca",
                    label="Match the methods by",
                    elem_id="compare-by",
                    scale=3,
                )
                ui["compare_target"] = gr.Number(
                    None, label="Target GMACs", elem_id="compare-target", scale=1
                )
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-button")
            ui["compare_state"] = gr.State(None, time_to_live=STATE_TTL_S)
            ui["compare_table"] = gr.HTML(
                "<i>Press Compare to compare every method on the Explore tab's inputs.</i>",
                elem_id="compare-table",
            )
            ui["compare_baseline"] = gr.Label(
                num_top_classes=3, label="Baseline CLIP", elem_id="compare-baseline"
            )
            ui["compare_picture"] = gr.Image(
                label="Token maps",
                show_label=False,
                type="pil",
                interactive=False,
                format="png",
                elem_classes=["tca-map"],
                elem_id="compare-maps",
                buttons=["download", "fullscreen"],
            )
            gr.Markdown("**Where two methods disagree**, at the last condensing block")
            method_pairs = [(METHODS[m].title, m) for m in ALL_METHODS]
            with gr.Row():
                ui["compare_a"] = gr.Dropdown(
                    method_pairs, value="tca", label="Method A", elem_id="compare-a"
                )
                ui["compare_b"] = gr.Dropdown(
                    method_pairs, value="evit", label="Method B", elem_id="compare-b"
                )
            with gr.Row():
                ui["compare_disagree_picture"] = gr.Image(
                    label="Disagreement map",
                    show_label=False,
                    type="numpy",
                    interactive=False,
                    format="png",
                    elem_classes=["tca-map"],
                    elem_id="compare-disagree-map",
                    buttons=["download"],
                    scale=1,
                )
                ui["compare_disagree"] = gr.HTML(elem_id="compare-disagree")

        with gr.Tab("How it works", id="how"):
            gr.Markdown(panels.how_it_works_md())

        app.ui = ui
        # a value a control cannot take is refused in one line naming the control
        for comp, field in (
            (ui["labels"], "labels"),
            (model, "model"),
            (method, "method"),
            (keep_rate, "keep rate R"),
            (layers, "condensing blocks"),
            (merge_centers, "merge centres K"),
            (score, "token score"),
            (templates, "prompt templates"),
            (ui["layer"], "depth"),
            (ui["view"], "view"),
            (ui["overlay"], "overlay"),
            (ui["opacity"], "overlay opacity"),
            (stream_on, "stream mode"),
            (sweep_all, "all three methods"),
            (ui["compare_by"], "compare at"),
            (ui["compare_target"], "target GMACs"),
            (ui["compare_a"], "first method"),
            (ui["compare_b"], "second method"),
            (ui["play"], "play"),
        ):
            checked_input(comp, field)
        if items:  # a click on an example sends its row number
            checked_input(shown_examples.dataset, "example", an_index(len(items)))
        checked_payloads(demo)
        wire(
            app,
            ui,
            dict(
                run=run_btn,
                prev=prev_btn,
                next=next_btn,
                clear=ui["stop_follow"],
                sweep=sweep_btn,
                reset=reset_btn,
                export=export_btn,
                compare=compare_btn,
                demo=demo_btn,
                compare_tab=compare_tab,
            ),
            controls=[
                ui["image"],
                ui["labels"],
                model,
                method,
                keep_rate,
                layers,
                merge_centers,
                score,
                templates,
            ],
            stream_on=stream_on,
            sweep_all=sweep_all,
            api_json=api_json,
            sweep_by=sweep_by,
            examples_loaded=examples_loaded,
        )
        check_every_input(demo)  # the controls not named above, by their labels
        # no-image API tools (and MCP tools for agents): the token schedule and GMACs
        gr.api(user_errors(tools.flops), api_name="flops", concurrency_limit=None)
        if first_screen == "background" and items:
            demo.load(
                app.load_first,
                [ui["run"]],
                [ui["image"], ui["labels"], ui["run"], *(ui[n] for n in page.RUN_PARTS)],
                queue=False,
                api_visibility="private",
                show_progress="hidden",
            )
        elif first is None:
            demo.load(
                app.banner, None, [ui["banner"]], api_visibility="private", show_progress="hidden"
            )
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    if delete_cache:
        keep_deleting(demo, *delete_cache)
        # the inline (data: URL) images the request limits decoded into the upload folder
        keep_deleting(
            demo,
            *delete_cache,
            delete=lambda _, age: delete_old_dirs(
                gr.utils.get_upload_folder(), limits.INLINE_PREFIX, age
            ),
        )
    return demo


def wire(
    app: App,
    ui: dict[str, Any],
    buttons: dict[str, Any],
    controls: list[Any],
    stream_on: Any,
    sweep_all: Any,
    api_json: Any,
    sweep_by: Any = None,
    examples_loaded: Any = None,
) -> None:
    """Every event: which handler, which inputs, which components it may update.
    examples_loaded: the curated examples' input-filling event (a Run follows it)."""
    quiet: dict[str, Any] = dict(api_visibility="private", show_progress="hidden")
    model_lane: dict[str, Any] = dict(
        concurrency_limit=MODEL_SLOTS, concurrency_id=serving.MODEL_LANE
    )
    run_parts = [ui[n] for n in page.RUN_PARTS]
    layer_parts = [ui[n] for n in ("layer", *page.LAYER_PARTS, "strip")]
    display = [ui["run"], ui["layer"], ui["view"], ui["overlay"], ui["opacity"], ui["patch"]]
    on_screen = ui["on_screen"]

    # the page checks its inputs first (an event without outputs: a mistake shows as one toast and
    # never as error badges over the last run's panels); the API calls classify directly
    checked = gr.on(
        [buttons["run"].click, ui["labels"].submit],
        app.check_inputs,
        inputs=controls,
        outputs=None,
        api_visibility="private",
        show_progress="hidden",
    )
    checked.success(None, None, None, js=SCROLL_TO_RESULTS, api_visibility="private")
    starts = [(checked, dict(api_name="classify", api_description=API_DESCRIPTION))]
    if examples_loaded is not None:  # a curated example runs once its inputs are filled in
        starts.append(
            (
                examples_loaded.then(
                    app.check_inputs,
                    controls,
                    None,
                    api_visibility="private",
                    show_progress="hidden",
                ),
                dict(api_visibility="private"),
            )
        )
    for start, api in starts:
        run_evt = start.success(
            app.classify,
            inputs=[*controls, stream_on, ui["stream_state"]],
            outputs=[api_json, ui["run"], ui["stream_state"]],
            show_progress_on=[ui["baseline"], ui["condensed"], ui["map"]],
            **api,
            **model_lane,
        )
        run_evt.success(
            app.show_run,
            [*display[:-1], ui["patch"], ui["depth"], stream_on, ui["stream_state"], on_screen],
            run_parts,
            **quiet,
        )
    shown = [*display, on_screen]  # + the session's OnScreen: what its page shows now
    ui["layer"].input(app.show_layer, shown, layer_parts, trigger_mode="always_last", **quiet)
    ui["overlay"].change(app.show_layer, shown, layer_parts, **quiet)
    ui["opacity"].input(app.show_layer, shown, layer_parts, trigger_mode="always_last", **quiet)
    for btn, delta in ((buttons["prev"], -1), (buttons["next"], 1)):
        btn.click(
            lambda s, l, v, o, op, p, on, _d=delta: app.step_layer(s, l, _d, v, o, op, p, on),
            shown,
            layer_parts,
            **quiet,
        )
    ui["strip"].select(app.pick_layer, [ui["run"], *shown[2:]], layer_parts, **quiet)
    ui["strip"].select(None, None, None, js=SCROLL_TO_MAP, api_visibility="private")
    follow_parts = [ui[n] for n in page.FOLLOW_PARTS]
    ui["map"].select(app.pick_patch, [*display[:-1], on_screen], follow_parts, **quiet)
    buttons["clear"].click(app.clear_patch, [*display[:-1], on_screen], follow_parts, **quiet)
    ui["view"].change(app.change_view, shown, [ui["map"], ui["strip"], ui["info"]], **quiet)
    # ▶ play: the button starts / stops a timer whose ticks step the blocks; a tick's event runs
    # alone (trigger_mode "once": no tick is queued while one is pending), the timer lives in the
    # visitor's page (it stops with it) and stops itself on the last block
    play_parts = [*layer_parts, ui["play_timer"], ui["play"]]
    ui["play"].click(
        app.toggle_play,
        [ui["run"], ui["play"], *shown[1:]],
        play_parts,
        trigger_mode="once",
        **quiet,
    )
    ui["play_timer"].tick(app.play_tick, shown, play_parts, trigger_mode="once", **quiet)
    for comp in controls:
        comp.change(
            app.check_stale,
            [ui["run"], *controls],
            [ui["stale"]],
            trigger_mode="always_last",
            **quiet,
        )
    ui["image"].upload(app.check_image, [ui["image"]], [ui["image"]], **quiet)
    stream_parts = [ui["stream_state"], ui["stream"], ui["corrected"]]
    buttons["reset"].click(
        app.reset_stream,
        [ui["stream_state"], ui["run"], stream_on],
        stream_parts,
        api_visibility="private",
    )
    buttons["demo"].click(
        app.stream_demo,
        [controls[2], controls[4]],
        [ui["demo_text"], ui["demo_picture"]],
        api_visibility="private",
        **model_lane,
    )
    stream_on.change(
        app.stream_toggled, [stream_on, ui["run"], ui["stream_state"]], [ui["stream"]], **quiet
    )
    controls[2].change(app.banner, [controls[2]], [ui["banner"]], **quiet)
    controls[2].change(app.model_layers, [controls[2]], [controls[5]], **quiet)
    buttons["export"].click(
        app.export,
        [ui["run"], ui["layer"], ui["view"], ui["patch"]],
        [ui["strip_file"], ui["gif_file"], ui["json_file"]],
        api_visibility="private",
    )
    buttons["sweep"].click(
        app.sweep,
        [*controls, sweep_all, ui["run"], sweep_by],
        [ui["sweep_plot"], ui["sweep_table"]],
        api_visibility="private",
        **model_lane,
    )
    compare_parts = [
        ui[n]
        for n in (
            "compare_state",
            "compare_stale",
            "compare_picture",
            "compare_baseline",
            "compare_table",
            "banner",
            "compare_disagree_picture",
            "compare_disagree",
            "compare_target",
        )
    ]
    matching = [ui["compare_by"], ui["compare_target"]]
    pair = [ui["compare_a"], ui["compare_b"]]
    buttons["compare"].click(
        app.compare,
        [*controls, *matching, *pair],
        compare_parts,
        api_visibility="private",
        **model_lane,
    )
    buttons["compare_tab"].select(
        app.open_compare,
        [ui["compare_state"], *controls, *matching, *pair],
        compare_parts,
        api_visibility="private",
        **model_lane,
    )
    for comp in (*controls, *matching):
        comp.change(
            app.check_compare_stale,
            [ui["compare_state"], *controls, *matching],
            [ui["compare_stale"]],
            trigger_mode="always_last",
            **quiet,
        )
    for comp in pair:
        comp.change(
            app.compare_disagree,
            [ui["compare_state"], *pair],
            [ui["compare_disagree_picture"], ui["compare_disagree"]],
            **quiet,
        )


def limits_middleware(
    budget: limits.UploadBudget | None = None, demo: gr.Blocks | None = None
) -> list[Middleware]:
    """The request limits, outermost first, as the FastAPI app's own middleware (launch()'s
    ``app_kwargs``), so they sit in front of every route Gradio serves: bodies over 16 MB
    refused before they are read; uploads charged per visitor and in total disk; each event's
    inputs bounded (inline images become upload files). ``budget``: the upload budget (default:
    50 MB per visitor, refilled over 10 min; $TCA_UPLOAD_TOTAL_MB in total). With ``demo``, a
    visitor's second model request is refused before it joins the queue."""
    if budget is None:
        total = int(os.environ.get("TCA_UPLOAD_TOTAL_MB", "2048"))
        budget = limits.UploadBudget(total_bytes=total * limits.MiB)
    proxied = limits.behind_proxy()
    return [
        Middleware(limits.BodyLimit),  # type: ignore[arg-type]
        Middleware(limits.UploadLimit, budget=budget, behind_proxy=proxied),  # type: ignore[arg-type]
        Middleware(
            limits.EventInputs,  # type: ignore[arg-type]
            folder=gr.utils.get_upload_folder(),
            budget=budget,
            behind_proxy=proxied,
            admit=join_admission(demo, demo.tca_app.gate, proxied) if demo is not None else None,
        ),
    ]


def launch_options(
    budget: limits.UploadBudget | None = None, demo: gr.Blocks | None = None
) -> dict[str, Any]:
    """launch() arguments shared by ``main`` and the tests (Gradio 6: theme / css go here).
    ``allowed_paths``: the curated example photos only (the first screen shows one);
    ``app_kwargs``: the request limits in front of every route (:func:`limits_middleware`)."""
    return dict(
        app_kwargs={"middleware": limits_middleware(budget, demo)},
        # Soft's subdued grey (info lines such as the precision, placeholders) is 2.5:1 on
        # white; a darker grey meets WCAG AA (4.5:1) in the light theme
        theme=gr.themes.Soft().set(body_text_color_subdued="*neutral_600"),
        css=CSS,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(ASSETS)],
        state_session_capacity=MAX_SESSIONS,
        # a public Space: unexpected exceptions (and Gradio's own path refusals, which
        # echo the path) show no text; every user error is a gr.Error and shows
        show_error=False,
        # /classify and /flops as MCP tools for agents (at /gradio_api/mcp/)
        mcp_server=True,
    )


def main() -> None:
    # one line per refused request (tca.app.limits, tca.app.events), never a traceback
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model = os.environ.get("TCA_MODEL") or tca.DEFAULT_MODEL
    pretrained = os.environ.get("TCA_PRETRAINED", tca.DEFAULT_PRETRAINED)
    # The checkpoint fits TCA_MODEL only; the model cache never applies it to the others.
    checkpoint = os.environ.get("TCA_CHECKPOINT") or None
    # "now" (default): the first screen is part of the page, visible with it; "background":
    # serve at once and hand the first screen over on page load (shorter cold start); "off"
    first = os.environ.get("TCA_FIRST_SCREEN", "now").lower()
    if first not in ("now", "background", "off"):
        raise tca.ConfigError(f"TCA_FIRST_SCREEN must be now, background or off, got {first!r}")
    device.set_torch_threads()  # the container's CPU quota, unless OMP_NUM_THREADS says
    demo = build_demo(
        model, pretrained, checkpoint, preload=True, first_screen=None if first == "off" else first
    )
    demo.launch(**launch_options(demo=demo))


if __name__ == "__main__":
    main()
