"""TCA Explorer: the Gradio app (layout and event wiring only; the handlers are
``tca.app.events``, the page's updates ``tca.app.page``, the Runs ``tca.app.runs``).

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Environment: TCA_MODEL (default ViT-B-16-quickgelu), TCA_PRETRAINED (default openai; "none" for
random weights), TCA_CHECKPOINT (a local weights file for TCA_MODEL), TCA_MODEL_CONFIGS (a folder
of extra open_clip model configs, e.g. tests/model_configs), TCA_QUEUE_SIZE (256),
TCA_DEVICE (auto, cpu, cuda) and TCA_PRECISION (auto, fp32, bf16, fp16): where and in which
precision the models run (tca/app/device.py), TCA_FIRST_SCREEN (now: the first example's
result is computed before serving and is part of the page; background: serve at once, compute
it in a thread, hand it over on page load; off). /classify and /flops are MCP tools too.
Without reachable weights the app starts anyway on random weights and says so in a banner.
"""

from __future__ import annotations

import os
import threading
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

import tca  # noqa: E402
from tca.app import device, page, panels, sweeps, tools, uploads  # noqa: E402
from tca.app.cleanup import keep_deleting  # noqa: E402
from tca.app.events import (  # noqa: E402
    ASSETS,
    TOP_K,
    App,
    examples,
    image_input,
    upload_policy,
    user_errors,
)
from tca.app.request import DEFAULT_CONFIG, KEEP_RATE_RANGE  # noqa: E402
from tca.cli import register_model_configs  # noqa: E402
from tca.config import format_layers  # noqa: E402
from tca.methods import COMPARED, METHODS  # noqa: E402

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

CSS = """
.tca-banner {padding: 6px 12px; border-radius: 8px; margin: 2px 0; font-size: 15px}
.tca-banner details {font-size: 13px; margin-top: 2px}
.tca-banner summary {cursor: pointer}
.tca-random {background: #fee2e2; color: #7f1d1d; border-left: 6px solid #b91c1c}
.tca-ok {background: #dcfce7; color: #14532d; border: 1px solid #86efac}
.tca-wait {background: #fef9c3; color: #713f12; border: 1px solid #fde047}
.tca-precision {font-size: 13px; opacity: 0.85; margin: 0 2px 2px}
.tca-stale {background: #fef3c7; color: #78350f; border: 2px solid #f59e0b; padding: 6px 12px;
  border-radius: 8px; font-size: 15px}
.tca-map img {image-rendering: pixelated}
#layer-strip img {image-rendering: pixelated}
#layer-strip .thumbnail-item.selected {outline: 5px solid #ff00c8; outline-offset: -1px}
#layer-strip .grid-wrap {max-height: none !important; height: auto !important; overflow: visible}
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
/* a phone: the map box is as tall as the map, not a fixed 470 px with blank bands */
@media (max-width: 700px) {
  #layer-map {height: auto !important}
  #layer-map .image-container, #layer-map .image-frame, #layer-map button, #layer-map img
    {height: auto !important}
}
"""

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


SCROLL_TO_MAP = (
    "() => { const m = document.querySelector('#layer-map');"
    " if (m) m.scrollIntoView({behavior: 'smooth', block: 'nearest'}); }"
)


def build_demo(
    model_name: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    preload: bool = False,
    app: App | None = None,
    first_screen: str | None = "now",
    delete_cache: tuple[int, int] = DELETE_CACHE,
) -> gr.Blocks:
    """The whole UI. ``model_name`` / ``pretrained`` default to $TCA_MODEL / $TCA_PRETRAINED;
    ``preload`` starts loading the default model in the background right away;
    ``delete_cache``: (every s, older than s) for Gradio's uploads and outputs.

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
            "merges CLIP's image tokens, block by block, and what it costs and changes."
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

        with gr.Tab("Explore", id="explore"):
            with gr.Row(elem_id="tca-main"):
                # results first in the page (a phone shows them before the settings); on a wide
                # screen CSS moves the settings column to the left
                with gr.Column(scale=5, min_width=340, elem_id="results-col"):
                    ui["stale"] = gr.HTML("", elem_id="stale-notice")
                    with gr.Row():
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
                        with gr.Column(min_width=300, scale=3):  # the table needs the room
                            ui["shift"] = gr.HTML(
                                **page.initial(got.get("shift"), value=""), elem_id="shift"
                            )
                    with gr.Row():
                        with gr.Column(scale=3, min_width=320):
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
                            clear_btn = gr.Button("Stop following", size="sm")
                            with gr.Row():
                                ui["overlay"] = gr.Checkbox(False, label="CLS-attention overlay")
                                ui["opacity"] = gr.Slider(
                                    0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity"
                                )
                        with gr.Column(scale=2, min_width=300):
                            gr.Markdown(
                                f"**All blocks from one pass**, click one. Caption: "
                                f"block {panels.CONDENSING_MARK} (= condensing) · tokens "
                                "after it"
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
                            "image and labels above, as one job."
                        )
                        with gr.Row():
                            sweep_all = gr.Checkbox(False, label="all three methods (slower)")
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
                        examples_loaded = gr.Examples(
                            items,
                            inputs=[ui["image"], ui["labels"]],
                            cache_examples=False,
                            elem_id="tca-examples",
                            label="Examples (public-domain photos, see assets/CREDITS.md)",
                        ).load_input_event
                    with gr.Accordion("Settings", open=True):
                        model = gr.Dropdown(
                            app.model_choices,
                            value=model_name,
                            label="Model",
                            elem_id="model-select",
                        )
                        method = gr.Radio(METHOD_CHOICES, value=d.method, label="Method")
                        keep_rate = gr.Slider(
                            KEEP_RATE_RANGE[0],
                            KEEP_RATE_RANGE[1],
                            value=d.keep_rate,
                            step=0.05,
                            label="Keep rate R",
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

        with gr.Tab("Compare methods", id="compare"):
            gr.Markdown(
                "TCA, EViT and ToMe on the **image, labels and settings of the Explore "
                "tab**, at the same keep rate R and condensing blocks."
            )
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-button")
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
            with gr.Row():
                ui["compare_baseline"] = gr.Label(num_top_classes=3, label="Baseline CLIP")
                for m in COMPARED:
                    ui[f"compare_{m}"] = gr.Label(num_top_classes=3, label=METHODS[m].title)
            ui["compare_table"] = gr.HTML(elem_id="compare-table")

        with gr.Tab("How it works", id="how"):
            gr.Markdown(panels.how_it_works_md())

        app.ui = ui
        wire(
            app,
            ui,
            dict(
                run=run_btn,
                prev=prev_btn,
                next=next_btn,
                clear=clear_btn,
                sweep=sweep_btn,
                reset=reset_btn,
                export=export_btn,
                compare=compare_btn,
                demo=demo_btn,
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
            examples_loaded=examples_loaded,
        )
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
    return demo


def wire(
    app: App,
    ui: dict[str, Any],
    buttons: dict[str, Any],
    controls: list[Any],
    stream_on: Any,
    sweep_all: Any,
    api_json: Any,
    examples_loaded: Any = None,
) -> None:
    """Every event: which handler, which inputs, which components it may update.
    examples_loaded: the curated examples' input-filling event (a Run follows it)."""
    quiet: dict[str, Any] = dict(api_visibility="private", show_progress="hidden")
    model_lane: dict[str, Any] = dict(concurrency_limit=MODEL_SLOTS, concurrency_id="model")
    run_parts = [ui[n] for n in page.RUN_PARTS]
    layer_parts = [ui[n] for n in ("layer", *page.LAYER_PARTS, "strip")]
    display = [ui["run"], ui["layer"], ui["view"], ui["overlay"], ui["opacity"], ui["patch"]]

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
            [*display[:-1], ui["patch"], ui["depth"], stream_on, ui["stream_state"]],
            run_parts,
            **quiet,
        )
    ui["layer"].input(app.show_layer, display, layer_parts, trigger_mode="always_last", **quiet)
    ui["overlay"].change(app.show_layer, display, layer_parts, **quiet)
    ui["opacity"].input(app.show_layer, display, layer_parts, trigger_mode="always_last", **quiet)
    for btn, delta in ((buttons["prev"], -1), (buttons["next"], 1)):
        btn.click(
            lambda s, l, v, o, op, p, _d=delta: app.step_layer(s, l, _d, v, o, op, p),
            display,
            layer_parts,
            **quiet,
        )
    ui["strip"].select(app.pick_layer, [ui["run"], *display[2:]], layer_parts, **quiet)
    ui["strip"].select(None, None, None, js=SCROLL_TO_MAP, api_visibility="private")
    follow_parts = [ui["patch"], ui["map"], ui["follow"], ui["why"]]
    ui["map"].select(app.pick_patch, display[:-1], follow_parts, **quiet)
    buttons["clear"].click(app.clear_patch, display[:-1], follow_parts, **quiet)
    ui["view"].change(app.change_view, display, [ui["map"], ui["strip"]], **quiet)
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
        [*controls, sweep_all, ui["run"]],
        [ui["sweep_plot"], ui["sweep_table"]],
        api_visibility="private",
        **model_lane,
    )
    compare_parts = [
        ui["compare_picture"],
        ui["compare_baseline"],
        *(ui[f"compare_{m}"] for m in COMPARED),
        ui["compare_table"],
        ui["banner"],
    ]
    buttons["compare"].click(
        app.compare, controls, compare_parts, api_visibility="private", **model_lane
    )


def launch_options() -> dict[str, Any]:
    """launch() arguments shared by ``main`` and the tests (Gradio 6: theme / css go here).
    ``allowed_paths``: the curated example photos only (the first screen shows one)."""
    return dict(
        theme=gr.themes.Soft(),
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
    demo.launch(**launch_options())


if __name__ == "__main__":
    main()
