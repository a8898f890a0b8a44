"""The explorer's text panels (HTML / Markdown, escaped): the weights banner, the legend and the
How-it-works text (read from ``tca.render``'s colour source), the probability shift, the cost,
the block info, the stream and staleness notices, follow-a-patch, the comparison and sweep
tables. Each takes a run's data and returns a string; nothing here draws or runs a model.
"""

from __future__ import annotations

import html

from tca import arithmetic, budget, charts, render
from tca.disagreement import Disagreement
from tca.flops import CONVENTION
from tca.methods import METHODS
from tca.pipeline import RunResult
from tca.request import Request
from tca.stream_demo import StreamDemo
from tca.trace import KEPT, MERGED, PRUNED, Trace
from tca.weights import WEIGHTS_HELP

from . import sweeps
from .follow import follow_patch
from .request import KEEP_RATE_RANGE
from .runs import Comparison, ExplorerRun, StreamState
from .serving import LoadedModel
from .sweeps import Sweep

SHIFT_ROWS = 10  # labels listed in the probability-shift table
CONDENSING_MARK = "\u2702"  # scissors, on condensing blocks in captions


def _escape(text) -> str:
    return html.escape(str(text), quote=False)


def _rgb(c) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in c)


# ------------------------------------------------------------------------------ colours / text


def swatch_html(code: int) -> str:
    """The legend swatch of one fate, drawn as on the map (same colours, from render.FATES)."""
    style = render.FATES[code]
    base = (
        "display:inline-block;width:16px;height:16px;border-radius:3px;"
        "vertical-align:-3px;margin:0 5px 0 10px;"
    )
    if code == MERGED:
        stops = ", ".join(
            f"{_rgb(c)} {i * 100 // 3}% {(i + 1) * 100 // 3}%"
            for i, c in enumerate(render.GROUP_COLORS[:3])
        )
        fill = f"background:linear-gradient(90deg, {stops});border:2px solid {_rgb(style.edge)}"
    elif code == PRUNED:
        fill = (
            f"background:repeating-linear-gradient(45deg, {_rgb(render.PRUNED_HATCH)} 0 2px,"
            f" {_rgb(style.swatch)} 2px 6px);border:2px solid {_rgb(style.swatch)}"
        )
    else:
        fill = f"background:{_rgb(style.swatch)};border:2px solid {_rgb(style.edge)}"
    return f'<span class="sw" data-fate="{style.name}" style="{base}{fill}"></span>'


def attention_name(trace: Trace | None) -> str:
    """What ranks the tokens: the CLS token's attention, or on a tower without one (SigLIP) the
    attention of its pool's query, which stands in for CLS."""
    return "CLS attention" if trace is None or trace.prefix else "pool-query attention"


NO_CLS = (
    "This tower has no CLS token: every token is a patch, and the query of its attention pool "
    "stands in for CLS."
)


def legend_html(method: str | None = None, trace: Trace | None = None) -> str:
    """The map legend: one swatch per fate, colours from :data:`render.FATES`; with a method,
    its own words for each fate (the registry's) and only the fates it gives."""
    fates = METHODS[method].fates if method is not None else None
    items = []
    for code, style in render.FATES.items():
        words = style.meaning
        if fates is not None:
            said = {KEPT: fates.kept, MERGED: fates.merged, PRUNED: fates.pruned}[code]
            if said is None:
                continue
            words = f"{said}; {style.meaning.split('; ', 1)[-1]}"  # its words; how it is drawn
        items.append(f"{swatch_html(code)}<b>{_escape(style.name)}</b> ({_escape(words)}) ")
    note = f"<br><small>{NO_CLS}</small>" if trace is not None and not trace.prefix else ""
    seen = "; ".join(f"<b>{w}</b>: {_escape(m)}" for w, m in render.MODEL_VIEW_LEGEND)
    model = f"<br><small>What the model sees: {seen}.</small>"
    numbers = (
        "<br><small>Numbers on the map: one per merged group (in each of its parts), so groups "
        f"that share one of the {len(render.GROUP_COLORS)} colours stay apart.</small>"
    )
    return f'<div class="tca-legend">{"".join(items)}{numbers}{model}{note}</div>'


def how_it_works_md() -> str:
    return f"""
### What you are looking at

CLIP's image encoder (a Vision Transformer, ViT) cuts the picture into square **patches**
(ViT-B/16 at 224 px: 14 x 14 = 196 patches) and adds one summary token, **CLS**. Every one of
its 12 blocks processes every token, so the cost grows with the number of tokens. **Token
condensation** removes tokens *inside* the network, at a few blocks (by default blocks 3, 6
and 9, counted from 0, marked {CONDENSING_MARK} in the strip), without any training.

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

{legend_html()}

Each merged group has its own colour (a colour-blind-safe palette; with many groups, as ToMe
makes, colours repeat but every group keeps its dark outline). A merged group can be spread
over the image: TCA groups tokens by content, not by position.

**What the model sees** paints every remaining token with the mean colour of the patches it
stands for: a kept patch stays itself, a merged group becomes one flat colour, and all pruned
patches share the colour of the one fused token.

**Follow a patch**: click a patch on the big map. At every block the table says whether it
was kept, merged (with the group's colour and size; the other patches of its group stay lit
on the map) or fused, and its rank by CLS attention at each condensing block.

The optional overlay shows the CLS attention that drove the latest condensing decision
(bright = attended = kept).

### Keep-rate sweep

Runs the method at keep rates {", ".join(f"{r:g}" for r in sweeps.SWEEP_RATES)} on the
same image in one job and plots, against the cost, the condensed top-1 probability, the
probability the condensed model gives the baseline's top-1 label, and the KL divergence of
its prediction from the baseline's: where the curves bend is where this image breaks. At
**equal GMACs** every method runs at the keep rate whose cost matches each share of the
baseline's, and the chart shows the KL divergence against the cost, with a cross where the
top-1 label changed: which method keeps the prediction best at a given cost.

### Compare methods

Every method at equal GMACs (each one's R solved for the same cost) or at the same R, and
where two of them disagree: the patches one keeps as their own token and the other merges or
prunes, after the last condensing block.

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

Costs are counted analytically from the actual token counts: {_escape(CONVENTION)}.
ViT-B/16 at 224 px is 17.56 GMACs. The saved percentage is the same in GMACs and FLOPs. On a
CPU at batch size 1 the wall-clock gain is smaller than the FLOP saving.

### Random weights

If the banner says RANDOM WEIGHTS, the model runs on random weights: the maps, token counts
and costs are exact, but the predictions mean nothing. {_escape(WEIGHTS_HELP)}
"""


def banner_html(loaded: LoadedModel | None, model: str, loading: bool = False) -> str:
    """The weights line: one short sentence for visitors; operator help behind a toggle."""
    if loaded is None:
        what = "is loading" if loading else "loads on the next Run"
        return (
            f'<div class="tca-banner tca-wait">Model <b>{_escape(model)}</b> {what}; '
            f"whether its weights are real or random shows here.</div>"
        )
    if loaded.is_random:
        why = loaded.note or "random weights were asked for (TCA_PRETRAINED=none)."
        help_ = "" if WEIGHTS_HELP in why else f" {_escape(WEIGHTS_HELP)}"
        return (
            '<div class="tca-banner tca-random" role="alert"><b>RANDOM WEIGHTS</b>: '
            "predictions are meaningless; maps, token counts and FLOPs are exact. "
            "<details><summary>For the operator: why, and how to load real weights"
            f"</summary>Model {_escape(loaded.name)}. {_escape(why)}{help_}</details></div>"
        )
    return (
        f'<div class="tca-banner tca-ok">Weights: <b>{_escape(loaded.name)}</b> / '
        f"{_escape(loaded.requested)}</div>"
    )


def _pp(d: float) -> str:
    """A probability difference in percentage points, never "-0.0"."""
    v = round(100 * d, 1)
    return "&plusmn;0.0 pp" if v == 0 else f"{v:+.1f} pp"


def shift_html(result: RunResult, limit: int = SHIFT_ROWS) -> str:
    final = result.final
    name = "corrected" if result.corrected is not None else "condensed"
    order = sorted(range(len(result.labels)), key=lambda i: -result.baseline.probs[i])[:limit]
    rows = []
    for i in order:
        d = final.probs[i] - result.baseline.probs[i]
        cls = "tca-up" if round(100 * d, 1) > 0 else "tca-down" if round(100 * d, 1) < 0 else ""
        rows.append(
            f"<tr><td class='lab'>{_escape(result.labels[i])}</td>"
            f"<td>{result.baseline.probs[i]:.1%}</td>"
            f"<td>{final.probs[i]:.1%}</td><td class='{cls}'>{_pp(d)}</td></tr>"
        )
    more = (
        f"<br><small>{len(result.labels) - limit} more labels in the JSON.</small>"
        if len(result.labels) > limit
        else ""
    )
    return (
        f"<div class='tca-shift'><b>Probability shift</b> ({name} &minus; baseline)"
        f"<div class='tca-scroll'><table class='tca-table'><tr><th>label</th><th>baseline</th><th>{name}</th>"
        f"<th>shift</th></tr>{''.join(rows)}</table></div>{more}</div>"
    )


def cost_html(result: RunResult, timed: bool = True) -> str:
    """GMACs and the wall-clock of one Run. ``timed=False``: the start-up example every visitor
    opens on (its times were measured once when the server started, not for this visitor), so
    the wall-clock cells show a dash and say so."""
    fb, fc = result.flops_baseline, result.flops_condensed
    t = result.timings_ms
    warm = " The first Runs after start-up are slower still (warm-up)."
    if timed:
        clock = f"<td>{t.get('baseline_ms', 0):.0f}</td><td>{t.get('condensed_ms', 0):.0f}</td>"
        text_ms = f" Text encoding: {t.get('text_ms', 0):.0f} ms (cached per label set)."
    else:
        clock = "<td>\u2014</td><td>\u2014</td>"
        text_ms = (
            " No times for the <b>start-up example</b>: it was computed once when the server "
            "started, for every visitor. Press <b>Run</b> to time your own."
        )
    return (
        "<div class='tca-cost'>"
        f"<div class='big'>{fb.gmacs:.2f} &rarr; {fc.gmacs:.2f} GMACs "
        f"<span class='saved'>({result.saved_percent:.1f}% saved)</span></div>"
        f"<div>{_escape(result.config.describe())}</div>"
        + (f"<div>{NO_CLS}</div>" if result.trace is not None and not result.trace.prefix else "")
        + "<div class='tca-scroll'><table class='tca-table'>"
        "<tr><th></th><th>baseline</th><th>condensed</th></tr>"
        f"<tr><td class='lab'>tokens after the last block</td><td>{result.baseline_tokens[-1]}</td>"
        f"<td>{result.tokens_per_layer[-1]}</td></tr>"
        f"<tr><td class='lab'>GMACs</td><td>{fb.gmacs:.3f}</td><td>{fc.gmacs:.3f}</td></tr>"
        f"<tr><td class='lab'>of which condensing</td><td>-</td><td>{fc.overhead / 1e9:.4f}</td></tr>"
        f"<tr><td class='lab'>wall-clock here (ms)</td>{clock}</tr></table></div>"
        f"<small>GMACs are counted from the token counts ({_escape(CONVENTION)}). Wall-clock is "
        "one measurement on a shared CPU at batch 1, where the condensed pass also records the "
        f"trace; it gains less time than FLOPs.{warm}{text_ms}</small></div>"
    )


def crop_note(run: ExplorerRun) -> str:
    """Says that the map shows the model's input: the photo resized and centre-cropped to a
    square (the parts outside the square are never seen)."""
    side = run.seen.shape[0]
    w, h = run.request.image.size
    if w == h:
        cut = "the whole photo, resized"
    else:
        cut = "its sides cut off" if w > h else "its top and bottom cut off"
        cut = f"the centre square of the {w}\u00d7{h} photo ({cut})"
    return (
        f"<div class='tca-crop'><b>The model's input:</b> {side}\u00d7{side} pixels, {cut}; "
        "the maps show exactly this square.</div>"
    )


def scale_html(lo: float, hi: float, what: str) -> str:
    """An inline colour scale of the overlay (the map's inferno colours, min-max normalised):
    its two ends in numbers."""
    stops = ", ".join(_rgb(c) for c in render._colormap_lut("inferno")[::51])
    return (
        f"<span class='tca-scale'>{_escape(what)}: {charts.significant(lo, 3)} "
        f"<span style='display:inline-block;width:90px;height:10px;vertical-align:-1px;"
        f"border:1px solid #888;background:linear-gradient(90deg, {stops})'></span> "
        f"{charts.significant(hi, 3)}</span>"
    )


def layer_info(run: ExplorerRun, layer: int, overlay: bool = False) -> str:
    trace = run.trace
    method = METHODS[run.result.config.method]
    counts = trace.fate_counts(layer)
    groups = len(trace.groups(layer))
    cond = f" {CONDENSING_MARK} (a condensing block)" if layer in trace.condensing_layers else ""
    tally = arithmetic.token_count(trace, layer)
    patches = [f"{counts['kept']} kept"]
    if counts["merged"] or method.fates.merged:
        patches.append(f"{counts['merged']} merged in {groups} group(s)")
    if counts["pruned"] or method.fates.pruned:
        gone = "dropped" if method.fates.fused_token is None else "fused"
        patches.append(f"{counts['pruned']} {gone}")
    text = (
        f"**After block {layer}{cond}: "
        f"{arithmetic.count_sentence(tally, method, trace.prefix)}.** "
        f"Patches: {', '.join(patches)}."
    )
    if overlay:
        src = render.attention_layer(trace, layer)
        title = METHODS[run.result.config.method].title
        # no block of the run recorded one: the method does not rank by CLS attention
        unused = (
            f" ({title} does not use it)"
            if render.attention_layer(trace, trace.depth - 1) is None
            else ""
        )
        span = (
            render.value_range(trace.cls_attention[src][0].numpy().reshape(trace.grid))
            if src is not None
            else None
        )
        scale = "" if span is None else " " + scale_html(*span, "dark to bright")
        text += (
            f" Overlay: {attention_name(trace)} at block {src}.{scale}"
            if src is not None
            else f" Overlay: no {attention_name(trace)} recorded at or before this block{unused}."
        )
    return text


def stream_html(
    run: ExplorerRun | None, stream: StreamState | None, enabled: bool, method: str = "tca"
) -> str:
    if not enabled:
        notice = f"{_escape(stream.notice)} " if stream is not None and stream.notice else ""
        return (
            f"{notice}Stream mode is off. Turn it on (method TCA) and run several images "
            "with the same labels: each one is filed in this session's reservoir."
        )
    if not METHODS[method].anchors:
        return (
            f"<b>Stream mode applies to TCA only</b>: this run "
            f"({METHODS[method].title}) neither used nor fed the "
            "reservoir. " + stream_html(None, stream, True)
        )
    summ = (
        run.stream
        if run is not None and run.stream is not None
        else stream.summary()
        if stream is not None
        else None
    )
    if summ is None:
        notice = f"{_escape(stream.notice)} " if stream is not None and stream.notice else ""
        return f"{notice}Stream mode is on: the next Run with TCA starts this session's reservoir."
    notice = stream.notice if stream is not None and stream.notice else ""
    need = summ["min_per_class"]
    ready = sum(len(b) >= need for b in summ["buckets"].values())
    status = (
        "<b class='tca-up'>ANCHORS ACTIVE</b>"
        if summ["active"]
        else f"<b>anchors inactive</b>: every label needs {need} images in its bucket "
        f"({ready} of {len(summ['buckets'])} ready)"
    )
    rows = []
    for label, entries in summ["buckets"].items():
        dots = "&#9679;" * len(entries) + "&#9675;" * max(0, summ["size"] - len(entries))
        ent = ", ".join(f"{e['entropy']:.2f}" for e in entries) or "-"
        rows.append(f"<tr><td>{_escape(label)}</td><td>{dots}</td><td>{ent}</td></tr>")
    effect = ""
    if run is not None and run.result.corrected is not None:
        r, corrected = run.result, run.result.corrected
        diffs = [(l, r.condensed.probs[i], corrected.probs[i]) for i, l in enumerate(r.labels)]
        diffs.sort(key=lambda x: -abs(x[2] - x[1]))
        effect = (
            "<br><b>Logits correction on this image</b><table class='tca-table'>"
            + "<tr><th>label</th><th>condensed</th><th>corrected</th></tr>"
            + "".join(
                f"<tr><td>{_escape(l)}</td><td>{a:.1%}</td><td>{b:.1%}</td></tr>"
                for l, a, b in diffs[:8]
            )
            + "</table>"
        )
        if not run.result.anchors_used:
            effect += "<small>No anchors were used for the condensation of this image yet.</small>"
    return (
        f"{_escape(notice)} {status}. Images seen: {summ['images_seen']}."
        f"<div class='tca-scroll'><table class='tca-table'><tr><th>label</th>"
        f"<th>bucket (of {summ['size']})</th><th>entropy of entries</th></tr>"
        f"{''.join(rows)}</table></div>{effect}"
    )


def stream_demo_html(demo: StreamDemo) -> str:
    """The stream demo's steps (where each image was filed, the buckets after it) and what the
    anchors changed for the probe."""
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{_escape(s.image)}</td><td>{_escape(s.filed_under)}</td>"
        f"<td>{' / '.join(str(n) for n in s.bucket_sizes)}</td>"
        f"<td>{'<b>on</b>' if s.active else 'off'}</td></tr>"
        for i, s in enumerate(demo.steps)
    )
    table = (
        "<div class='tca-scroll'><table class='tca-table'><tr><th>#</th><th>image</th>"
        "<th>filed under</th><th>bucket sizes</th><th>anchors</th></tr>"
        f"{rows}</table></div>"
    )
    if demo.with_anchors is None:
        head = (
            f"<b>The anchors did not switch on</b> after {len(demo.steps)} images: some label "
            "was never predicted twice."
        )
    else:
        w, wo = demo.with_anchors.final.top(1)[0], demo.without_anchors.final.top(1)[0]
        head = (
            f"<b>Anchors on after {len(demo.steps)} images.</b> The probe: "
            f"with anchors (and the logits correction) <b>{_escape(w[0])} {w[1]:.0%}</b>, "
            f"without <b>{_escape(wo[0])} {wo[1]:.0%}</b>. The demo uses its own reservoir, "
            "never this session's."
        )
    return f"<div class='tca-stream-demo'>{head}{table}</div>"


def stale_html(run: ExplorerRun | None, request: Request | None) -> str:
    """A notice when the results on screen were made from another request than the page's
    controls make now (None: the controls make no valid request, which is a change too)."""
    if run is None or request == run.request:
        return ""
    return (
        "<div class='tca-stale' role='status'><b>Outdated:</b> the image or a setting "
        "changed since these results were computed. Press <b>Run</b> to update them.</div>"
    )


def condensed_title(result: RunResult) -> str:
    """A short heading for the condensed prediction (it must not wrap over the answer)."""
    m = result.config.method
    if METHODS[m].step is None:
        return "Condensed: none (= baseline)"
    return f"Condensed: {METHODS[m].title}, R={result.config.keep_rate:g}"


def follow_html(run: ExplorerRun, patch: int | None, layer: int | None = None) -> str:
    if patch is None:
        return "<i>Click a patch on the map to follow it through every block.</i>"
    trace = run.trace
    r, c = divmod(patch, trace.grid[1])
    steps = follow_patch(trace, patch)
    lines = []
    for s in steps:
        cond = f" {CONDENSING_MARK}" if s.layer in trace.condensing_layers else ""
        if s.fate == "merged" and s.group_rank is not None:
            colour = render.group_palette(s.group_rank + 1)[s.group_rank]
            what = (
                f"<span class='sw' style='display:inline-block;width:12px;height:12px;"
                f"background:{_rgb(colour)};border:1px solid #222;vertical-align:-1px'></span>"
                f" merged into group {s.group_rank + 1} with {s.group_size - 1} other "
                f"patch{'es' if s.group_size != 2 else ''}"
            )
        elif s.fate == "pruned":
            what = f"fused into the pruned token ({s.group_size} patches share it)"
        else:
            what = "kept as itself"
        rank = f"{s.attention_rank} of {s.ranked_tokens}" if s.attention_rank is not None else ""
        here = " class='here'" if layer is not None and s.layer == layer else ""
        lines.append(f"<tr{here}><td>block {s.layer}{cond}</td><td>{what}</td><td>{rank}</td></tr>")
    now = steps[min(max(0, layer if layer is not None else trace.depth - 1), trace.depth - 1)]
    lit = (
        f"{now.group_size - 1} other patch{'es' if now.group_size != 2 else ''} of its token "
        "lit on the map"
        if now.group_size > 1
        else "no other patch shares its token"
    )
    return (
        f"<div class='tca-follow'><b>Following patch (row {r}, column {c})</b>, framed in "
        f"magenta; after block {now.layer}: {lit}."
        "<div class='tca-scroll'><table class='tca-table'><tr><th>after</th><th>where it is</th>"
        f"<th>{attention_name(trace).replace(' ', '-')} rank</th></tr>{''.join(lines)}</table></div></div>"
    )


def _dot(method: str) -> str:
    """A small swatch of the method's colour (the sweep's and the disagreement map's)."""
    colour = _rgb(render.METHOD_COLORS.get(method, (51, 51, 51)))
    return (
        f"<span style='display:inline-block;width:11px;height:11px;border-radius:50%;"
        f"background:{colour};border:1px solid #888;margin-right:4px;vertical-align:-1px'>"
        "</span>"
    )


def matching_text(cmp: Comparison) -> str:
    """One line on how the methods were matched."""
    if cmp.target is None:
        return f"Every method at the same keep rate R = {cmp.keep_rate:g}."
    source = (
        f"TCA's cost at R = {cmp.keep_rate:g}" if cmp.matching.by == "tca" else "the number given"
    )
    return (
        f"Equal GMACs: every method at the keep rate whose analytic GMACs (the flops command's) "
        f"are nearest {cmp.target:.3f} ({source}); R searched in steps of {budget.GRID_STEP:g} "
        f"from {KEEP_RATE_RANGE[0]:g} to 1; within {budget.TOLERANCE:.0%} of the target is "
        "equal, anything else is marked."
    )


def _cost_cell(cmp: Comparison, method: str, r: RunResult) -> str:
    planned = r.flops_condensed.gmacs
    m = cmp.matches.get(method)
    if m is not None:
        planned = m.gmacs
    cell = f"{planned:.3f}"
    if m is not None:
        cell += f" <small>({100 * m.relative_error:+.2f}%)</small>"
        if m.floor:
            why = METHODS[method].limit or "its plans remove no more"
            cell += f"<br><small><b>cannot reach the target</b>: at least {m.lowest:.3f} ({why})</small>"
        elif not m.within:
            cell += (
                f"<br><small><b>its nearest cost</b>: it moves in steps of {m.step:.3f} "
                "here</small>"
            )
    if abs(r.flops_condensed.gmacs - planned) > 1e-9:  # ATS: this image kept fewer tokens
        cell += f"<br><small>this image: {r.flops_condensed.gmacs:.3f}</small>"
    return cell


def compare_html(cmp: Comparison) -> str:
    """Per method: R, GMACs (with the error against the target), saved, final tokens, top-1
    (kept or changed from the baseline's), KL from the baseline and time; refusals listed."""
    base_top = cmp.baseline.top(1)[0][0]
    rows = []
    for method, r in cmp.results.items():
        top, p = r.condensed.top(1)[0]
        kept = "kept" if top == base_top else "<b>changed</b>"
        kl = sweeps.kl_divergence(cmp.baseline.probs, r.condensed.probs)
        rows.append(
            f"<tr data-method='{method}'><td>{_dot(method)}<b>{METHODS[method].title}</b></td>"
            f"<td>{r.config.keep_rate:g}</td><td>{_cost_cell(cmp, method, r)}</td>"
            f"<td>{r.saved_percent:.1f}%</td><td>{r.tokens_per_layer[-1]}</td>"
            f"<td class='wrap'>{_escape(top)} ({p:.1%}), {kept}</td>"
            f"<td>{charts.significant(kl, 2)}</td>"
            f"<td>{r.timings_ms['condensed_ms']:.0f}</td></tr>"
        )
    for method, why in cmp.refused.items():
        rows.append(
            f"<tr data-method='{method}'><td>{_dot(method)}<b>{METHODS[method].title}</b></td>"
            f"<td colspan='7' class='wrap'>not run: {_escape(why)}</td></tr>"
        )
    base = next(iter(cmp.results.values()))
    return (
        f"<div class='tca-scroll'><table class='tca-table'><tr><th>method</th><th>R</th>"
        f"<th>GMACs</th><th>saved</th><th>final tokens</th><th>top-1</th>"
        f"<th>KL from baseline</th><th>ms</th></tr>"
        f"<tr><td>baseline CLIP</td><td>1</td><td>{base.flops_baseline.gmacs:.3f}</td><td>-</td>"
        f"<td>{base.baseline_tokens[-1]}</td><td class='wrap'>{_escape(base_top)} "
        f"({cmp.baseline.top(1)[0][1]:.1%})</td><td>0</td>"
        f"<td>{base.timings_ms.get('baseline_ms', 0):.0f}</td></tr>{''.join(rows)}</table></div>"
        f"<small>{_escape(matching_text(cmp))} The same condensing blocks "
        f"{list(cmp.request.config.layers)} for all. KL(baseline || method) in nats. "
        f"{_escape(CONVENTION)}; ATS's GMACs are its budget's (an upper bound), "
        "with this image's own below it.</small>"
    )


def compare_stale_html(cmp: Comparison | None, request: Request | None, matching) -> str:
    """Outdated notice of the Compare tab: the Explore tab's image or settings (or Compare's own
    matching) no longer make the comparison on screen."""
    if cmp is None or cmp.same(request, matching):
        return ""
    return (
        "<div class='tca-stale' role='status'><b>Outdated:</b> the image or a setting "
        "changed since this comparison was computed. Press <b>Compare</b> to update it.</div>"
    )


def disagreement_html(d: Disagreement) -> str:
    """The counts beside the disagreement map: the four classes (with their colours) and the
    3 x 3 table of fates."""
    a, b = METHODS[d.a].title, METHODS[d.b].title
    c = d.counts()
    grey = _rgb((80, 80, 80))
    lines = [
        (_dot(d.a), f"kept by {a}, merged or pruned by {b}", c["only_a"], "only_a"),
        (_dot(d.b), f"kept by {b}, merged or pruned by {a}", c["only_b"], "only_b"),
        ("", "kept by both (drawn as the image)", c["both_kept"], "both_kept"),
        (
            f"<span style='display:inline-block;width:11px;height:11px;background:{grey};"
            "margin-right:4px'></span>",
            "merged or pruned by both (dark)",
            c["neither"],
            "neither",
        ),
    ]
    head = "".join(
        f"<tr data-count='{key}'><td>{dot}{_escape(text)}</td><td><b>{n}</b></td></tr>"
        for dot, text, n, key in lines
    )
    names = ("kept", "merged", "pruned")
    m = d.matrix()
    cells = "".join(
        f"<tr><th>{a} {fa}</th>"
        + "".join(f"<td data-pair='{fa}-{fb}'>{m[(fa, fb)]}</td>" for fb in names)
        + "</tr>"
        for fa in names
    )
    return (
        f"<div class='tca-disagree'><b>After block {d.layer}</b> (the last condensing block), "
        f"{sum(c.values())} patches:"
        f"<div class='tca-scroll'><table class='tca-table'>{head}</table></div>"
        f"<div class='tca-scroll'><table class='tca-table'><tr><th></th>"
        + "".join(f"<th>{b} {fb}</th>" for fb in names)
        + f"</tr>{cells}</table></div></div>"
    )


def sweep_html(sw: Sweep) -> str:
    """The sweep's table: per method and point, R, GMACs (against its target at equal GMACs),
    final tokens, top-1 (kept or changed), the baseline label's probability and KL."""
    by_cost = sw.by == "gmacs"
    rows = []
    for m, pts in sw.points.items():
        for p in pts:
            cost = f"{p.gmacs:.2f}"
            target = ""
            if by_cost and p.target is not None:
                off = (p.gmacs - p.target) / p.target
                flag = (
                    " <b>cannot reach</b>"
                    if p.floor
                    else ""
                    if abs(off) <= budget.TOLERANCE
                    else " <b>nearest step</b>"
                )
                target = f"<td>{p.target:.2f}</td>"
                cost += f" <small>({100 * off:+.1f}%){flag}</small>"
            kept = "kept" if p.top1_kept else "<b>changed</b>"
            rows.append(
                f"<tr data-method='{m}'><td>{_dot(m)}{METHODS[m].title}</td>{target}"
                f"<td>{p.keep_rate:g}</td><td>{cost}</td><td>{p.final_tokens}</td>"
                f"<td class='wrap'>{_escape(p.top1)} ({p.top1_prob:.1%}), {kept}</td>"
                f"<td>{p.base_label_prob:.1%}</td><td>{charts.significant(p.kl, 2)}</td></tr>"
            )
    for m, why in sw.refused.items():
        rows.append(
            f"<tr data-method='{m}'><td>{_dot(m)}{METHODS[m].title}</td>"
            f"<td colspan='{7 if by_cost else 6}' class='wrap'>not run: {_escape(why)}</td></tr>"
        )
    base = "1 baseline + " if sw.baseline_pass else "the Run's baseline + "
    how = (
        f"Every method at the keep rate whose analytic GMACs are nearest each target "
        f"({', '.join(f'{f:.0%}' for f in sweeps.SWEEP_COST_FRACTIONS)} of the baseline's); a "
        "method that cannot get that cheap runs at its cheapest (marked). "
        if by_cost
        else ""
    )
    return (
        f"<div class='tca-scroll'><table class='tca-table'><tr><th>method</th>"
        f"{'<th>target GMACs</th>' if by_cost else ''}<th>R</th>"
        f"<th>GMACs</th><th>final tokens</th><th>top-1</th>"
        f"<th>p({_escape(sw.base_label)})</th><th>KL</th></tr>{''.join(rows)}</table></div>"
        f"<small>{how}Baseline: {_escape(sw.base_label)} ({sw.baseline.top(1)[0][1]:.1%}) at "
        f"{sw.gmacs_baseline:.2f} GMACs. One job: {base}{sw.passes} condensed passes "
        f"(R = 1 is the baseline) in {sw.elapsed_ms / 1e3:.1f} s.</small>"
    )


__all__ = [
    "CONDENSING_MARK",
    "SHIFT_ROWS",
    "banner_html",
    "compare_html",
    "compare_stale_html",
    "disagreement_html",
    "matching_text",
    "condensed_title",
    "cost_html",
    "follow_html",
    "how_it_works_md",
    "layer_info",
    "NO_CLS",
    "attention_name",
    "legend_html",
    "shift_html",
    "stale_html",
    "stream_html",
    "swatch_html",
    "sweep_html",
]
