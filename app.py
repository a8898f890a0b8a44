"""TCA Explorer: the Gradio app (UI wiring only; the work is done in ``tca.explore`` and
``tca.render``).

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Environment: TCA_MODEL (default ViT-B-16-quickgelu), TCA_PRETRAINED (default openai; "none" for
random weights), TCA_CHECKPOINT (a local weights file for TCA_MODEL), TCA_QUEUE_SIZE (20).
Without reachable weights the app starts anyway on random weights and says so in a banner.
"""
from __future__ import annotations

import functools
import html
import json
import os
import re
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

import tca  # noqa: E402
from tca import explore, render  # noqa: E402
from tca.config import DEFAULT_LAYERS_TEXT  # noqa: E402
from tca.flops import CONVENTION  # noqa: E402
from tca.models import WEIGHTS_HELP  # noqa: E402

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
TOP_K = 5
MAP_ZOOM = 2  # the single token map is shown at twice the model's resolution
MAX_UPLOAD = "10mb"
CONCURRENCY = 2  # events running at once (model events: 1, they share the CPU)
QUEUE_SIZE = int(os.environ.get("TCA_QUEUE_SIZE", "20"))
STATE_TTL_S = 2 * 3600  # per-session state is dropped after two idle hours

METHOD_CHOICES = [("TCA (prune + merge)", "tca"), ("EViT (prune + fuse)", "evit"),
                  ("ToMe (merge pairs)", "tome"), ("none (plain CLIP)", "none")]
TEMPLATE_CHOICES = [("one prompt: \"a photo of a {}.\"", "single"),
                    ("80 ImageNet prompts (slower first run)", "imagenet80")]

CSS = """
.tca-banner {padding: 10px 14px; border-radius: 8px; margin: 4px 0; font-size: 15px}
.tca-random {background: #b91c1c; color: #fff; border: 3px solid #7f1d1d}
.tca-random b, .tca-random code {color: #fff}
.tca-ok {background: #dcfce7; color: #14532d; border: 1px solid #86efac}
.tca-wait {background: #fef9c3; color: #713f12; border: 1px solid #fde047}
.tca-map img {image-rendering: pixelated}
.tca-legend span.sw {display: inline-block; width: 14px; height: 14px; border-radius: 3px;
  vertical-align: -2px; margin: 0 4px 0 10px; border: 2px solid #777}
.tca-cost .big {font-size: 22px; font-weight: 700}
.tca-cost .saved {color: #15803d}
.tca-table {border-collapse: collapse; font-size: 14px}
.tca-table td, .tca-table th {padding: 2px 8px; border-bottom: 1px solid #e5e7eb; text-align: left;
  white-space: nowrap}
.tca-up {color: #15803d} .tca-down {color: #b91c1c}
"""

API_DESCRIPTION = (
    "Zero-shot classification of one image by baseline CLIP and token-condensed CLIP. Returns "
    "one JSON object: labels; baseline / condensed (and in stream mode corrected) probabilities "
    "and logits; top-5 lists; the per-label probability shift; tokens_per_layer and "
    "baseline_tokens_per_layer; gmacs {baseline, condensed, saved_percent, convention, per-layer}; "
    "timings_ms; settings; random_weights and weights_note.")

LEGEND_HTML = (
    '<div class="tca-legend"><span class="sw" style="background:#eee"></span>kept (class-relevant):'
    ' the image as is <span class="sw" style="background:#f5b800;border-color:#7c3aed"></span>'
    "merged (class-ambiguous): the group's mean colour, one outline colour per group"
    ' <span class="sw" style="background:#282828"></span>pruned / fused (class-irrelevant):'
    " darkened</div>")

HOW_IT_WORKS = f"""
### What you are looking at

CLIP's image encoder (a Vision Transformer, ViT) cuts the picture into square **patches**
(ViT-B/16 at 224 px: 14 x 14 = 196 patches) and adds one summary token, **CLS**. Every one of
its 12 blocks processes every token, so the cost grows with the number of tokens. **Token
condensation** removes tokens *inside* the network, at a few blocks (by default blocks 3, 6
and 9, counted from 0), without any training.

At a condensing block, the CLS token's attention says how much the summary looks at each
patch. TCA sorts the tokens by it into three groups:

* **class-relevant** (highest attention): **kept** as they are;
* **class-ambiguous** (middle): **merged**: TCA averages them into *K* group tokens (a small
  coreset), so their content survives in fewer tokens;
* **class-irrelevant** (lowest): **pruned**: fused into one token, weighted by attention.

**Keep rate R** sets how much survives each condensing block (R = 1 removes nothing).
For comparison, **EViT** keeps the top tokens and fuses the rest (no merging), and **ToMe**
merges the most similar pairs of tokens (bipartite matching): no pruning, and not guided by
the CLS token.

### The map legend

Each map shows every original patch at one depth (after that block), from **one** forward
pass:

{LEGEND_HTML}

A merged group can be spread over the image: TCA groups tokens by content, not by position.

The optional overlay shows the CLS attention that drove the latest condensing decision
(bright = attended = kept).

### Stream mode: domain anchors and the logits correction

When images arrive one after another (a "stream"), TCA keeps a small **reservoir**: for each
label, the CLS tokens (from every block) of up to M past images predicted as that label, the
most confident ones first. Once every label holds at least two images, their averages become
**domain anchors**: at each condensing block the nearest anchor joins the tokens, so the
ranking is guided by what the classes looked like in this stream. The **logits correction**
then compares the new image's CLS tokens with each bucket and adds a bonus to the labels whose
stored images look alike. Each browser session has its own reservoir; changing the labels or
the model starts a new one.

### Cost

Costs are counted analytically from the actual token counts: {html.escape(CONVENTION)}.
ViT-B/16 at 224 px is 17.56 GMACs. The saved percentage is the same in GMACs and FLOPs. On a
CPU at batch size 1 the wall-clock gain is smaller than the FLOP saving.

### Random weights

If the banner at the top is red, the model runs on random weights: the maps, token counts and
costs are exact, but the predictions mean nothing. {html.escape(WEIGHTS_HELP)}
"""


def image_input(**kwargs) -> gr.Image:
    """A ``gr.Image(type="filepath")`` that passes the uploaded file's path on unopened, so that
    ``tca.load_image`` checks it (unreadable, truncated, too many pixels) and the user sees its
    message instead of a decoder traceback. (The instance's ``preprocess`` is replaced rather
    than subclassing: Gradio writes a .pyi stub next to any module defining a component.)"""
    component = gr.Image(type="filepath", **kwargs)
    default = component.preprocess

    def preprocess(payload):
        path = getattr(payload, "path", None)
        url = getattr(payload, "url", None) or ""
        if payload is not None and path and not url.startswith("data:"):
            return str(path)
        return default(payload)
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


def _escape(text) -> str:
    return html.escape(str(text), quote=False)


# ------------------------------------------------------------------------------- formatting

def banner_html(loaded: explore.LoadedModel | None, model: str, loading: bool = False) -> str:
    if loaded is None:
        what = "is loading" if loading else "loads on the next Run"
        return (f'<div class="tca-banner tca-wait">Model <b>{_escape(model)}</b> {what}; '
                f"whether its weights are real or random shows here.</div>")
    if loaded.is_random:
        why = loaded.note or "random weights were asked for (TCA_PRETRAINED=none)."
        help_ = "" if WEIGHTS_HELP in why else f"<br>{_escape(WEIGHTS_HELP)}"
        return ('<div class="tca-banner tca-random" role="alert"><b>RANDOM WEIGHTS: the '
                f"predictions below are meaningless.</b> Model {_escape(loaded.name)}. "
                f"{_escape(why)}{help_}<br>Maps, token counts and GMACs are still exact.</div>")
    return (f'<div class="tca-banner tca-ok">Weights: <b>{_escape(loaded.name)}</b> / '
            f"{_escape(loaded.requested)}</div>")


def shift_html(result: tca.RunResult, limit: int = 10) -> str:
    final = result.final
    name = "corrected" if result.corrected is not None else "condensed"
    order = sorted(range(len(result.labels)), key=lambda i: -result.baseline.probs[i])[:limit]
    rows = []
    for i in order:
        d = final.probs[i] - result.baseline.probs[i]
        cls = "tca-up" if d > 5e-4 else "tca-down" if d < -5e-4 else ""
        rows.append(f"<tr><td>{_escape(result.labels[i])}</td><td>{result.baseline.probs[i]:.1%}</td>"
                    f"<td>{final.probs[i]:.1%}</td><td class='{cls}'>{100 * d:+.1f} pp</td></tr>")
    more = f"<br><small>{len(result.labels) - limit} more labels in the JSON.</small>" \
        if len(result.labels) > limit else ""
    return (f"<table class='tca-table'><tr><th>label</th><th>baseline</th><th>{name}</th>"
            f"<th>shift</th></tr>{''.join(rows)}</table>{more}")


def cost_html(result: tca.RunResult) -> str:
    fb, fc = result.flops_baseline, result.flops_condensed
    t = result.timings_ms
    return (
        "<div class='tca-cost'>"
        f"<div class='big'>{fb.gmacs:.2f} &rarr; {fc.gmacs:.2f} GMACs "
        f"<span class='saved'>({result.saved_percent:.1f}% saved)</span></div>"
        f"<div>{_escape(result.config.describe())}</div>"
        "<table class='tca-table'><tr><th></th><th>baseline</th><th>condensed</th></tr>"
        f"<tr><td>tokens after the last block</td><td>{result.baseline_tokens[-1]}</td>"
        f"<td>{result.tokens_per_layer[-1]}</td></tr>"
        f"<tr><td>GMACs</td><td>{fb.gmacs:.3f}</td><td>{fc.gmacs:.3f}</td></tr>"
        f"<tr><td>of which condensing</td><td>-</td><td>{fc.overhead / 1e9:.4f}</td></tr>"
        f"<tr><td>latency here (ms)</td><td>{t.get('baseline_ms', 0):.0f}</td>"
        f"<td>{t.get('condensed_ms', 0):.0f} (traced)</td></tr></table>"
        f"<small>{_escape(CONVENTION)}. Text encoding: {t.get('text_ms', 0):.0f} ms "
        "(cached per label set). Batch 1 on a CPU gains less time than FLOPs.</small></div>")


def layer_info(state: explore.RunState, layer: int, overlay: bool) -> str:
    trace = state.trace
    counts = trace.fate_counts(layer)
    groups = len(trace.groups(layer))
    cond = " (a condensing block)" if layer in trace.condensing_layers else ""
    text = (f"**After block {layer}{cond}: {trace.tokens_per_layer[layer]} tokens.** "
            f"Patches: {counts['kept']} kept, {counts['merged']} merged in {groups} group(s), "
            f"{counts['pruned']} pruned.")
    if overlay:
        src = render.attention_layer(trace, layer)
        text += (f" Overlay: CLS attention at block {src}." if src is not None else
                 " Overlay: no CLS attention recorded at or before this block"
                 f"{' (ToMe does not use it)' if state.result.config.method == 'tome' else ''}.")
    return text


def stream_html(state: explore.RunState | None, stream: explore.StreamState | None,
                enabled: bool, method: str = "tca") -> str:
    if not enabled:
        return ("Stream mode is off. Turn it on (method TCA) and run several images with the "
                "same labels: each one is filed in this session's reservoir.")
    if method != "tca":
        return (f"<b>Stream mode applies to TCA only</b>: this run "
                f"({explore.METHOD_NAMES.get(method, method)}) neither used nor fed the "
                "reservoir. " + stream_html(None, stream, True))
    summ = (state.stream if state is not None and state.stream is not None
            else stream.summary() if stream is not None else None)
    if summ is None:
        return "Stream mode is on: the next Run with TCA starts this session's reservoir."
    notice = stream.notice if stream is not None and stream.notice else ""
    need = summ["min_per_class"]
    ready = sum(len(b) >= need for b in summ["buckets"].values())
    status = ("<b class='tca-up'>ANCHORS ACTIVE</b>" if summ["active"] else
              f"<b>anchors inactive</b>: every label needs {need} images in its bucket "
              f"({ready} of {len(summ['buckets'])} ready)")
    rows = []
    for label, entries in summ["buckets"].items():
        dots = "&#9679;" * len(entries) + "&#9675;" * max(0, summ["size"] - len(entries))
        ent = ", ".join(f"{e['entropy']:.2f}" for e in entries) or "-"
        rows.append(f"<tr><td>{_escape(label)}</td><td>{dots}</td><td>{ent}</td></tr>")
    effect = ""
    if state is not None and state.result.corrected is not None:
        r = state.result
        diffs = [(l, r.condensed.probs[i], r.corrected.probs[i]) for i, l in enumerate(r.labels)]
        diffs.sort(key=lambda x: -abs(x[2] - x[1]))
        effect = "<br><b>Logits correction on this image</b><table class='tca-table'>" + \
            "<tr><th>label</th><th>condensed</th><th>corrected</th></tr>" + "".join(
                f"<tr><td>{_escape(l)}</td><td>{a:.1%}</td><td>{b:.1%}</td></tr>"
                for l, a, b in diffs[:8]) + "</table>"
        if not state.result.anchors_used:
            effect += "<small>No anchors were used for the condensation of this image yet.</small>"
    return (f"{_escape(notice)} {status}. Images seen: {summ['images_seen']}."
            f"<table class='tca-table'><tr><th>label</th><th>bucket (of {summ['size']})</th>"
            f"<th>entropy of entries</th></tr>{''.join(rows)}</table>{effect}")


def compare_html(cmp: explore.Comparison) -> str:
    rows = []
    for method, r in cmp.results.items():
        top, p = r.condensed.top(1)[0]
        rows.append(f"<tr><td><b>{explore.METHOD_NAMES[method]}</b></td>"
                    f"<td>{r.flops_condensed.gmacs:.2f}</td><td>{r.saved_percent:.1f}%</td>"
                    f"<td>{r.tokens_per_layer[-1]}</td><td>{_escape(top)} ({p:.1%})</td>"
                    f"<td>{r.timings_ms['condensed_ms']:.0f}</td></tr>")
    base = next(iter(cmp.results.values()))
    return (f"<table class='tca-table'><tr><th>method</th><th>GMACs</th><th>saved</th>"
            f"<th>final tokens</th><th>top-1</th><th>ms</th></tr>"
            f"<tr><td>baseline CLIP</td><td>{base.flops_baseline.gmacs:.2f}</td><td>-</td>"
            f"<td>{base.baseline_tokens[-1]}</td><td>{_escape(cmp.baseline.top(1)[0][0])} "
            f"({cmp.baseline.top(1)[0][1]:.1%})</td><td>{base.timings_ms.get('baseline_ms', 0):.0f}"
            f"</td></tr>{''.join(rows)}</table><small>Same keep rate R = {cmp.keep_rate:g} and "
            f"condensing blocks for all three; {_escape(CONVENTION)}.</small>")


# ------------------------------------------------------------------------------- the app

class App:
    """The event handlers, over one shared :class:`tca.explore.ModelCache`. Per-user state
    (the cached run, the stream reservoir) lives in ``gr.State``, never here."""

    def __init__(self, model_name: str = tca.DEFAULT_MODEL, pretrained: str | None = "openai",
                 checkpoint: str | None = None, max_models: int = 2,
                 cache: explore.ModelCache | None = None,
                 exports: explore.ExportDir | None = None) -> None:
        self.default_model = model_name
        self.cache = cache or explore.ModelCache(pretrained, checkpoint, checkpoint_model=model_name,
                                                 max_models=max_models)
        self.exports = exports or explore.ExportDir()
        self.model_choices = [(k, v) for k, v in explore.APP_MODELS.items()]
        if model_name not in explore.APP_MODELS.values():
            self.model_choices.insert(0, (model_name, model_name))

    # -- events that run the model
    @user_errors
    def classify(self, image, labels: str, model: str, method: str = "tca",
                 keep_rate: float = 0.7, layers: str = DEFAULT_LAYERS_TEXT, merge_centers: float = 2,
                 score: str = "mean", templates: str = "single", stream: bool = False,
                 stream_state=None, progress=gr.Progress()):
        """Zero-shot classification of one image by baseline CLIP and condensed CLIP.

        Returns one JSON object: labels, baseline / condensed (and, in stream mode, corrected)
        probabilities and top-5, per-label probability shift, tokens per layer (baseline and
        condensed), GMACs (baseline, condensed, % saved, convention), timings, settings, and
        whether the weights are random.
        """
        if stream and stream_state is None:
            stream_state = explore.StreamState()
        state = explore.run(self.cache, image, labels, model or self.default_model, method,
                            keep_rate, layers, merge_centers, score, templates,
                            stream=stream_state if stream else None,
                            progress=lambda f, d: progress(f, desc=d))
        progress(0.95, desc="drawing")
        return explore.summary(state, TOP_K), state, stream_state

    @user_errors
    def compare(self, image, labels: str, model: str, keep_rate: float = 0.7,
                layers: str = DEFAULT_LAYERS_TEXT, merge_centers: float = 2, score: str = "mean",
                templates: str = "single", progress=gr.Progress()):
        cmp = explore.compare(self.cache, image, labels, model or self.default_model, keep_rate,
                              layers, merge_centers, score, templates,
                              progress=lambda f, d: progress(f, desc=d))
        first = next(iter(cmp.results.values()))
        depth = first.trace.depth
        cols = sorted(set(first.trace.condensing_layers) | {depth - 1})
        tiles = []
        for r in cmp.results.values():
            means = render.patch_means(cmp.view, r.trace.grid)
            tiles.append([render.fate_map(cmp.view, r.trace, l, means=means) for l in cols])
        picture, _ = render.grid(
            tiles, captions=[[f"{r.tokens_per_layer[l]} tokens" for l in cols]
                             for r in cmp.results.values()],
            row_labels=[explore.METHOD_NAMES[m] for m in cmp.results],
            col_labels=[f"after block {l}" for l in cols], legend=True)
        labels_out = [gr.Label(value=r.condensed.as_dict(),
                               label=f"{explore.METHOD_NAMES[m]}: {r.saved_percent:.1f}% GMACs saved")
                      for m, r in cmp.results.items()]
        loaded = self.cache.peek(cmp.model)
        return (picture, cmp.baseline.as_dict(), *labels_out, compare_html(cmp),
                banner_html(loaded, cmp.model))

    # -- display-only events (no model)
    def show_run(self, state: explore.RunState | None, layer: float, overlay: bool,
                 opacity: float, stream_on: bool, stream_state):
        if state is None:
            return (gr.skip(),) * 15
        r, trace = state.result, state.trace
        layer = int(min(max(0, layer or 0), trace.depth - 1))
        means = render.patch_means(state.view, trace.grid)
        maps = [render.fate_map(state.view, trace, l, means=means) for l in range(trace.depth)]
        strip, _ = render.layer_strip(maps, render.layer_captions(trace))
        strip_path = self.exports.write_png(strip, "tca-layers")
        json_path = self.exports.write_json(explore.export_dict(state), "tca-run")
        current = (render.fate_map(state.view, trace, layer, means=means, attention=True,
                                   opacity=opacity) if overlay else maps[layer])
        current = render.upscale(current, MAP_ZOOM)
        label = r.config.describe()
        chart = render.tokens_chart_image(r.baseline_tokens, r.tokens_per_layer,
                                          trace.condensing_layers, label=label.split(",")[0],
                                          title="Tokens per block: baseline vs condensed")
        loaded = self.cache.peek(state.model)
        corrected = (gr.Label(value=r.corrected.as_dict(), visible=True)
                     if r.corrected is not None else gr.Label(value=None, visible=False))
        return (
            banner_html(loaded, state.model),
            gr.Label(value=r.baseline.as_dict(), label="Baseline CLIP (all tokens)"),
            gr.Label(value=r.condensed.as_dict(),
                     label=f"Condensed: {explore.METHOD_NAMES[r.config.method]} R={r.config.keep_rate:g}"),
            shift_html(r),
            current,
            gr.Slider(maximum=trace.depth - 1, value=layer),
            layer_info(state, layer, overlay),
            chart,
            cost_html(r),
            str(strip_path),
            stream_html(state, stream_state, stream_on, r.config.method),
            corrected,
            str(strip_path),
            str(json_path),
            state,
        )

    def show_layer(self, state: explore.RunState | None, layer: float, overlay: bool,
                   opacity: float):
        if state is None:
            return gr.skip(), gr.skip()
        trace = state.trace
        layer = int(min(max(0, layer or 0), trace.depth - 1))
        image = render.fate_map(state.view, trace, layer, attention=bool(overlay),
                                opacity=float(opacity))
        return render.upscale(image, MAP_ZOOM), layer_info(state, layer, overlay)

    def pick_layer(self, state: explore.RunState | None, overlay: bool, opacity: float,
                   evt: gr.SelectData):
        """A click on the strip selects that layer (the strip has 6 tiles per row)."""
        if state is None or evt is None or not isinstance(evt.index, (list, tuple)):
            return gr.skip(), gr.skip(), gr.skip()
        trace = state.trace
        _, lay = render.layer_strip([state.view] * trace.depth, render.layer_captions(trace))
        hit = lay.tile_at(*evt.index[:2])
        if hit is None:
            return gr.skip(), gr.skip(), gr.skip()
        layer = hit[0] * lay.cols + hit[1]
        if layer >= trace.depth:
            return gr.skip(), gr.skip(), gr.skip()
        image, info = self.show_layer(state, layer, overlay, opacity)
        return gr.Slider(value=layer), image, info

    def reset_stream(self, stream_state, state):
        if stream_state is None:
            stream_state = explore.StreamState()
        stream_state.reset()
        if state is not None:
            state.stream = None
        return stream_state, stream_html(None, stream_state, True), gr.Label(value=None, visible=False)

    def stream_toggled(self, on: bool, state, stream_state):
        return stream_html(state if on else None, stream_state, on)

    def banner(self, model: str | None = None):
        model = model or self.default_model
        loaded = self.cache.peek(model)
        if loaded is None and model == self.default_model:
            try:  # the first page view waits for the (background) load of the default model
                loaded = self.cache.get(model)
            except Exception:  # noqa: BLE001 - shown again, with its message, on Run
                loaded = None
        return banner_html(loaded, model, loading=self.cache.is_loading(model))


def _examples() -> list[list[str]]:
    try:
        items = json.loads((ASSETS / "examples.json").read_text())
    except (OSError, ValueError):
        return []
    return [[str(ASSETS / e["image"]), e["labels"]] for e in items if (ASSETS / e["image"]).is_file()]


def build_demo(model_name: str | None = None, pretrained: str | None = None,
               checkpoint: str | None = None, preload: bool = False,
               app: App | None = None) -> gr.Blocks:
    """The whole UI. ``model_name`` / ``pretrained`` default to $TCA_MODEL / $TCA_PRETRAINED;
    ``preload`` starts loading the default model in the background right away."""
    model_name = model_name or os.environ.get("TCA_MODEL") or tca.DEFAULT_MODEL
    if pretrained is None:
        pretrained = os.environ.get("TCA_PRETRAINED", tca.DEFAULT_PRETRAINED)
    app = app or App(model_name, pretrained, checkpoint)
    if preload:
        app.cache.preload(model_name)

    with gr.Blocks(title="TCA Explorer: token condensation in CLIP",
                   delete_cache=(1800, 3600)) as demo:
        demo.tca_app = app  # for tests and tools
        gr.Markdown("# TCA Explorer\nSee how **token condensation** (TCA, EViT, ToMe) prunes and "
                    "merges CLIP's image tokens, layer by layer, and what it costs and changes.")
        banner = gr.HTML(banner_html(app.cache.peek(model_name), model_name,
                                     loading=app.cache.is_loading(model_name)),
                         elem_id="weights-banner")
        run_state = gr.State(None, time_to_live=STATE_TTL_S)  # this session's last Run
        stream_state = gr.State(None, time_to_live=STATE_TTL_S)  # this session's reservoir

        with gr.Tab("Explore", id="explore"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    image = image_input(label="Image", sources=["upload", "clipboard"],
                                          height=260, elem_id="image-input")
                    labels = gr.Textbox(label="Candidate labels (comma- or newline-separated)",
                                        placeholder="cat, dog, car", lines=1, max_lines=6,
                                        elem_id="labels-input")
                    run_btn = gr.Button("Run", variant="primary", elem_id="run-button")
                    examples = _examples()
                    if examples:
                        gr.Examples(examples, inputs=[image, labels], cache_examples=False,
                                    label="Examples (public-domain photos, see assets/CREDITS.md)")
                    with gr.Accordion("Settings", open=True):
                        model = gr.Dropdown(app.model_choices, value=model_name, label="Model",
                                            elem_id="model-select")
                        method = gr.Radio(METHOD_CHOICES, value="tca", label="Method")
                        keep_rate = gr.Slider(explore.KEEP_RATE_RANGE[0], explore.KEEP_RATE_RANGE[1],
                                              value=0.7, step=0.05, label="Keep rate R")
                        with gr.Row():
                            layers = gr.Textbox(DEFAULT_LAYERS_TEXT, label="Condensing blocks (0-based)")
                            merge_centers = gr.Number(2, minimum=explore.MERGE_CENTERS_RANGE[0],
                                                      maximum=explore.MERGE_CENTERS_RANGE[1],
                                                      precision=0, label="Merge centres K (TCA)")
                        score = gr.Dropdown([("head-mean CLS attention", "mean"),
                                             ("cross-head rank", "rank")],
                                            value="mean", label="Token score (TCA)")
                        templates = gr.Dropdown(TEMPLATE_CHOICES, value="single",
                                                label="Prompt templates")
                with gr.Column(scale=5):
                    with gr.Row():
                        baseline_out = gr.Label(num_top_classes=TOP_K, label="Baseline CLIP",
                                                elem_id="baseline-label")
                        condensed_out = gr.Label(num_top_classes=TOP_K, label="Condensed",
                                                 elem_id="condensed-label")
                        with gr.Column(min_width=300):
                            shift_out = gr.HTML("", label="Probability shift", elem_id="shift")
                    with gr.Row():
                        with gr.Column(scale=1):
                            gr.Markdown("**Token map**: every patch's fate after the chosen block")
                            layer_map = gr.Image(label="Token map", type="numpy", format="png",
                                                 show_label=False,
                                                 interactive=False, height=470,
                                                 elem_classes=["tca-map"], elem_id="layer-map",
                                                 buttons=["download", "fullscreen"])
                            layer = gr.Slider(0, 11, value=11, step=1, label="Depth: after block",
                                              elem_id="layer-slider")
                            with gr.Row():
                                overlay = gr.Checkbox(False, label="CLS-attention overlay")
                                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05,
                                                    label="Overlay opacity")
                            layer_md = gr.Markdown(elem_id="layer-info")
                            gr.HTML(LEGEND_HTML)
                        with gr.Column(scale=1):
                            chart = gr.Image(label="Tokens per block", show_label=False,
                                             type="numpy", format="png",
                                             interactive=False, elem_id="tokens-chart",
                                             buttons=["download"])
                            cost = gr.HTML("<i>Run to see GMACs and latency.</i>", label="Cost",
                                           elem_id="cost-panel")
                    gr.Markdown("**All blocks from one forward pass** (click a tile to show it "
                                "above; * = condensing block)")
                    strip = gr.Image(label="All blocks", show_label=False, type="filepath",
                                     interactive=False,
                                     elem_classes=["tca-map"], elem_id="layer-strip",
                                     buttons=["download", "fullscreen"])
                    with gr.Accordion("Stream mode: TCA's reservoir, anchors and logits correction",
                                      open=True):
                        with gr.Row():
                            stream = gr.Checkbox(False, label="Stream mode (this session only)",
                                                 elem_id="stream-toggle")
                            reset_btn = gr.Button("Reset reservoir", size="sm")
                        stream_md = gr.HTML(stream_html(None, None, False), elem_id="stream-panel")
                        corrected_out = gr.Label(num_top_classes=TOP_K, visible=False,
                                                 label="After the logits correction")
                    with gr.Accordion("Export", open=False):
                        with gr.Row():
                            strip_file = gr.File(label="Per-block strip (PNG)", elem_id="strip-file")
                            json_file = gr.File(label="Whole run (JSON)", elem_id="json-file")
                    with gr.Accordion("API result (what /classify returns)", open=False):
                        api_json = gr.JSON(label="classify", elem_id="api-json")

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
            gr.Markdown(HOW_IT_WORKS)

        settings = [model, method, keep_rate, layers, merge_centers, score, templates]
        run_evt = gr.on(
            [run_btn.click, labels.submit], app.classify,
            inputs=[image, labels, *settings, stream, stream_state],
            outputs=[api_json, run_state, stream_state], api_name="classify",
            api_description=API_DESCRIPTION,
            concurrency_limit=1, concurrency_id="model",
            show_progress_on=[baseline_out, condensed_out, layer_map])
        run_evt.success(
            app.show_run, inputs=[run_state, layer, overlay, opacity, stream, stream_state],
            outputs=[banner, baseline_out, condensed_out, shift_out, layer_map, layer, layer_md,
                     chart, cost, strip, stream_md, corrected_out, strip_file, json_file,
                     run_state],
            api_visibility="private", show_progress="hidden")
        display = [run_state, layer, overlay, opacity]
        layer.input(app.show_layer, display, [layer_map, layer_md], api_visibility="private",
                    trigger_mode="always_last", show_progress="hidden")
        overlay.change(app.show_layer, display, [layer_map, layer_md], api_visibility="private",
                       show_progress="hidden")
        opacity.input(app.show_layer, display, [layer_map, layer_md], api_visibility="private",
                      trigger_mode="always_last", show_progress="hidden")
        strip.select(app.pick_layer, [run_state, overlay, opacity], [layer, layer_map, layer_md],
                     api_visibility="private", show_progress="hidden")
        reset_btn.click(app.reset_stream, [stream_state, run_state],
                        [stream_state, stream_md, corrected_out], api_visibility="private")
        stream.change(app.stream_toggled, [stream, run_state, stream_state], [stream_md],
                      api_visibility="private", show_progress="hidden")
        model.change(app.banner, [model], [banner], api_visibility="private",
                     show_progress="hidden")
        compare_btn.click(
            app.compare, [image, labels, model, keep_rate, layers, merge_centers, score, templates],
            [compare_img, cmp_base, *cmp_labels, compare_md, banner], api_visibility="private",
            concurrency_limit=1, concurrency_id="model")
        demo.load(app.banner, None, [banner], api_visibility="private", show_progress="hidden")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def launch_options() -> dict:
    """launch() arguments shared by ``main`` and the tests (Gradio 6: theme / css go here)."""
    return dict(theme=gr.themes.Soft(), css=CSS, max_file_size=MAX_UPLOAD, show_error=True)


def main() -> None:
    model = os.environ.get("TCA_MODEL") or tca.DEFAULT_MODEL
    pretrained = os.environ.get("TCA_PRETRAINED", tca.DEFAULT_PRETRAINED)
    # The checkpoint fits TCA_MODEL only; the model cache never applies it to the others.
    checkpoint = os.environ.get("TCA_CHECKPOINT") or None
    demo = build_demo(model, pretrained, checkpoint, preload=True)
    demo.launch(**launch_options())


if __name__ == "__main__":
    main()
