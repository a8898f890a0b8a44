"""TCA Explorer: the Gradio app (layout and event wiring only; the work is done in
``tca.explore``, the page's views are built by ``tca.page`` and drawn by ``tca.render``).

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Environment: TCA_MODEL (default ViT-B-16-quickgelu), TCA_PRETRAINED (default openai; "none" for
random weights), TCA_CHECKPOINT (a local weights file for TCA_MODEL), TCA_QUEUE_SIZE (256),
TCA_FIRST_SCREEN (now: the first example's result is computed before serving and is part of the
page; background: serve at once, compute it in a thread, hand it over on page load; off).
Without reachable weights the app starts anyway on random weights and says so in a banner.
The first curated example is run once at start-up, so the page opens on a complete result.
"""
from __future__ import annotations

import copy
import functools
import html
import json
import os
import re
import tempfile
import threading
import time
import weakref
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

import tca  # noqa: E402
from tca.app import export, page, panels, serving, sweeps, uploads  # noqa: E402
from tca.app import runs as explore  # noqa: E402
from tca.app.page import Display  # noqa: E402
from tca.config import DEFAULT_LAYERS_TEXT  # noqa: E402

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
TOP_K = 5
MAX_UPLOAD = uploads.MAX_UPLOAD_BYTES  # bytes, for the upload route and every other way in
CONCURRENCY = 2  # events running at once; model events share one lane of MODEL_SLOTS
# Two model requests at once: the vision passes take turns (explore's image lane) while a
# request with many new prompts encodes them beside it, so it holds up nobody's Run.
MODEL_SLOTS = 2
# A busy public Space: room for every visitor's one request (see serving.SessionGate).
QUEUE_SIZE = int(os.environ.get("TCA_QUEUE_SIZE", "256"))
STATE_TTL_S = 2 * 3600  # per-session state is dropped after two idle hours...
MAX_SESSIONS = 400  # ...and only the most recent sessions keep any (about 0.4 MB each)
DELETE_CACHE = (900, 3600)  # every 15 min, uploads and outputs older than an hour are deleted
STRIP_COLUMNS = 3  # tiles per strip row (4 for 24-block models)

METHOD_CHOICES = [("TCA (prune + merge)", "tca"), ("EViT (prune + fuse)", "evit"),
                  ("ToMe (merge pairs)", "tome"), ("ToMe, paper's variant", "tome-paper"),
                  ("ATS (adaptive sampling)", "ats"), ("none (plain CLIP)", "none")]
TEMPLATE_CHOICES = [("one prompt: \"a photo of a {}.\"", "single"),
                    ("80 ImageNet prompts (slower first run)", "imagenet80")] + [
    (f"{name} (paper): \"{tca.TEMPLATES[name][0]}\"" if len(tca.TEMPLATES[name]) == 1
     else f"{name} (paper, {len(tca.TEMPLATES[name])} prompts)", name)
    for name in tca.PRESET_TEMPLATES if name != "default"]

CSS = """
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
#layer-strip .grid-wrap {max-height: none !important; height: auto !important; overflow: visible}
#layer-strip .caption-label {font-size: 13px; font-weight: 600; padding: 0 4px; opacity: 0.9}
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
    "timings_ms; settings; random_weights and weights_note.")

SCROLL_TO_MAP = ("() => { const m = document.querySelector('#layer-map');"
                 " if (m) m.scrollIntoView({behavior: 'smooth', block: 'nearest'}); }")


def image_input(policy: uploads.UploadPolicy, **kwargs) -> gr.Image:
    """A ``gr.Image(type="filepath")`` whose every payload goes through ``policy``: only a file
    in Gradio's upload folder (or the curated examples) is passed on, unopened, so that
    ``tca.load_image`` checks it and the user sees its one-line message; any other path is
    refused with ``uploads.REFUSED`` and nothing is read. A ``data:`` URL is size-checked
    before it is decoded. Gradio's own rule already refuses a foreign path sent with file
    metadata before this runs. (The instance's ``preprocess`` is replaced rather than
    subclassing: Gradio writes a .pyi stub next to any module defining a component.)"""
    component = gr.Image(type="filepath", **kwargs)
    default = component.preprocess

    @user_errors
    def preprocess(payload):
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            uploads.check_data_url(url, policy.max_bytes)
            try:
                return str(policy.check(default(payload)))  # decoded into the upload folder
            except (ValueError, OSError) as exc:
                raise tca.ImageError("image: the data URL is not a readable image") from exc
        return str(policy.check(getattr(payload, "path", None)))
    component.preprocess = preprocess
    return component


_TEMP_PATH = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/[^\s'\"]*/")


def user_message(exc: BaseException) -> str:
    """The exception's message for the user: server temp paths cut to the file name, HTML
    special characters escaped (gr.Error renders HTML)."""
    return html.escape(_TEMP_PATH.sub("", str(exc)), quote=False)


def user_errors(fn):
    """Turn the tca / explore input errors into gr.Error with the same message."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except tca.UserError as exc:
            raise gr.Error(user_message(exc), title="Cannot run",
                           print_exception=False) from exc
    return wrapper


def _examples() -> list[list[str]]:
    try:
        items = json.loads((ASSETS / "examples.json").read_text())
    except (OSError, ValueError):
        return []
    return [[str(ASSETS / e["image"]), e["labels"]] for e in items if (ASSETS / e["image"]).is_file()]


# ------------------------------------------------------------------------------- the app

def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


class App:
    """The event handlers, over one shared :class:`tca.serving.ModelCache`. Per-user state
    (the cached run, the stream reservoir, the followed patch) lives in ``gr.State``, never
    here; the only shared result is the first screen, the same for every visitor."""

    def __init__(self, model_name: str = tca.DEFAULT_MODEL, pretrained: str | None = "openai",
                 checkpoint: str | None = None, max_models: int = 2,
                 cache: serving.ModelCache | None = None,
                 exports: export.ExportDir | None = None) -> None:
        self.default_model = model_name
        self.cache = cache or serving.ModelCache(pretrained, checkpoint, checkpoint_model=model_name,
                                                 max_models=max_models)
        self.exports = exports or export.ExportDir()
        self.gate = serving.SessionGate()  # one model request per visitor at a time
        self.model_choices = [(k, v) for k, v in explore.APP_MODELS.items()]
        if model_name not in explore.APP_MODELS.values():
            self.model_choices.insert(0, (model_name, model_name))
        self._first: explore.ExplorerRun | None = None
        self._first_view: tuple | None = None  # the first screen's view and picture files
        self._first_lock = threading.RLock()

    def first_screen(self) -> explore.ExplorerRun | None:
        """The first curated example at the default settings, run once and kept (None without
        examples or when it cannot run)."""
        with self._first_lock:
            if self._first is None:
                examples = _examples()
                if not examples:
                    return None
                image, labels = examples[0]
                d = explore.APP_DEFAULTS
                try:
                    self._first = explore.run(self.cache, image, labels, self.default_model,
                                              d["method"], d["keep_rate"], d["layers"],
                                              d["merge_centers"], d["score"], d["templates"])
                except Exception as exc:  # noqa: BLE001 - the page then opens empty, still serving
                    print(f"TCA Explorer: no first screen ({type(exc).__name__}: {exc})")
                    return None
            return self._first

    def load_first(self, state):
        """Page load (first screen computed in the background): the first example, its Run and
        everything the page shows for it, in one event. The view is built and its pictures
        written once per process, so every later visitor only fetches files."""
        if state is not None:
            return (gr.skip(),) * 16
        first = self.first_screen()  # waits while the background thread computes it
        examples = _examples()
        if first is None or not examples:
            return (gr.skip(),) * 16
        with self._first_lock:
            if self._first_view is None:
                v = page.run_view(first, Display(first.trace.depth - 1))
                folder = Path(tempfile.mkdtemp(prefix="tca-first-screen-"))

                def png(arr, name):
                    path = folder / f"{name}.png"
                    Image.fromarray(arr).save(path, compress_level=1)
                    return str(path)
                self._first_view = (v, png(v.map, "map"), png(v.chart, "chart"),
                                    [(png(t, f"block{i}"), c) for i, (t, c) in enumerate(v.strip)])
            v, map_png, chart_png, tiles = self._first_view
        return (examples[0][0], examples[0][1], copy.deepcopy(first),
                panels.banner_html(self.cache.peek(first.model), first.model),
                gr.Label(value=v.baseline, label=v.baseline_title),
                gr.Label(value=v.condensed, label=v.condensed_title),
                v.shift, map_png, gr.Slider(maximum=v.depth - 1, value=v.layer), v.info,
                chart_png, v.cost, gr.update(value=tiles, selected_index=v.layer), v.follow, "",
                v.depth)

    # -- events that run the model
    @user_errors
    def classify(self, image, labels: str, model: str, method: str = "tca",
                 keep_rate: float = 0.7, layers: str = DEFAULT_LAYERS_TEXT, merge_centers: float = 2,
                 score: str = "mean", templates: str = "single", stream: bool = False,
                 stream_state=None, progress=gr.Progress(), request: gr.Request = None):
        """Zero-shot classification of one image by baseline CLIP and condensed CLIP.

        Returns one JSON object: labels, baseline / condensed (and, in stream mode, corrected)
        probabilities and top-5, per-label probability shift, tokens per layer (baseline and
        condensed), GMACs (baseline, condensed, % saved, convention), timings, settings, and
        whether the weights are random.
        """
        if stream and stream_state is None:
            stream_state = explore.StreamState()
        with self.gate.hold(_session(request)):
            state = explore.run(self.cache, image, labels, model or self.default_model, method,
                                keep_rate, layers, merge_centers, score, templates,
                                stream=stream_state if stream else None,
                                progress=lambda f, d: progress(f, desc=d))
        progress(0.95, desc="drawing")
        return export.summary(state, TOP_K), state, stream_state

    @user_errors
    def compare(self, image, labels: str, model: str, keep_rate: float = 0.7,
                layers: str = DEFAULT_LAYERS_TEXT, merge_centers: float = 2, score: str = "mean",
                templates: str = "single", progress=gr.Progress(), request: gr.Request = None):
        with self.gate.hold(_session(request)):
            cmp = explore.compare(self.cache, image, labels, model or self.default_model,
                                  keep_rate, layers, merge_centers, score, templates,
                                  progress=lambda f, d: progress(f, desc=d))
        labels_out = [gr.Label(value=r.condensed.as_dict(),
                               label=f"{explore.METHOD_NAMES[m]}: {r.saved_percent:.1f}% GMACs saved")
                      for m, r in cmp.results.items()]
        return (page.compare_picture(cmp), cmp.baseline.as_dict(), *labels_out,
                panels.compare_html(cmp), panels.banner_html(self.cache.peek(cmp.model), cmp.model))

    @user_errors
    def sweep(self, image, labels: str, model: str, method: str, layers: str,
              merge_centers: float, score: str, templates: str, all_methods: bool = False,
              state: explore.ExplorerRun | None = None, progress=gr.Progress(),
              request: gr.Request = None):
        """The keep-rate sweep of the current image: one job, plot + table. The shown Run's
        baseline is reused when it was made from the same image, labels, model and prompts."""
        methods = explore.COMPARE_METHODS if all_methods else (method,)
        model = model or self.default_model
        reuse = None
        if state is not None and state.signature is not None:
            sig = explore.input_signature(image, labels, model, method, 1.0, layers,
                                          merge_centers, score, templates)
            if (sig[0], sig[1], sig[2], sig[8]) == (state.signature[0], state.signature[1],
                                                    state.signature[2], state.signature[8]):
                reuse = state.result
        with self.gate.hold(_session(request)):
            sw = sweeps.sweep(self.cache, image, labels, model, method, layers, merge_centers,
                               score, templates, methods=methods, reuse=reuse,
                               progress=lambda f, d: progress(f, desc=d))
        return page.sweep_image(sw), panels.sweep_html(sw)

    # -- display-only events (no model)
    def show_run(self, state: explore.ExplorerRun | None, layer: float, view: str, overlay: bool,
                 opacity: float, patch, shown_depth, stream_on: bool, stream_state):
        """Everything a new Run changes. A run with another depth than the one shown (e.g.
        ViT-L/14 after ViT-B/16) opens at its last block."""
        if state is None:
            return (gr.skip(),) * 16
        depth = state.trace.depth
        if shown_depth != depth:
            layer = depth - 1
        d = Display(int(layer or 0), view, overlay, opacity, patch).clamped(state.trace)
        v = page.run_view(state, d)
        loaded = self.cache.peek(state.model)
        corrected = (gr.Label(value=v.corrected, visible=True) if v.corrected is not None
                     else gr.Label(value=None, visible=False))
        return (
            panels.banner_html(loaded, state.model),
            gr.Label(value=v.baseline, label=v.baseline_title),
            gr.Label(value=v.condensed, label=v.condensed_title),
            v.shift, v.map,
            gr.Slider(maximum=depth - 1, value=v.layer),
            v.info, v.chart, v.cost,
            gr.update(value=v.strip, selected_index=v.layer,
                      columns=STRIP_COLUMNS if depth <= 12 else STRIP_COLUMNS + 1),
            v.follow,
            panels.stream_html(state, stream_state, stream_on, state.result.config.method),
            corrected, "", depth, d.patch,
        )

    def _layer_outputs(self, state: explore.ExplorerRun, d: Display):
        return (page.map_image(state, d), panels.layer_info(state, d.layer, d.overlay),
                page.chart_image(state, d.layer), panels.follow_html(state, d.patch, d.layer))

    def show_layer(self, state: explore.ExplorerRun | None, layer: float, view: str = "fates",
                   overlay: bool = False, opacity: float = 0.5, patch=None):
        """Map, info, chart and follow table at ``layer``; the strip's selected tile moves."""
        if state is None:
            return (gr.skip(),) * 5
        d = Display(int(layer or 0), view, overlay, opacity, patch).clamped(state.trace)
        return (*self._layer_outputs(state, d), gr.update(selected_index=d.layer))

    def step_layer(self, state, layer, delta: int, view, overlay, opacity, patch):
        """◀ / ▶: one block back or on (clamped)."""
        if state is None:
            return (gr.skip(),) * 6
        d = Display(int(layer or 0) + delta, view, overlay, opacity, patch).clamped(state.trace)
        return (gr.Slider(value=d.layer), *self._layer_outputs(state, d),
                gr.update(selected_index=d.layer))

    def pick_layer(self, state: explore.ExplorerRun | None, view: str, overlay: bool,
                   opacity: float, patch, evt: gr.SelectData):
        """A click on a strip tile selects that block (the strip itself is not redrawn)."""
        if state is None or evt is None or not isinstance(evt.index, int):
            return (gr.skip(),) * 5
        if not 0 <= evt.index < state.trace.depth:
            return (gr.skip(),) * 5
        d = Display(evt.index, view, overlay, opacity, patch).clamped(state.trace)
        return (gr.Slider(value=d.layer), *self._layer_outputs(state, d))

    def pick_patch(self, state: explore.ExplorerRun | None, layer: float, view: str, overlay: bool,
                   opacity: float, evt: gr.SelectData):
        """A click on the big map follows that patch through every block."""
        if state is None or evt is None or not isinstance(evt.index, (list, tuple)):
            return gr.skip(), gr.skip(), gr.skip()
        patch = page.patch_at(state, *evt.index[:2])
        if patch is None:
            return gr.skip(), gr.skip(), gr.skip()
        d = Display(int(layer or 0), view, overlay, opacity, patch).clamped(state.trace)
        return patch, page.map_image(state, d), panels.follow_html(state, patch, d.layer)

    def clear_patch(self, state, layer, view, overlay, opacity):
        if state is None:
            return None, gr.skip(), gr.skip()
        d = Display(int(layer or 0), view, overlay, opacity, None).clamped(state.trace)
        return None, page.map_image(state, d), panels.follow_html(state, None)

    def change_view(self, state, layer, view, overlay, opacity, patch):
        """Fates <-> what the model sees: the map and the strip are redrawn (no model)."""
        if state is None:
            return gr.skip(), gr.skip()
        d = Display(int(layer or 0), view, overlay, opacity, patch).clamped(state.trace)
        return (page.map_image(state, d),
                gr.update(value=page.strip_items(state, d.view), selected_index=d.layer))

    def export(self, state, layer, view, patch):
        """Write the downloads on request: strip PNG, depth GIF, whole-run JSON."""
        if state is None:
            raise gr.Error("Run first: there is nothing to export yet.", title="Export",
                           print_exception=False)
        d = Display(int(layer or 0), view, False, 0.5, patch)
        files = page.exports(state, d, self.exports)
        return files["png"], files["gif"], files["json"]

    def check_stale(self, state, image, labels, model, method, keep_rate, layers, merge_centers,
                    score, templates):
        """Mark the shown results outdated when the inputs on screen no longer made them."""
        sig = explore.input_signature(image, labels, model, method, keep_rate, layers,
                                      merge_centers, score, templates)
        return panels.stale_html(state, sig)

    def check_image(self, image):
        """Right after an upload: a file that is not a readable image is refused at once."""
        if image is None:
            return gr.skip()
        try:
            explore.open_image(image)
        except tca.UserError as exc:
            gr.Warning(f"Image: {user_message(exc)}", title="Image not usable")
            return None
        return gr.skip()

    def reset_stream(self, stream_state, state, stream_on: bool = True):
        if stream_state is None:
            stream_state = explore.StreamState()
        stream_state.reset()
        if state is not None:
            state.stream = None
        return (stream_state, panels.stream_html(None, stream_state, bool(stream_on)),
                gr.Label(value=None, visible=False))

    def stream_toggled(self, on: bool, state, stream_state):
        return panels.stream_html(state if on else None, stream_state, on)

    def banner(self, model: str | None = None):
        model = model or self.default_model
        loaded = self.cache.peek(model)
        if loaded is None and model == self.default_model:
            try:  # the first page view waits for the (background) load of the default model
                loaded = self.cache.get(model)
            except Exception:  # noqa: BLE001 - shown again, with its message, on Run
                loaded = None
        return panels.banner_html(loaded, model, loading=self.cache.is_loading(model))


def upload_policy() -> uploads.UploadPolicy:
    """Images are accepted from Gradio's upload folder (uploads, decoded data: URLs, the
    examples' cached copies) and the curated examples in assets/ only."""
    return uploads.UploadPolicy.of([gr.utils.get_upload_folder(), ASSETS], MAX_UPLOAD)


def build_demo(model_name: str | None = None, pretrained: str | None = None,
               checkpoint: str | None = None, preload: bool = False,
               app: App | None = None, first_screen: str | None = "now",
               delete_cache: tuple[int, int] = DELETE_CACHE) -> gr.Blocks:
    """The whole UI. ``model_name`` / ``pretrained`` default to $TCA_MODEL / $TCA_PRETRAINED;
    ``preload`` starts loading the default model in the background right away;
    ``delete_cache``: (every s, older than s) for Gradio's uploads and outputs.

    first_screen: "now" runs the first curated example while building, so its result is part of
    the page itself; "background" serves at once and runs it in a background thread, the page
    load event then fills it in (waiting for it only on the first visits after start-up, which
    keeps the cold start short); None: no first screen."""
    model_name = model_name or os.environ.get("TCA_MODEL") or tca.DEFAULT_MODEL
    if pretrained is None:
        pretrained = os.environ.get("TCA_PRETRAINED", tca.DEFAULT_PRETRAINED)
    app = app or App(model_name, pretrained, checkpoint)
    if first_screen == "background":
        threading.Thread(target=app.first_screen, name="first-screen", daemon=True).start()
    elif preload:
        app.cache.preload(model_name)
    first = app.first_screen() if first_screen == "now" else None
    examples = _examples()
    defaults = explore.APP_DEFAULTS
    view0 = page.run_view(first, Display(first.trace.depth - 1)) if first is not None else None
    depth0 = first.trace.depth if first is not None else 12
    example0 = examples[0] if examples and first_screen else [None, ""]

    with gr.Blocks(title="TCA Explorer: token condensation in CLIP",
                   delete_cache=delete_cache) as demo:
        demo.tca_app = app  # for tests and tools
        gr.Markdown("# TCA Explorer\nSee how **token condensation** (TCA, EViT, ToMe) prunes and "
                    "merges CLIP's image tokens, block by block, and what it costs and changes.")
        banner = gr.HTML(panels.banner_html(app.cache.peek(model_name), model_name,
                                          loading=app.cache.is_loading(model_name)),
                         elem_id="weights-banner")
        # per session: the last Run (a copy of the first screen to start with), the reservoir,
        # the followed patch and the depth of the run on screen
        run_state = gr.State(first, time_to_live=STATE_TTL_S)
        stream_state = gr.State(None, time_to_live=STATE_TTL_S)
        patch_state = gr.State(None, time_to_live=STATE_TTL_S)
        depth_state = gr.State(depth0, time_to_live=STATE_TTL_S)

        with gr.Tab("Explore", id="explore"):
            with gr.Row(elem_id="tca-main"):
                # results first in the page (a phone shows them before the settings); on a wide
                # screen CSS moves the settings column to the left
                with gr.Column(scale=5, min_width=340, elem_id="results-col"):
                    stale = gr.HTML("", elem_id="stale-notice")
                    with gr.Row():
                        baseline_out = gr.Label(
                            value=view0.baseline if view0 else None, num_top_classes=TOP_K,
                            label=view0.baseline_title if view0 else "Baseline CLIP",
                            elem_id="baseline-label", min_width=200, scale=2)
                        condensed_out = gr.Label(
                            value=view0.condensed if view0 else None, num_top_classes=TOP_K,
                            label=view0.condensed_title if view0 else "Condensed",
                            elem_id="condensed-label", min_width=200, scale=2)
                        with gr.Column(min_width=300, scale=3):  # the table needs the room
                            shift_out = gr.HTML(view0.shift if view0 else "", elem_id="shift")
                    with gr.Row():
                        with gr.Column(scale=3, min_width=320):
                            layer_map = gr.Image(
                                value=view0.map if view0 else None, label="Token map",
                                type="numpy", format="png", show_label=False,
                                interactive=False, height=470, elem_classes=["tca-map"],
                                elem_id="layer-map", buttons=["download", "fullscreen"])
                            view = gr.Radio(page.VIEW_CHOICES, value="fates", show_label=False,
                                            elem_id="view-toggle")
                            with gr.Row(elem_id="depth-row"):
                                prev_btn = gr.Button("\u25c0", size="sm", elem_id="prev-block",
                                                     min_width=40)
                                layer = gr.Slider(0, depth0 - 1, value=depth0 - 1, step=1,
                                                  label="Depth: after block", scale=6,
                                                  elem_id="layer-slider")
                                next_btn = gr.Button("\u25b6", size="sm", elem_id="next-block",
                                                     min_width=40)
                            layer_md = gr.Markdown(view0.info if view0 else "",
                                                   elem_id="layer-info")
                            gr.HTML(panels.legend_html())
                            follow_md = gr.HTML(view0.follow if view0 else "",
                                                elem_id="follow-panel")
                            clear_btn = gr.Button("Stop following", size="sm")
                            with gr.Row():
                                overlay = gr.Checkbox(False, label="CLS-attention overlay")
                                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05,
                                                    label="Overlay opacity")
                        with gr.Column(scale=2, min_width=300):
                            gr.Markdown(f"**All blocks from one pass**, click one. Caption: "
                                        f"block {panels.CONDENSING_MARK} (= condensing) · tokens "
                                        "after it")
                            strip = gr.Gallery(
                                value=view0.strip if view0 else None, show_label=False,
                                label="All blocks",
                                columns=STRIP_COLUMNS, height="auto", allow_preview=False,
                                selected_index=view0.layer if view0 else None, format="png",
                                object_fit="contain", elem_id="layer-strip", buttons=[])
                            chart = gr.Image(value=view0.chart if view0 else None,
                                             label="Tokens per block", show_label=False,
                                             type="numpy", format="png", interactive=False,
                                             elem_id="tokens-chart", buttons=["download"])
                            cost = gr.HTML(view0.cost if view0 else
                                           "<i>Run to see GMACs and latency.</i>",
                                           elem_id="cost-panel")
                    with gr.Accordion("Keep-rate sweep: where does this image break?",
                                      open=False, elem_id="sweep-accordion"):
                        gr.Markdown("Runs the method at keep rates "
                                    f"{', '.join(f'{r:g}' for r in sweeps.SWEEP_RATES)} on the "
                                    "image and labels above, as one job.")
                        with gr.Row():
                            sweep_all = gr.Checkbox(False, label="all three methods (slower)")
                            sweep_btn = gr.Button("Run the sweep", elem_id="sweep-button")
                        sweep_plot = gr.Image(label="Sweep", show_label=False, type="numpy",
                                              format="png", interactive=False,
                                              elem_id="sweep-plot", buttons=["download"])
                        sweep_md = gr.HTML(elem_id="sweep-table")
                    with gr.Accordion("Stream mode: TCA's reservoir, anchors and logits correction",
                                      open=False):
                        with gr.Row():
                            stream = gr.Checkbox(False, label="Stream mode (this session only)",
                                                 elem_id="stream-toggle")
                            reset_btn = gr.Button("Reset reservoir", size="sm")
                        stream_md = gr.HTML(panels.stream_html(None, None, False),
                                            elem_id="stream-panel")
                        corrected_out = gr.Label(num_top_classes=TOP_K, visible=False,
                                                 label="After the logits correction")
                    with gr.Accordion("Export: strip PNG, animated GIF of all blocks, JSON",
                                      open=False):
                        export_btn = gr.Button("Prepare the downloads", size="sm",
                                               elem_id="export-button")
                        with gr.Row():
                            strip_file = gr.File(label="All blocks (PNG)", elem_id="strip-file")
                            gif_file = gr.File(label="Play through depth (GIF)", elem_id="gif-file")
                            json_file = gr.File(label="Whole run (JSON)", elem_id="json-file")
                    with gr.Accordion("API result (what /classify returns)", open=False):
                        api_json = gr.JSON(label="classify", elem_id="api-json")
                with gr.Column(scale=2, min_width=300, elem_id="settings-col"):
                    image = image_input(upload_policy(), label="Image", sources=["upload", "clipboard"],
                                        height=260, elem_id="image-input",
                                        value=example0[0] if first is not None else None)
                    labels = gr.Textbox(label="Candidate labels (comma-separated or one per line;"
                                              " Shift+Enter runs)",
                                        value=example0[1] if first is not None else "",
                                        placeholder="cat, dog, car", lines=2, max_lines=8,
                                        elem_id="labels-input")
                    run_btn = gr.Button("Run", variant="primary", elem_id="run-button")
                    if examples:
                        gr.Examples(examples, inputs=[image, labels], cache_examples=False,
                                    elem_id="tca-examples",
                                    label="Examples (public-domain photos, see assets/CREDITS.md)")
                    with gr.Accordion("Settings", open=True):
                        model = gr.Dropdown(app.model_choices, value=model_name, label="Model",
                                            elem_id="model-select")
                        method = gr.Radio(METHOD_CHOICES, value=defaults["method"], label="Method")
                        keep_rate = gr.Slider(explore.KEEP_RATE_RANGE[0], explore.KEEP_RATE_RANGE[1],
                                              value=defaults["keep_rate"], step=0.05,
                                              label="Keep rate R")
                        with gr.Row():
                            layers = gr.Textbox(defaults["layers"],
                                                label="Condensing blocks (0-based)")
                            # no minimum / maximum here: explore.parse_settings checks the range
                            # and names the field in its message
                            merge_centers = gr.Number(defaults["merge_centers"], precision=0,
                                                      label="Merge centres K (TCA, 1-16)",
                                                      elem_id="merge-centers")
                        score = gr.Dropdown([("head-mean CLS attention", "mean"),
                                             ("cross-head rank", "rank")],
                                            value=defaults["score"], label="Token score (TCA)")
                        templates = gr.Dropdown(TEMPLATE_CHOICES, value=defaults["templates"],
                                                label="Prompt templates")

        with gr.Tab("Compare methods", id="compare"):
            gr.Markdown("TCA, EViT and ToMe on the **image, labels and settings of the Explore "
                        "tab**, at the same keep rate R and condensing blocks.")
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-button")
            compare_img = gr.Image(label="Token maps", show_label=False, type="pil",
                                   interactive=False, format="png",
                                   elem_classes=["tca-map"], elem_id="compare-maps",
                                   buttons=["download", "fullscreen"])
            with gr.Row():
                cmp_base = gr.Label(num_top_classes=3, label="Baseline CLIP")
                cmp_labels = [gr.Label(num_top_classes=3, label=explore.METHOD_NAMES[m])
                              for m in explore.COMPARE_METHODS]
            compare_md = gr.HTML(elem_id="compare-table")

        with gr.Tab("How it works", id="how"):
            gr.Markdown(panels.how_it_works_md())

        settings = [model, method, keep_rate, layers, merge_centers, score, templates]
        run_evt = gr.on(
            [run_btn.click, labels.submit], app.classify,
            inputs=[image, labels, *settings, stream, stream_state],
            outputs=[api_json, run_state, stream_state], api_name="classify",
            api_description=API_DESCRIPTION,
            concurrency_limit=MODEL_SLOTS, concurrency_id="model",
            show_progress_on=[baseline_out, condensed_out, layer_map])
        run_evt.success(
            app.show_run,
            inputs=[run_state, layer, view, overlay, opacity, patch_state, depth_state, stream,
                    stream_state],
            outputs=[banner, baseline_out, condensed_out, shift_out, layer_map, layer, layer_md,
                     chart, cost, strip, follow_md, stream_md, corrected_out, stale, depth_state,
                     patch_state],
            api_visibility="private", show_progress="hidden")
        quiet = dict(api_visibility="private", show_progress="hidden")
        display = [run_state, layer, view, overlay, opacity, patch_state]
        layer_outs = [layer_map, layer_md, chart, follow_md]
        layer.input(app.show_layer, display, [*layer_outs, strip], trigger_mode="always_last",
                    **quiet)
        overlay.change(app.show_layer, display, [*layer_outs, strip], **quiet)
        opacity.input(app.show_layer, display, [*layer_outs, strip], trigger_mode="always_last",
                      **quiet)
        for btn, delta in ((prev_btn, -1), (next_btn, 1)):
            btn.click(lambda s, l, v, o, op, p, _d=delta: app.step_layer(s, l, _d, v, o, op, p),
                      display, [layer, *layer_outs, strip], **quiet)
        strip.select(app.pick_layer, [run_state, view, overlay, opacity, patch_state],
                     [layer, *layer_outs], **quiet)
        strip.select(None, None, None, js=SCROLL_TO_MAP, api_visibility="private")
        layer_map.select(app.pick_patch, [run_state, layer, view, overlay, opacity],
                         [patch_state, layer_map, follow_md], **quiet)
        clear_btn.click(app.clear_patch, [run_state, layer, view, overlay, opacity],
                        [patch_state, layer_map, follow_md], **quiet)
        view.change(app.change_view, display, [layer_map, strip], **quiet)
        stale_inputs = [run_state, image, labels, *settings]
        for comp in (image, labels, *settings):
            comp.change(app.check_stale, stale_inputs, [stale], trigger_mode="always_last",
                        **quiet)
        image.upload(app.check_image, [image], [image], **quiet)
        reset_btn.click(app.reset_stream, [stream_state, run_state, stream],
                        [stream_state, stream_md, corrected_out], api_visibility="private")
        stream.change(app.stream_toggled, [stream, run_state, stream_state], [stream_md], **quiet)
        model.change(app.banner, [model], [banner], **quiet)
        export_btn.click(app.export, [run_state, layer, view, patch_state],
                         [strip_file, gif_file, json_file], api_visibility="private")
        sweep_btn.click(
            app.sweep, [image, labels, model, method, layers, merge_centers, score, templates,
                        sweep_all, run_state],
            [sweep_plot, sweep_md], api_visibility="private",
            concurrency_limit=MODEL_SLOTS, concurrency_id="model")
        compare_btn.click(
            app.compare, [image, labels, model, keep_rate, layers, merge_centers, score, templates],
            [compare_img, cmp_base, *cmp_labels, compare_md, banner], api_visibility="private",
            concurrency_limit=MODEL_SLOTS, concurrency_id="model")
        if first_screen == "background" and examples:
            demo.load(app.load_first, [run_state],
                      [image, labels, run_state, banner, baseline_out, condensed_out, shift_out,
                       layer_map, layer, layer_md, chart, cost, strip, follow_md, stale,
                       depth_state], queue=False, **quiet)
        elif first is None:
            demo.load(app.banner, None, [banner], **quiet)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    if delete_cache:
        keep_deleting(demo, *delete_cache)
    return demo


def keep_deleting(demo: gr.Blocks, every_s: float, older_than_s: float) -> threading.Thread:
    """Delete the app's uploads and outputs older than ``older_than_s`` every ``every_s``, in a
    thread that survives errors. Gradio's own ``delete_cache`` task does the same but ends for
    good on its first exception (e.g. an upload changing the file set while it iterates it), after
    which the folder grows without bound; this one just tries again at the next tick."""
    from gradio.route_utils import delete_files_created_by_app
    ref = weakref.ref(demo)

    def work() -> None:
        while True:
            time.sleep(every_s)
            blocks = ref()
            if blocks is None:  # the app is gone
                return
            try:
                delete_files_created_by_app(blocks, older_than_s)
            except Exception:  # noqa: BLE001 - a concurrent upload; the next tick retries
                pass
            del blocks
    t = threading.Thread(target=work, name="tca-delete-cache", daemon=True)
    t.start()
    return t


def launch_options() -> dict:
    """launch() arguments shared by ``main`` and the tests (Gradio 6: theme / css go here).
    ``allowed_paths``: the curated example photos only (the first screen shows one)."""
    return dict(theme=gr.themes.Soft(), css=CSS, max_file_size=MAX_UPLOAD,
                allowed_paths=[str(ASSETS)], state_session_capacity=MAX_SESSIONS,
                # a public Space: unexpected exceptions (and Gradio's own path refusals, which
                # echo the path) show no text; every user error is a gr.Error and shows
                show_error=False)


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
    demo = build_demo(model, pretrained, checkpoint, preload=True,
                      first_screen=None if first == "off" else first)
    demo.launch(**launch_options())


if __name__ == "__main__":
    main()
